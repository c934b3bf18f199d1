"""May this credential pass this gate now? Plain rules, shared by the centre and the edge agent.

Nothing here knows about AMQP, gRPC or SQL. Times are unix seconds; schedules are read in the
site's time zone.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

ACTIVE, SUSPENDED, REVOKED, MOVED_OUT = "active", "suspended", "revoked", "moved_out"
CARD_STATUSES = (ACTIVE, REVOKED, "lost")
PERSON_STATUSES = (ACTIVE, SUSPENDED, MOVED_OUT)
PERSON_KINDS = ("resident", "staff", "contractor")
VISITOR = "visitor"
ANTI_PASSBACK_MODES = ("none", "hard", "soft", "timed")
ENTRY, EXIT = "in", "out"
HOLIDAY = 7
MINUTES_PER_DAY = 1440


@dataclass(frozen=True)
class Credential:
    """What the edge needs to know about one credential (card, PIN, person QR, visitor pass)."""

    card_number: str                 # the key: card number, "pin:...", "person:...", "visitor:..."
    person_id: str
    person_name: str
    status: str                      # active, suspended (the person), revoked (the card)
    valid_from: int = 0              # unix seconds, 0 = no start
    valid_until: int = 0             # unix seconds, 0 = no end
    gate_ids: frozenset[str] = field(default_factory=frozenset)    # direct, at any time
    group_ids: frozenset[str] = field(default_factory=frozenset)
    person_kind: str = "resident"
    max_uses: int = 0                # 0 = no limit
    uses: int = 0


@dataclass(frozen=True)
class Period:
    day: int                         # 0 = Monday ... 6 = Sunday, 7 = holiday
    start: int                       # minute of the day, inclusive
    end: int                         # minute of the day, exclusive (1440 = end of day)


@dataclass(frozen=True)
class TimeProfile:
    profile_id: str
    periods: tuple[Period, ...] = ()

    def is_open(self, local: datetime, holiday: bool) -> bool:
        day = HOLIDAY if holiday else local.weekday()
        minute = local.hour * 60 + local.minute
        return any(p.day == day and p.start <= minute < p.end for p in self.periods)


@dataclass(frozen=True)
class AccessGroup:
    group_id: str
    gate_ids: frozenset[str]
    time_profile_id: str = ""        # "" = at any time


@dataclass(frozen=True)
class Zone:
    zone_id: str
    anti_passback: str = "none"
    timed_minutes: int = 0
    reset_minute: int = 0            # local minute of the day when every state resets
    entry_gate_ids: frozenset[str] = frozenset()
    exit_gate_ids: frozenset[str] = frozenset()


@dataclass
class SitePolicy:
    """Everything but the credentials: groups, schedules, zones, holidays, the time zone."""

    timezone: str = "UTC"
    holidays: frozenset[str] = frozenset()           # "YYYY-MM-DD", local dates
    groups: dict[str, AccessGroup] = field(default_factory=dict)
    profiles: dict[str, TimeProfile] = field(default_factory=dict)
    zones: dict[str, Zone] = field(default_factory=dict)
    emergency: bool = False

    def __post_init__(self):
        self.zone_at: dict[str, tuple[Zone, str]] = {}
        for zone in self.zones.values():
            for gate in zone.entry_gate_ids:
                self.zone_at[gate] = (zone, ENTRY)
            for gate in zone.exit_gate_ids:
                self.zone_at[gate] = (zone, EXIT)
        self._tz = ZoneInfo(self.timezone)

    def local(self, now: float) -> datetime:
        return datetime.fromtimestamp(now, self._tz)

    def is_holiday(self, local: datetime) -> bool:
        return local.date().isoformat() in self.holidays


@dataclass(frozen=True)
class Passback:
    """Where a person was last seen in a zone: direction and when (unix seconds)."""

    direction: str
    at: float


@dataclass(frozen=True)
class Decision:
    granted: bool
    reason: str
    alarm: str = ""                  # set when granted with an alarm (soft anti-passback)
    zone_id: str = ""
    direction: str = ""              # the zone movement this passage makes, if any


CARD_NUMBER = re.compile(r"[0-9A-Fa-f]{4,32}")      # an IC card's number as readers send it: hex


def card_key(card_number) -> str:
    """One spelling per card: readers and files differ in the case of hex digits."""
    return str(card_number).strip().upper()


def pin_key(site_id: str, pin: str) -> str:
    """How a PIN is known at the gates: a hash of site and digits, never the digits."""
    return "pin:" + hashlib.sha256(f"{site_id}:{pin}".encode()).hexdigest()[:32]


def credential_status(card_status: str, person_status: str) -> str:
    """The status a gate sees: a revoked card stays revoked; a suspended person's cards stop."""
    if card_status != ACTIVE:
        return REVOKED
    return SUSPENDED if person_status != ACTIVE else ACTIVE


def last_reset(policy: SitePolicy, zone: Zone, now: float) -> float:
    """The most recent daily reset of a zone at or before `now` (unix seconds)."""
    local = policy.local(now)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    reset = midnight + timedelta(minutes=zone.reset_minute)
    if reset > local:
        reset -= timedelta(days=1)
    return reset.timestamp()


def _gate_allowed(credential: Credential, gate_id: str, policy: SitePolicy, now: float,
                  clock_trusted: bool) -> str:
    """"" when the credential opens the gate now, else the reason it does not."""
    if gate_id in credential.gate_ids:
        return ""
    groups = [policy.groups[g] for g in credential.group_ids if g in policy.groups]
    at_gate = [g for g in groups if gate_id in g.gate_ids]
    if not at_gate:
        return "no_access_to_gate"
    if any(not g.time_profile_id for g in at_gate):
        return ""
    if not clock_trusted:
        return "clock_untrusted"   # a box whose clock jumped must not open a closed schedule
    local = policy.local(now)
    holiday = policy.is_holiday(local)
    for group in at_gate:
        profile = policy.profiles.get(group.time_profile_id)
        if profile is not None and profile.is_open(local, holiday):
            return ""
    return "outside_schedule"


def _passback(credential: Credential, gate_id: str, policy: SitePolicy, now: float,
              state: Passback | None) -> Decision:
    zone, direction = policy.zone_at.get(gate_id, (None, ""))
    if zone is None:
        return Decision(True, "granted")
    granted = Decision(True, "granted", zone_id=zone.zone_id, direction=direction)
    if zone.anti_passback == "none" or state is None or state.at < last_reset(policy, zone, now):
        return granted
    if state.direction != direction:
        return granted
    if zone.anti_passback == "soft":
        return Decision(True, "granted", alarm="antipassback_violation", zone_id=zone.zone_id, direction=direction)
    if zone.anti_passback == "timed" and now - state.at >= zone.timed_minutes * 60:
        return granted
    return Decision(False, "antipassback", zone_id=zone.zone_id, direction=direction)


def decide(credential: Credential | None, gate_id: str, now: float, policy: SitePolicy | None = None,
           passback: Passback | None = None, local_uses: int = 0, clock_trusted: bool = True) -> Decision:
    """The decision for one credential at one gate at `now` (unix seconds, trusted time).

    `passback` is the person's last movement in the gate's zone; `local_uses` the passages this
    agent has counted for a limited pass (the centre's count comes with the credential).
    """
    policy = policy or SitePolicy()
    if credential is None:
        return Decision(False, "unknown_card")
    if credential.status != ACTIVE:
        return Decision(False, f"card_{credential.status}")
    if credential.valid_from and now < credential.valid_from:
        return Decision(False, "not_yet_valid")
    if credential.valid_until and now >= credential.valid_until:
        return Decision(False, "expired")
    refusal = _gate_allowed(credential, gate_id, policy, now, clock_trusted)
    if refusal:
        return Decision(False, refusal)
    if credential.max_uses and max(credential.uses, local_uses) >= credential.max_uses:
        return Decision(False, "used_up")
    return _passback(credential, gate_id, policy, now, passback)


def parse_periods(raw) -> tuple[Period, ...]:
    """Periods from [{"day": 0..7, "start": "HH:MM", "end": "HH:MM"}, ...]; ValueError says which."""
    if not isinstance(raw, list):
        raise ValueError("periods must be a list of {day, start, end}")
    days = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6, "holiday": HOLIDAY}
    periods = []
    for i, p in enumerate(raw):
        if not isinstance(p, dict):
            raise ValueError(f"periods[{i}] must be an object with day, start and end")
        day = p.get("day")
        if isinstance(day, str):
            key = day.strip().lower()
            day = days.get(key if key == "holiday" else key[:3])
        if not isinstance(day, int) or not 0 <= day <= HOLIDAY:
            raise ValueError(f"periods[{i}].day must be mon..sun, holiday or 0..7")
        start, end = _minute(p.get("start"), f"periods[{i}].start"), _minute(p.get("end"), f"periods[{i}].end")
        if end <= start:
            raise ValueError(f"periods[{i}]: end must be after start (split a period that crosses midnight)")
        periods.append(Period(day, start, end))
    return tuple(periods)


def _minute(value, what: str) -> int:
    try:
        hours, minutes = str(value).split(":")
        minute = int(hours) * 60 + int(minutes)
    except ValueError:
        raise ValueError(f"{what} must be HH:MM, got {value!r}") from None
    if not 0 <= minute <= MINUTES_PER_DAY or not 0 <= int(minutes) < 60:
        raise ValueError(f"{what} must be between 00:00 and 24:00, got {value!r}")
    return minute


def format_periods(periods) -> list[dict]:
    names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun", "holiday"]
    return [{"day": names[p.day], "start": f"{p.start // 60:02d}:{p.start % 60:02d}",
             "end": f"{p.end // 60:02d}:{p.end % 60:02d}"} for p in periods]


def parse_holiday(value) -> str:
    try:
        return date.fromisoformat(str(value)).isoformat()
    except ValueError:
        raise ValueError(f"holiday must be a date YYYY-MM-DD, got {value!r}") from None
