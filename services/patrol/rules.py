"""Patrol rules: plain Python, no SQL, gRPC or AMQP. Times are timezone-aware datetimes.

- when a schedule's rounds start (every N minutes within a shift window, at fixed times, or at
  random times that are the same however often they are computed), and how an area's risk
  level raises the frequency;
- what a scan's time says (on time, late within the grace, after it; in the future or too old
  to trust), and the anomalies that put a scan up for review: faster than walking allows,
  the same tag again within minutes, outside the checkpoint's radius;
- what a round's scans add up to (visited, missing, skipped, out of order, on time) and the
  round's states: pending -> in_progress -> complete | incomplete | missed | expired;
- a hazard's steps: open -> assigned -> fixed -> verified, with who and when.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

# -- limits a supervisor can rely on ----------------------------------------------------------------

MAX_WALK_SPEED_M_S = 2.5          # faster between two checkpoints than a brisk run: flagged
REPEAT_WINDOW_S = 600             # the same tag again within 10 minutes: flagged
FUTURE_TOLERANCE_S = 300          # a device time more than 5 minutes ahead of the centre: not trusted
ANCIENT_AFTER = timedelta(days=7) # a device time older than this at upload: not trusted
EARLY_ALLOWANCE = timedelta(minutes=15)   # a round may be started this much before its planned start
MAX_PHOTO_BYTES = 2 << 20
RISK_FACTORS = {"low": 1, "normal": 1, "high": 2, "critical": 3}
SCHEDULE_KINDS = ("interval", "fixed", "random")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
METHODS = ("nfc", "qr")

# -- geometry ---------------------------------------------------------------------------------------

EARTH_RADIUS_M = 6_371_008.8


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def check_position(latitude: float, longitude: float) -> None:
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180) or math.isnan(latitude) or math.isnan(longitude):
        raise ValueError(f"not a position on Earth: {latitude}, {longitude}")


def outside_radius(cp_lat: float, cp_lon: float, radius_m: float, lat: float, lon: float, accuracy_m: float) -> bool:
    """True when even the nearest point of the GPS fix's accuracy circle is beyond the radius."""
    return haversine_m(cp_lat, cp_lon, lat, lon) - max(0.0, accuracy_m) > radius_m


def too_fast(distance_m: float, seconds: float, max_speed: float = MAX_WALK_SPEED_M_S) -> bool:
    """True when `distance_m` cannot be walked in `seconds` (0 or negative seconds: any distance
    over a couple of metres is too fast)."""
    if distance_m <= 2.0:
        return False
    return distance_m > max_speed * max(0.0, seconds)


def normalize_nfc_uid(text: str) -> str:
    """An NFC UID as upper-case hex without separators: 4, 7 or 10 bytes (ISO 14443)."""
    if not isinstance(text, str):
        raise ValueError("an NFC UID is text")
    uid = re.sub(r"[\s:\-]", "", text).upper()
    if not re.fullmatch(r"[0-9A-F]+", uid) or len(uid) not in (8, 14, 20):
        raise ValueError(f"not an NFC UID (4, 7 or 10 bytes of hex): {text!r}")
    return uid


def photo_kind(data: bytes) -> str:
    """'jpeg' or 'png' from the file's magic bytes; ValueError for anything else or too large."""
    if len(data) > MAX_PHOTO_BYTES:
        raise ValueError(f"photo is {len(data)} bytes, at most {MAX_PHOTO_BYTES}")
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    raise ValueError("photo must be a JPEG or PNG image")


# -- time ---------------------------------------------------------------------------------------------

def time_flags(device_time: datetime, received_at: datetime, round_created_at: datetime | None = None) -> list[str]:
    """Why a scan's device time cannot be trusted (empty: it can)."""
    flags = []
    if device_time > received_at + timedelta(seconds=FUTURE_TOLERANCE_S):
        flags.append("future_time")
    if device_time < received_at - ANCIENT_AFTER:
        flags.append("ancient_time")
    elif round_created_at is not None and device_time < round_created_at - EARLY_ALLOWANCE:
        flags.append("before_round")
    return flags


def timing(t: datetime, planned_start: datetime, due_by: datetime, grace_until: datetime) -> str:
    """'early', 'on_time', 'late' (accepted, flagged for review) or 'after_grace'."""
    if t < planned_start - EARLY_ALLOWANCE:
        return "early"
    if t <= due_by:
        return "on_time"
    if t <= grace_until:
        return "late"
    return "after_grace"


def clock_skew_s(device_sent_at: datetime | None, received_at: datetime) -> float | None:
    """The handheld's clock minus the centre's at upload (positive: the handheld runs fast)."""
    if device_sent_at is None:
        return None
    return round((device_sent_at - received_at).total_seconds(), 3)


# -- rounds -------------------------------------------------------------------------------------------

ROUND_STATUSES = ("pending", "in_progress", "complete", "incomplete", "missed", "expired")
OPEN_STATUSES = ("pending", "in_progress")
MISSED_STATUSES = ("missed", "incomplete")
_ROUND_MOVES = {
    ("pending", "scan"): "in_progress",
    ("in_progress", "scan"): "in_progress",
    ("pending", "all_visited"): "complete",
    ("in_progress", "all_visited"): "complete",
    ("pending", "grace_over"): "missed",
    ("in_progress", "grace_over"): "incomplete",
    ("pending", "withdraw"): "expired",
    # scans made in time that reached the centre only after the round was closed (offline handheld)
    ("missed", "synced_all"): "complete",
    ("incomplete", "synced_all"): "complete",
    ("missed", "synced_some"): "incomplete",
    ("incomplete", "synced_some"): "incomplete",
    # a supervisor rejected a scan of a complete round: walking goes on, or it is incomplete
    ("complete", "rejected_in_grace"): "in_progress",
    ("complete", "rejected_after_grace"): "incomplete",
}


def round_next(status: str, event: str) -> str:
    """The round's status after `event` (scan, all_visited, grace_over, withdraw, synced_all,
    synced_some, rejected_in_grace, rejected_after_grace); ValueError if the round cannot take it. A closed round never reopens for walking;
    one closed as missed or incomplete is corrected when scans made in time arrive late."""
    try:
        return _ROUND_MOVES[(status, event)]
    except KeyError:
        raise ValueError(f"a {status} round cannot take {event}") from None


@dataclass(frozen=True)
class Visit:
    checkpoint_id: str
    at: datetime
    on_time: bool       # within the round's time and trusted


@dataclass(frozen=True)
class RoundResult:
    visited: list[str]
    missing: list[str]
    skipped: list[str]        # ordered route: missing, yet a later checkpoint was scanned
    out_of_order: list[str]   # ordered route: scanned after a later checkpoint
    all_visited: bool
    on_time: bool             # every checkpoint visited, and every first visit on time


def evaluate_round(checkpoints: list[tuple[str, int]], ordered: bool, visits: list[Visit]) -> RoundResult:
    """What a round's counted scans add up to. `checkpoints` are (id, seq) of the route."""
    seq = dict(checkpoints)
    first: dict[str, Visit] = {}
    out_of_order: list[str] = []
    highest = 0
    for visit in sorted(visits, key=lambda v: v.at):
        if visit.checkpoint_id not in seq or visit.checkpoint_id in first:
            continue
        first[visit.checkpoint_id] = visit
        s = seq[visit.checkpoint_id]
        if ordered and s < highest:
            out_of_order.append(visit.checkpoint_id)
        highest = max(highest, s)
    in_order = [c for c, _ in sorted(checkpoints, key=lambda c: c[1])]
    visited = [c for c in in_order if c in first]
    missing = [c for c in in_order if c not in first]
    skipped = [c for c in missing if seq[c] < highest] if ordered else []
    all_visited = not missing
    return RoundResult(visited, missing, skipped, out_of_order, all_visited,
                       all_visited and all(first[c].on_time for c in visited))


# -- schedules ----------------------------------------------------------------------------------------

def _hhmm(text: str, what: str) -> time:
    if not isinstance(text, str) or not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", text):
        raise ValueError(f"{what} must be HH:MM (00:00-23:59), got {text!r}")
    return time(int(text[:2]), int(text[3:]))


@dataclass(frozen=True)
class Schedule:
    """When a route's rounds start. Times are the site's local time.

    interval: every `every_minutes` from window_start until window_end (a shift window; an end at
    or before the start runs past midnight); fixed: at each of `times` every day; random:
    `rounds_per_window` starts drawn within the window, the same for the same `salt` and day.
    `days` limits the days (of the window's start) it runs."""

    kind: str
    expected_minutes: int
    grace_minutes: int
    every_minutes: int = 0
    times: tuple[str, ...] = ()
    rounds_per_window: int = 0
    window_start: str = "00:00"
    window_end: str = "00:00"
    days: tuple[str, ...] = DAYS
    salt: str = ""

    def __post_init__(self):
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(SCHEDULE_KINDS)}")
        for name, value, low, high in (("expected_minutes", self.expected_minutes, 1, 24 * 60),
                                       ("grace_minutes", self.grace_minutes, 0, 12 * 60)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be a whole number from {low} to {high}")
        _hhmm(self.window_start, "window_start")
        _hhmm(self.window_end, "window_end")
        if not self.days or any(d not in DAYS for d in self.days):
            raise ValueError(f"days must be some of {', '.join(DAYS)}")
        if self.kind == "interval":
            if isinstance(self.every_minutes, bool) or not isinstance(self.every_minutes, int) \
                    or not 10 <= self.every_minutes <= 7 * 24 * 60:
                raise ValueError("every_minutes must be a whole number from 10 to 10080")
        elif self.kind == "fixed":
            if not self.times:
                raise ValueError("a fixed schedule needs times (HH:MM)")
            for t in self.times:
                _hhmm(t, "times")
        elif isinstance(self.rounds_per_window, bool) or not isinstance(self.rounds_per_window, int) \
                or not 1 <= self.rounds_per_window <= 48:
            raise ValueError("rounds_per_window must be a whole number from 1 to 48")

    def window_minutes(self) -> int:
        start, end = _hhmm(self.window_start, ""), _hhmm(self.window_end, "")
        minutes = (end.hour * 60 + end.minute) - (start.hour * 60 + start.minute)
        return minutes if minutes > 0 else minutes + 24 * 60


def effective_every(every_minutes: int, risk_level: str) -> int:
    """The interval an area's risk level makes of a schedule's: high halves it, critical thirds it."""
    if risk_level not in RISK_FACTORS:
        raise ValueError(f"risk_level must be one of {', '.join(RISK_FACTORS)}")
    return max(10, every_minutes // RISK_FACTORS[risk_level])


def _starts_on(schedule: Schedule, day: date, risk_level: str, zone: ZoneInfo) -> list[datetime]:
    if DAYS[day.weekday()] not in schedule.days:
        return []
    if schedule.kind == "fixed":
        return [datetime.combine(day, _hhmm(t, "times"), zone) for t in sorted(set(schedule.times))]
    window_start = datetime.combine(day, _hhmm(schedule.window_start, ""), zone)
    span = schedule.window_minutes()
    if schedule.kind == "interval":
        every = effective_every(schedule.every_minutes, risk_level)
        return [window_start + timedelta(minutes=m) for m in range(0, span, every)]
    # random: the same draws for the same salt and day, so generating again adds nothing
    count = schedule.rounds_per_window * RISK_FACTORS.get(risk_level, 1)
    latest = max(1, span - schedule.expected_minutes)          # leave room to finish inside the window
    rng = random.Random(f"{schedule.salt}:{day.isoformat()}")
    minutes = sorted(rng.sample(range(latest), min(count, latest)))
    return [window_start + timedelta(minutes=m) for m in minutes]


def planned_starts(schedule: Schedule, risk_level: str, timezone: str, start: datetime, end: datetime
                   ) -> list[datetime]:
    """Every planned start in [start, end), as UTC-comparable aware datetimes, oldest first."""
    zone = ZoneInfo(timezone)
    day = start.astimezone(zone).date() - timedelta(days=1)   # a window from yesterday may run into today
    last = end.astimezone(zone).date()
    out: list[datetime] = []
    while day <= last:
        for t in _starts_on(schedule, day, risk_level, zone):
            # a local time that does not exist or repeats (DST) is normalised through UTC
            if start <= t < end:
                out.append(t)
        day += timedelta(days=1)
    return sorted(set(out))


# -- hazards (隐患整改) ----------------------------------------------------------------------------------

HAZARD_STATUSES = ("open", "assigned", "fixed", "verified")
SEVERITIES = ("low", "medium", "high", "critical")
INCIDENT_TYPES = ("fire_hazard", "water_leak", "electrical", "broken_light", "blocked_exit", "damage",
                  "intruder", "suspicious", "cleanliness", "other")
_HAZARD_MOVES = {("open", "assign"): "assigned", ("assigned", "assign"): "assigned",
                 ("assigned", "fix"): "fixed", ("fixed", "verify"): "verified", ("fixed", "reject"): "assigned"}


def hazard_next(status: str, action: str, actor: str, fixed_by: str | None = None) -> str:
    """The hazard's status after `action` (assign, fix, verify, reject: the fix was not good
    enough and goes back to whoever it was assigned to). The one who fixed it may not verify it."""
    if not actor:
        raise ValueError("who is doing this is required")
    if action in ("verify", "reject") and fixed_by and actor == fixed_by:
        raise ValueError(f"{actor} fixed this hazard and may not verify it; someone else must")
    try:
        return _HAZARD_MOVES[(status, action)]
    except KeyError:
        raise ValueError(f"a hazard that is {status} cannot take {action!r}") from None


# -- reports -----------------------------------------------------------------------------------------

@dataclass
class Tally:
    rounds: int = 0
    complete: int = 0
    on_time: int = 0
    incomplete: int = 0
    missed: int = 0
    checkpoints_due: int = 0
    checkpoints_missed: int = 0
    missed_checkpoint_ids: list[str] = field(default_factory=list)

    def add(self, status: str, on_time: bool, total: int, missing: list[str]) -> None:
        """One closed round (expired rounds are not counted: nobody was asked to walk them)."""
        if status not in ("complete", "incomplete", "missed"):
            return
        self.rounds += 1
        self.complete += status == "complete"
        self.on_time += bool(on_time) and status == "complete"
        self.incomplete += status == "incomplete"
        self.missed += status == "missed"
        self.checkpoints_due += total
        self.checkpoints_missed += len(missing)
        self.missed_checkpoint_ids.extend(missing)

    def figures(self) -> dict:
        def rate(n):
            return (round(n / self.rounds, 4) if self.rounds else None)
        return {"rounds": self.rounds, "complete": self.complete, "on_time": self.on_time,
                "incomplete": self.incomplete, "missed": self.missed,
                "completion_rate": rate(self.complete), "on_time_rate": rate(self.on_time),
                "checkpoints_due": self.checkpoints_due, "checkpoints_missed": self.checkpoints_missed,
                "missed_checkpoints": sorted(set(self.missed_checkpoint_ids))}
