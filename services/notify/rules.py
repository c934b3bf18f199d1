"""Who must hear of an event, on which channels, and when. Plain Python: no SQL, no AMQP.

- `route(event_type, payload)`: the category, priority and audience of an event (or None).
- `channels_for(...)`: the channels a recipient gets for a category, from defaults, their
  preferences and the addresses they have.
- `due_at(...)`: when a message goes out: now; after the recipient's quiet hours (email and
  SMS, not critical); or at the next digest (low priority, email and SMS).
- `retry_delay(...)`: exponential backoff with a cap.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

CHANNELS = ("inbox", "email", "sms", "webhook")
CATEGORIES = ("visitor", "alarm", "patrol", "billing", "parking", "digest")
LANGUAGES = ("zh-CN", "en")
KINDS = ("resident", "staff", "user")
PRIORITIES = ("critical", "normal", "low")

# alarms nobody may sleep through: they bypass quiet hours and are never held for a digest
CRITICAL_ALARMS = {"door_forced", "door_held_open", "fire", "fire_alarm"}
DEVICE_ALARMS = {"device_offline", "device_fault"}

# (category, channel) -> on unless the recipient turned it off; SMS costs money, so it is on for
# what cannot wait (alarms, rounds, a visitor at the gate) and off for bills and parking
DEFAULT_CHANNELS = {
    "inbox": set(CATEGORIES),
    "email": set(CATEGORIES),
    "sms": {"alarm", "patrol", "visitor"},
    "webhook": set(CATEGORIES),
}
QUIET_CHANNELS = {"email", "sms"}       # the inbox is silent; a webhook is a machine
DIGEST_CHANNELS = {"email", "sms"}

EMAIL = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")
PHONE = re.compile(r"^\+?[0-9]{6,15}$")
URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$")
HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


@dataclass(frozen=True)
class Route:
    category: str
    priority: str
    # ("person", person_id) | ("unit", unit_id) | ("roles", (role, ...))
    audience: tuple
    fallback_unit: str | None = None     # a visitor's host unit when no host person is named


def route(event_type: str, p: dict) -> Route | None:
    """What an event means for notification; None: nobody needs to hear of it."""
    if event_type == "access.visitor_arrived":
        if p.get("host_person_id"):
            return Route("visitor", "normal", ("person", p["host_person_id"]))
        return Route("visitor", "normal", ("unit", p["host_unit_id"]))
    if event_type in ("access.alarm_raised", "access.alarm_cleared"):
        kind = p.get("kind", "")
        roles = ("security", "maintenance") if kind in DEVICE_ALARMS else ("security",)
        if event_type == "access.alarm_cleared":
            return Route("alarm", "low", ("roles", roles))
        if kind in CRITICAL_ALARMS:
            return Route("alarm", "critical", ("roles", roles))
        if kind in DEVICE_ALARMS:
            return Route("alarm", "normal", ("roles", roles))
        return Route("alarm", "low", ("roles", roles))       # anti-passback, unlock failed, ...
    if event_type == "patrol.round_missed":
        return Route("patrol", "critical", ("roles", (p.get("supervisor_role") or "patrol_supervisor",)))
    if event_type in ("billing.invoice_issued", "billing.payment_received", "billing.dunning_due"):
        return Route("billing", "normal", ("unit", p["unit_id"]))
    if event_type == "parking.payment_awaited":
        return Route("parking", "normal", ("roles", ("cashier",)))
    return None


def channels_for(recipient: dict, category: str, priority: str, prefs: dict[tuple[str, str], bool]) -> list[str]:
    """The channels a recipient gets for `category`: default or preference, and an address for it.
    A critical message always reaches the inbox, whatever the preferences say."""
    have = {"inbox": True, "email": bool(recipient.get("email")), "sms": bool(recipient.get("phone")),
            "webhook": bool(recipient.get("webhook_url"))}
    out = []
    for channel in CHANNELS:
        if not have[channel]:
            continue
        enabled = prefs.get((category, channel), category in DEFAULT_CHANNELS[channel])
        if enabled or (priority == "critical" and channel == "inbox"):
            out.append(channel)
    return out


def address_problem(channel: str, recipient: dict) -> str | None:
    """Why the recipient's address for `channel` cannot be used, or None."""
    if channel == "email" and not EMAIL.match(recipient.get("email") or ""):
        return f"malformed email address {recipient.get('email')!r}"
    if channel == "sms" and not PHONE.match((recipient.get("phone") or "").replace(" ", "").replace("-", "")):
        return f"malformed phone number {recipient.get('phone')!r}"
    if channel == "webhook":
        if not URL.match(recipient.get("webhook_url") or ""):
            return f"malformed webhook URL {recipient.get('webhook_url')!r}"
        if not recipient.get("webhook_secret"):
            return "webhook without a secret to sign with"
    return None


def address_of(channel: str, recipient: dict) -> str | None:
    if channel == "email":
        return recipient.get("email")
    if channel == "sms":
        return (recipient.get("phone") or "").replace(" ", "").replace("-", "")
    if channel == "webhook":
        return recipient.get("webhook_url")
    return None


# -- time ------------------------------------------------------------------------------------------

def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def parse_hhmm(value: str) -> time:
    if not isinstance(value, str) or not HHMM.match(value):
        raise ValueError(f"a time of day must be HH:MM (00:00 to 23:59), got {value!r}")
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def quiet_until(now: datetime, tz: str, start: str | None, end: str | None) -> datetime | None:
    """If `now` is inside the daily quiet window [start, end) (local time, may cross midnight),
    the UTC moment it ends; otherwise None. start == end means no quiet hours."""
    if not start or not end or start == end:
        return None
    begin, finish = parse_hhmm(start), parse_hhmm(end)
    local = now.astimezone(zone(tz))
    t = local.time()
    if begin < finish:
        inside = begin <= t < finish
        end_day = local.date()
    else:                                   # e.g. 22:00-07:00
        inside = t >= begin or t < finish
        end_day = local.date() + timedelta(days=1) if t >= begin else local.date()
    if not inside:
        return None
    return datetime.combine(end_day, finish, tzinfo=zone(tz)).astimezone(UTC)


def next_digest(now: datetime, tz: str, hour: int) -> datetime:
    """The next digest moment (today's or tomorrow's `hour`:00 local) strictly after now."""
    local = now.astimezone(zone(tz))
    at = datetime.combine(local.date(), time(hour), tzinfo=zone(tz))
    if at <= local:
        at = datetime.combine(local.date() + timedelta(days=1), time(hour), tzinfo=zone(tz))
    return at.astimezone(UTC)


def due_at(now: datetime, channel: str, priority: str, recipient: dict, digest_hour: int) -> tuple[str, datetime]:
    """(status, when) for a new message: ("delivered", now) for the inbox; ("held", digest time)
    for a low-priority email or SMS; ("queued", now or the end of quiet hours) otherwise.
    Critical messages bypass quiet hours."""
    if channel == "inbox":
        return "delivered", now
    tz = recipient.get("timezone") or "Asia/Shanghai"
    if priority == "low" and channel in DIGEST_CHANNELS:
        return "held", next_digest(now, tz, digest_hour)
    if priority != "critical" and channel in QUIET_CHANNELS:
        until = quiet_until(now, tz, recipient.get("quiet_start"), recipient.get("quiet_end"))
        if until is not None:
            return "queued", until
    return "queued", now


STORM_CHANNELS = {"email", "sms"}


def storm_hold(channel: str, status: str, recent: int, limit: int) -> bool:
    """Whether a message that would go out now is held for a storm summary instead: the recipient
    already got `recent` >= limit messages of this event type on this channel in the window.
    The inbox keeps every item; nothing is dropped, only gathered."""
    return channel in STORM_CHANNELS and status == "queued" and limit > 0 and recent >= limit


def retry_delay(attempts: int, base_s: float, factor: float, max_s: float) -> float:
    """Seconds before try number attempts+1, after `attempts` (>= 1) failed tries."""
    exponent = max(0, attempts - 1)
    if exponent > 60:
        return max_s
    return min(max_s, base_s * factor ** exponent)


# -- money ---------------------------------------------------------------------------------------

def yuan(fen: int) -> str:
    """Integer fen as yuan with two decimals: 12345 -> "123.45" (no floats)."""
    if isinstance(fen, bool) or not isinstance(fen, int):
        raise ValueError(f"an amount must be whole fen, got {fen!r}")
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole:,}.{cents:02d}"
