"""Which car may enter a lot, what its stay costs and whether the exit barrier opens. Plain rules, shared
by the centre and the edge agent.

Nothing here knows about AMQP, gRPC or SQL. Money is integer fen (never floats), with the currency beside
it. Instants are timezone-aware datetimes; calendar days, the night rate and pass validity are read in the
site's IANA time zone. Plates are Chinese licence plates, normalized by `normalize_plate`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# -- plates ---------------------------------------------------------------------------------------------

# the one-character abbreviations of the 31 provinces, regions and municipalities on mainland plates
PROVINCES = frozenset("京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼")
EMBASSY = "使"                             # embassy plates start with 使 instead of a province
# a last character that marks a special plate: driving school, police, trailer, Hong Kong / Macau
# cross-border, consulate, test, over-size (粤Z1234港, 京A1234警, 沪A1234学)
SUFFIXES = frozenset("学警挂港澳领试超")
_DROPPED = frozenset(" \t\r\n\u3000·•・･‧∙-‐‑–—.。")   # spaces, middle dots, dashes, full stops
_ALNUM = re.compile(r"[A-Z0-9]+")
KINDS = ("resident", "monthly", "visitor", "staff", "blacklist")


def _half_width(ch: str) -> str:
    code = ord(ch)
    return chr(code - 0xFEE0) if 0xFF01 <= code <= 0xFF5E else ch     # ＡＢ１２ -> AB12, －．-> -.


def normalize_plate(text: str) -> str:
    """One spelling per plate: half-width, upper case, no separators ('皖a·12345' -> '皖A12345').

    ValueError unless the result is a plausible plate: 2 to 10 characters, letters and digits, with an
    optional province character (or 使) first and an optional special suffix (学, 警, 港, ...) last.
    """
    if not isinstance(text, str):
        raise ValueError(f"a plate must be text, got {type(text).__name__}")
    plate = "".join(c for c in (_half_width(c) for c in text) if c not in _DROPPED).upper()
    if not 2 <= len(plate) <= 10:
        raise ValueError(f"a plate has 2 to 10 characters, got {plate!r} from {text!r}")
    body = plate
    if body[0] in PROVINCES or body[0] == EMBASSY:
        body = body[1:]
    if len(plate) >= 3 and body and body[-1] in SUFFIXES:
        body = body[:-1]
    if not body or not _ALNUM.fullmatch(body):
        raise ValueError(f"not a plausible plate: {text!r} (a province first, then letters and digits)")
    return plate


def plate_kind(plate: str) -> str:
    """"standard" (皖A12345), "new_energy" (皖AD12345 small, 皖A12345D large) or "other" (any other valid
    plate: special suffixes, embassy, military, plain alphanumeric)."""
    plate = normalize_plate(plate)
    if plate[0] not in PROVINCES or not ("A" <= plate[1] <= "Z") or not _ALNUM.fullmatch(plate[2:]):
        return "other"
    tail = plate[2:]
    if len(tail) == 5:
        return "standard"
    if len(tail) == 6:
        # loosely: small cars carry D/F (since 2022 also other letters) first and four digits last,
        # large vehicles five digits and D/F last
        if (tail[0].isalpha() and tail[-4:].isdigit()) or (tail[:5].isdigit() and tail[5] in "DF"):
            return "new_energy"
    return "other"


def _normal_or_none(text: str) -> str | None:
    try:
        return normalize_plate(text)
    except ValueError:
        return None


def plates_match(read: str, known: str, tolerate_province: bool) -> bool:
    """The same plate; with `tolerate_province`, also when only the province characters differ (cameras
    misread them most: 皖A12345 read as 晥... or 苏A12345). Unreadable plates match nothing."""
    read, known = _normal_or_none(read), _normal_or_none(known)
    if read is None or known is None:
        return False
    if read == known:
        return True
    return (tolerate_province and len(read) == len(known) and read[1:] == known[1:]
            and read[0] in PROVINCES and known[0] in PROVINCES)


@dataclass(frozen=True)
class VehicleRight:
    """What a plate may do at a lot. Validity days are site-local dates, both inclusive."""

    plate: str                        # normalized
    kind: str                         # resident, monthly, visitor, staff, blacklist
    valid_from: date | None = None    # first day, inclusive; None = no start
    valid_until: date | None = None   # last day, inclusive; None = no end
    grace_days: int = 0               # the right keeps working this many days after valid_until
    free_minutes: int = 0             # a host's visitor: free parking time on top of the tariff's
    fixed_space: bool = False         # has its own space: does not take a shared one
    holder: str = ""                  # person / unit / host id, for the record

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.grace_days < 0 or self.free_minutes < 0:
            raise ValueError("grace_days and free_minutes must not be negative")


def find_right(read_plate: str, rights: Mapping[str, VehicleRight],
               tolerate_province: bool) -> tuple[VehicleRight | None, bool]:
    """(right, fuzzy) for a read plate; `rights` is keyed by normalized plate.

    An exact match wins. Otherwise, with `tolerate_province`, a plate equal but for the province
    character, only when exactly one such plate is known: two candidates are ambiguous -> (None, False).
    ValueError for an unreadable plate.
    """
    plate = normalize_plate(read_plate)
    right = rights.get(plate)
    if right is not None:
        return right, False
    if not tolerate_province or plate[0] not in PROVINCES:
        return None, False
    rest = plate[1:]
    candidates = [rights[p + rest] for p in PROVINCES if p != plate[0] and p + rest in rights]
    return (candidates[0], True) if len(candidates) == 1 else (None, False)


def right_status(right: VehicleRight, today: date) -> str:
    """"valid", "grace" (after valid_until, within grace_days), "expired" or "not_yet_valid" on `today`."""
    if right.valid_from is not None and today < right.valid_from:
        return "not_yet_valid"
    if right.valid_until is None or today <= right.valid_until:
        return "valid"
    if today <= right.valid_until + timedelta(days=right.grace_days):
        return "grace"
    return "expired"


# -- lanes and entry ------------------------------------------------------------------------------------

OFFLINE_VISITORS = ("enter", "refuse", "confirm")
OFFLINE_UNPAID_EXIT = ("wait", "open")
NO_ENTRY_RECORD_EXIT = ("charge_flat", "free", "confirm")


@dataclass(frozen=True)
class LanePolicy:
    """How one lane decides, online and offline; explicit, so the edge decides like the centre."""

    offline_visitors: str = "enter"          # enter (priced at exit) | refuse | confirm (the guard decides)
    offline_unpaid_exit: str = "wait"        # wait for the cashier | open (and record the debt)
    no_entry_record_exit: str = "charge_flat"   # charge_flat | free | confirm
    no_entry_record_fee_fen: int = 2000
    low_confidence: float = 0.80             # reads below this go to the operator queue
    visitors_allowed: bool = True

    def __post_init__(self):
        for name, allowed in (("offline_visitors", OFFLINE_VISITORS), ("offline_unpaid_exit", OFFLINE_UNPAID_EXIT),
                              ("no_entry_record_exit", NO_ENTRY_RECORD_EXIT)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not _whole(self.no_entry_record_fee_fen) or self.no_entry_record_fee_fen < 0:
            raise ValueError("no_entry_record_fee_fen must be a whole number of fen, 0 or more")
        if not 0 <= self.low_confidence <= 1:
            raise ValueError("low_confidence must be between 0 and 1")


@dataclass(frozen=True)
class EntryDecision:
    open: bool
    reason: str          # resident, monthly_pass, pass_in_grace, visitor, staff, blacklisted, lot_full,
                         # pass_expired, not_yet_valid, low_confidence, offline_visitor, visitors_not_allowed,
                         # already_inside
    kind: str            # the right's kind, or "visitor" for an unknown plate
    takes_space: bool    # counts against the shared capacity
    message: str         # display: welcome, lot_full, not_allowed, confirm_with_guard


def entry_decision(read_plate: str, confidence: float, rights: Mapping[str, VehicleRight], today: date,
                   shared_occupied: int, shared_capacity: int, online: bool, policy: LanePolicy,
                   inside: bool = False, tolerate_province: bool = True) -> EntryDecision:
    """Does the entry barrier open for this read? `today` is the site-local date.

    In order:
    - a blacklisted plate never opens (a fuzzy match to one asks the guard instead of accusing);
    - a read below the lane's confidence, or one that is no plausible plate, waits for a person;
    - a car that already has an open session opens again as "already_inside"; the caller makes no
      second session;
    - residents, staff and valid monthly passes (also in their grace days) always open, even when the
      shared spaces are full: they are the estate's own cars, capacity protects visitors' admission.
      They take a shared space unless they have a fixed one;
    - everyone else is priced as a visitor: host-registered visitors ("visitor"), unknown plates
      ("visitor"), rights outside their dates ("pass_expired", "not_yet_valid"). They are refused on a
      lane without visitors, and when shared_occupied >= shared_capacity ("lot_full"). Offline, a car
      without a valid right (unknown or lapsed) follows policy.offline_visitors ("offline_visitor"); a
      registered visitor is known from the local copy of the rights and enters as online.
    """
    plate = _normal_or_none(read_plate)
    if plate is None:
        return EntryDecision(False, "low_confidence", "visitor", False, "confirm_with_guard")
    right, fuzzy = find_right(plate, rights, tolerate_province)
    kind = right.kind if right else "visitor"
    if kind == "blacklist":
        return EntryDecision(False, "blacklisted", kind, False, "confirm_with_guard" if fuzzy else "not_allowed")
    if confidence < policy.low_confidence:
        return EntryDecision(False, "low_confidence", kind, False, "confirm_with_guard")
    if inside:
        return EntryDecision(True, "already_inside", kind, False, "welcome")
    status = right_status(right, today) if right else "valid"
    takes_space = not (right and right.fixed_space)
    if right and status in ("valid", "grace") and kind != "visitor":
        reason = {"resident": "resident", "staff": "staff"}.get(kind) or (
            "monthly_pass" if status == "valid" else "pass_in_grace")
        return EntryDecision(True, reason, kind, takes_space, "welcome")
    # priced as a visitor from here on
    reason = "visitor" if status in ("valid", "grace") else ("pass_expired" if status == "expired" else status)
    if not policy.visitors_allowed:
        return EntryDecision(False, "visitors_not_allowed", kind, False, "not_allowed")
    if shared_occupied >= shared_capacity:
        return EntryDecision(False, "lot_full", kind, False, "lot_full")
    registered = right is not None and reason == "visitor"      # a host's visitor, known from the rights
    if not online and not registered:
        if policy.offline_visitors == "enter":
            return EntryDecision(True, "offline_visitor", kind, True, "welcome")
        message = "not_allowed" if policy.offline_visitors == "refuse" else "confirm_with_guard"
        return EntryDecision(False, "offline_visitor", kind, False, message)
    return EntryDecision(True, reason, kind, True, "welcome")


# -- tariffs --------------------------------------------------------------------------------------------

MINUTE_US = 60_000_000
DAY_MINUTES = 1440
_US = timedelta(microseconds=1)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _wall_minute(value: str, what: str) -> int:
    match = re.fullmatch(r"(\d{1,2}):(\d{2})", value) if isinstance(value, str) else None
    if not match or int(match[2]) > 59 or int(match[1]) * 60 + int(match[2]) > DAY_MINUTES:
        raise ValueError(f"{what} must be HH:MM between 00:00 and 24:00, got {value!r}")
    return (int(match[1]) * 60 + int(match[2])) % DAY_MINUTES


@dataclass(frozen=True)
class Tariff:
    """A lot's prices; checks itself when built (ValueError names the bad setting)."""

    free_minutes: int = 15
    first_period_minutes: int = 60
    first_period_fen: int = 500
    increment_minutes: int = 30
    increment_fen: int = 200
    night_start: str = "22:00"                # site-local, HH:MM; "" = no night rate
    night_end: str = "07:00"                  # exclusive; the night may span midnight
    night_increment_fen: int | None = None    # an increment that starts at night; None = the day price
    daily_cap_fen: int = 0                    # at most this per local calendar day; 0 = no cap
    cap_24h_fen: int = 0                      # at most this per started 24 h from entry; 0 = no cap
    currency: str = "CNY"

    def __post_init__(self):
        for name in ("free_minutes", "first_period_minutes", "first_period_fen", "increment_minutes",
                     "increment_fen", "daily_cap_fen", "cap_24h_fen"):
            value = getattr(self, name)
            if not _whole(value) or value < 0:
                raise ValueError(f"{name} must be a whole number, 0 or more, got {value!r}")
        if self.increment_minutes == 0:
            raise ValueError("increment_minutes must be at least 1")
        night = self.night_increment_fen
        if night is not None and (not _whole(night) or night < 0):
            raise ValueError(f"night_increment_fen must be a whole number of fen, 0 or more, or None, got {night!r}")
        if self.night_start and _wall_minute(self.night_start, "night_start") == _wall_minute(
                self.night_end, "night_end"):          # night_start "" turns the night rate off, whatever night_end
            raise ValueError("night_start and night_end must differ")
        if not isinstance(self.currency, str) or not re.fullmatch(r"[A-Z]{3}", self.currency):
            raise ValueError(f"currency must be an ISO 4217 code such as CNY, got {self.currency!r}")

    def night(self) -> tuple[int, int] | None:
        """(start, end) minute of the local day of the night rate, or None when there is none."""
        if not self.night_start or self.night_increment_fen is None:
            return None
        return _wall_minute(self.night_start, "night_start"), _wall_minute(self.night_end, "night_end")


@dataclass(frozen=True)
class Price:
    fen: int
    currency: str
    minutes: int                  # the stay, rounded up to whole minutes
    free: bool                    # within the free minutes (and a host visitor's free time)
    capped: bool                  # a daily or 24 h cap lowered the price
    lines: tuple[str, ...]        # human-readable breakdown


def money(fen: int, currency: str = "CNY") -> str:
    """'12.50 CNY' from 1250 fen, by integer arithmetic."""
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d} {currency}"


def zone(tz: str) -> ZoneInfo:
    """The site's time zone; ValueError for a name that is not one."""
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown time zone {tz!r}") from None


def _utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _is_night(minute: int, night: tuple[int, int]) -> bool:
    start, end = night
    return start <= minute < end if start < end else (minute >= start or minute < end)


def _local_cuts(start: datetime, end: datetime, tz: ZoneInfo, walls: tuple[int, ...]) -> set[datetime]:
    """UTC instants in [start, end] where the local clock may cross midnight or one of `walls` (minutes of
    the day), or change its UTC offset. O(days); extra instants are harmless, they only split a stretch."""
    first = start.astimezone(tz).date() - timedelta(days=1)
    last = end.astimezone(tz).date() + timedelta(days=1)
    cuts = set()
    midnights = []
    day = first
    while day <= last:
        for wall in walls:
            for fold in (0, 1):       # a wall time twice in an autumn night: both; none in a spring gap
                local = datetime.combine(day, time(wall // 60, wall % 60, fold=fold), tzinfo=tz)
                cuts.add(local.astimezone(UTC))
        midnights.append(datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC))
        day += timedelta(days=1)
    for a, b in zip(midnights, midnights[1:], strict=False):
        if a.astimezone(tz).utcoffset() != b.astimezone(tz).utcoffset():
            lo, hi = int(a.timestamp()), int(b.timestamp())      # the offset change: bisect to the second
            before = a.astimezone(tz).utcoffset()
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if datetime.fromtimestamp(mid, tz).utcoffset() == before:
                    lo = mid
                else:
                    hi = mid
            cuts.add(datetime.fromtimestamp(hi, UTC))
    return {c for c in cuts if start <= c <= end}


def price(tariff: Tariff, entered_at: datetime, left_at: datetime, tz: str, free_minutes_extra: int = 0) -> Price:
    """What a stay from `entered_at` to `left_at` costs; `tz` is the site's IANA time zone.

    - The stay is rounded up to whole minutes. A stay within tariff.free_minutes (plus
      `free_minutes_extra`, a host-registered visitor's free time) costs 0 and is "free".
    - A longer stay is charged from entry: the free minutes are NOT subtracted (the usual
      "15 分钟内免费": 16 minutes cost the first period).
    - The first period costs first_period_fen; then every started increment costs increment_fen, or
      night_increment_fen when the increment starts in the night (site-local, night_start inclusive to
      night_end exclusive, may span midnight).
    - Daily cap: the fee of each local calendar day, each period counted on the day it starts, is at most
      daily_cap_fen; the earliest periods of a day use up the cap, later ones of that day are free.
    - 24 h cap, applied after the daily cap: what remains of the periods starting in each started 24 h
      block from entry (real elapsed time, not wall time) is at most cap_24h_fen.
    Cost is O(days of the stay), not O(increments). ValueError for naive datetimes, a left_at before
    entered_at, a negative free_minutes_extra or an unknown time zone.
    """
    start, end = _utc(entered_at, "entered_at"), _utc(left_at, "left_at")
    if end < start:
        raise ValueError(f"left_at {left_at.isoformat()} is before entered_at {entered_at.isoformat()}")
    if not _whole(free_minutes_extra) or free_minutes_extra < 0:
        raise ValueError("free_minutes_extra must be a whole number, 0 or more")
    site = zone(tz)
    stay_us = (end - start) // _US
    minutes = -(-stay_us // MINUTE_US)
    cur = tariff.currency
    free_limit = tariff.free_minutes + free_minutes_extra
    if minutes <= free_limit:
        return Price(0, cur, minutes, True, False, (f"{minutes} min, within {free_limit} free minutes: free",))

    # Periods start at minute 0 (the first period) and at first + k * increment, for starts before the
    # end of the stay. Cut the stay where the price, the day or the 24 h block of a start may change;
    # within a stretch every increment costs the same and counts on the same day and block.
    night = tariff.night()
    walls = (0,) + (night if night else ())
    day_us, first_us, inc_us = DAY_MINUTES * MINUTE_US, tariff.first_period_minutes * MINUTE_US, \
        tariff.increment_minutes * MINUTE_US
    offsets = {0, stay_us}
    offsets.update(range(day_us, stay_us, day_us))
    offsets.update((c - start) // _US for c in _local_cuts(start, end, site, walls))
    cuts = sorted(offsets)

    day_fen: dict[date, int] = {}
    day_over: dict[date, int] = {}
    block_fen: dict[int, int] = {}
    counts: dict[tuple[int, bool], int] = {}
    raw = 0
    for a, b in zip(cuts, cuts[1:], strict=False):
        if a >= b:
            continue
        local = (start + timedelta(microseconds=a)).astimezone(site)
        is_night = night is not None and _is_night(local.hour * 60 + local.minute, night)
        unit = tariff.night_increment_fen if is_night else tariff.increment_fen
        n = max(0, -(-(b - first_us) // inc_us)) - max(0, -(-(a - first_us) // inc_us))
        fen = n * unit + (tariff.first_period_fen if a == 0 else 0)
        if n:
            counts[unit, is_night] = counts.get((unit, is_night), 0) + n
        raw += fen
        day = local.date()
        if tariff.daily_cap_fen:
            kept = min(fen, tariff.daily_cap_fen - day_fen.get(day, 0))
            day_over[day] = day_over.get(day, 0) + fen - kept
            fen = kept
        day_fen[day] = day_fen.get(day, 0) + fen
        block_fen[a // day_us] = block_fen.get(a // day_us, 0) + fen

    lines = [f"{minutes} min from entry (over {free_limit} free minutes)",
             f"first {tariff.first_period_minutes} min: {money(tariff.first_period_fen, cur)}"]
    for (unit, is_night), n in sorted(counts.items(), key=lambda item: item[0][1]):
        label = "night " if is_night else ""
        lines.append(f"{n} x {tariff.increment_minutes} min {label}at {money(unit, cur)}: {money(n * unit, cur)}")
    lines += [f"daily cap {d.isoformat()} ({money(tariff.daily_cap_fen, cur)}): {money(-over, cur)}"
              for d, over in sorted(day_over.items()) if over]
    total = 0
    for block, fen in sorted(block_fen.items()):
        if tariff.cap_24h_fen and fen > tariff.cap_24h_fen:
            lines.append(f"24 h cap, hours {24 * block}-{24 * block + 24} ({money(tariff.cap_24h_fen, cur)}): "
                         f"{money(tariff.cap_24h_fen - fen, cur)}")
            fen = tariff.cap_24h_fen
        total += fen
    lines.append(f"total: {money(total, cur)}")
    return Price(total, cur, minutes, False, total < raw, tuple(lines))


def exit_fee(tariff: Tariff, entered_at: datetime, now: datetime, tz: str, paid_fen: int = 0,
             paid_until: datetime | None = None, free_minutes_extra: int = 0) -> int:
    """What is still due at `now`: nothing within a payment's exit window (now <= paid_until), otherwise
    the price of the whole stay minus what was paid, never negative."""
    if not _whole(paid_fen) or paid_fen < 0:
        raise ValueError("paid_fen must be a whole number of fen, 0 or more")
    if paid_until is not None and _utc(now, "now") <= _utc(paid_until, "paid_until"):
        return 0
    return max(0, price(tariff, entered_at, now, tz, free_minutes_extra).fen - paid_fen)


# -- exit -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExitDecision:
    open: bool
    reason: str     # resident, pass, free, paid, fee_due, offline_wait, offline_open_debt, no_entry_record,
                    # blacklisted, low_confidence
    fee_fen: int    # what is still due (for offline_open_debt: the debt recorded)
    message: str    # display: have_a_good_trip, pay_at_exit, wait_for_cashier, confirm_with_guard


def exit_decision(right: VehicleRight | None, session_entered_at: datetime | None, now: datetime, paid_fen: int,
                  paid_until: datetime | None, tariff: Tariff, tz: str, online: bool, policy: LanePolicy,
                  confidence: float, today: date) -> ExitDecision:
    """Does the exit barrier open? `right` is the plate's right (found by the caller, maybe None),
    `session_entered_at` the open session's entry (None: no entry record), `today` the site-local date.

    In order:
    - blacklisted: the guard decides (a barrier does not trap a car on its own);
    - a read below the lane's confidence: the guard confirms;
    - residents ("resident"), staff and monthly passes valid today or in grace days ("pass") leave free,
      whatever the entry day was;
    - everyone else pays what `exit_fee` says is due; a registered visitor gets its free minutes. A right
      that lapsed during the stay is charged only from the start of its first lapsed day. With no entry
      record, the lane's no_entry_record_exit decides: a flat fee (minus what was paid), free, or the guard;
    - nothing due: open ("paid" if something was paid, else "free"; "no_entry_record" without an entry).
      Something due online: "fee_due" (or "no_entry_record"), pay at the exit; offline:
      policy.offline_unpaid_exit waits for the cashier ("offline_wait") or opens and records the debt
      ("offline_open_debt", fee_fen is the debt).
    """
    if right is not None and right.kind == "blacklist":
        return ExitDecision(False, "blacklisted", 0, "confirm_with_guard")
    if confidence < policy.low_confidence:
        return ExitDecision(False, "low_confidence", 0, "confirm_with_guard")
    status = right_status(right, today) if right else "valid"
    if right is not None and right.kind != "visitor" and status in ("valid", "grace"):
        return ExitDecision(True, "resident" if right.kind == "resident" else "pass", 0, "have_a_good_trip")
    if not _whole(paid_fen) or paid_fen < 0:
        raise ValueError("paid_fen must be a whole number of fen, 0 or more")
    reason = ""
    if session_entered_at is None:
        reason = "no_entry_record"
        if policy.no_entry_record_exit == "confirm":
            return ExitDecision(False, reason, 0, "confirm_with_guard")
        flat = policy.no_entry_record_fee_fen if policy.no_entry_record_exit == "charge_flat" else 0
        due = max(0, flat - paid_fen)
    else:
        entered = session_entered_at
        if right is not None and status == "expired" and right.valid_until is not None:
            lapsed = right.valid_until + timedelta(days=right.grace_days + 1)
            lapsed_at = datetime.combine(lapsed, time(0), tzinfo=zone(tz))
            entered = max(_utc(entered, "session_entered_at"), lapsed_at.astimezone(UTC))
            entered = min(entered, _utc(now, "now"))
        extra = right.free_minutes if right is not None and right.kind == "visitor" and status == "valid" else 0
        due = exit_fee(tariff, entered, now, tz, paid_fen, paid_until, extra)
    if due == 0:
        return ExitDecision(True, reason or ("paid" if paid_fen else "free"), 0, "have_a_good_trip")
    if online:
        return ExitDecision(False, reason or "fee_due", due, "pay_at_exit")
    if policy.offline_unpaid_exit == "open":
        return ExitDecision(True, "offline_open_debt", due, "have_a_good_trip")
    return ExitDecision(False, "offline_wait", due, "wait_for_cashier")


def flag_long_stay(entered_at: datetime, now: datetime, days: int = 3) -> bool:
    """True once a car has been inside for `days` days or more (real elapsed time)."""
    if not _whole(days) or days < 1:
        raise ValueError("days must be a whole number, 1 or more")
    return _utc(now, "now") - _utc(entered_at, "entered_at") >= timedelta(days=days)
