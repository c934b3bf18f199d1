"""Notify's records: the recipient directory and preferences, the fan-out of an event into
messages (once per event, recipient and channel), the outbox the delivery worker claims and
settles, the inbox, dead letters and retries, and the daily digest.

Every function takes a connection inside the caller's transaction and raises InvalidInput or
NotFound with a clear message; nothing is half-written.
"""
from __future__ import annotations

import json
import uuid
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, case, func, insert, or_, select, update

from gatehouse.db import insert_ignore
from gatehouse.records import InvalidInput, NotFound
from services.notify import rules, templates
from services.notify.config import Config
from services.notify.tables import attempts, channel_state, consumed_events, messages, preferences, recipients

__all__ = ["InvalidInput", "NotFound"]

RECIPIENT_FIELDS = ("recipient_id", "site_id", "name", "kind", "unit_id", "roles", "language", "timezone", "email",
                    "phone", "webhook_url", "webhook_secret", "quiet_start", "quiet_end", "active")
DEFAULT_TZ = "Asia/Shanghai"
VISIBLE = ("queued", "sending", "sent", "delivered", "failed", "dead", "held", "digested", "replayed")


def _iso(value):
    return value.isoformat() if isinstance(value, datetime) else value


# -- recipients ------------------------------------------------------------------------------------

def _check_recipient(item: dict, where: str) -> tuple[dict, list[str]]:
    if not isinstance(item, dict):
        raise InvalidInput(f"{where}: a recipient must be an object")
    unknown = sorted(set(item) - set(RECIPIENT_FIELDS))
    if unknown:
        raise InvalidInput(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(RECIPIENT_FIELDS)}")
    for key in ("recipient_id", "site_id", "name"):
        value = item.get(key)
        if not isinstance(value, str) or not value.strip() or len(value) > (200 if key == "name" else 64):
            raise InvalidInput(f"{where}: {key} must be a non-empty text (at most {200 if key == 'name' else 64})")
    rid = item["recipient_id"]
    kind = item.get("kind", "resident")
    if kind not in rules.KINDS:
        raise InvalidInput(f"{where} ({rid}): kind must be one of {', '.join(rules.KINDS)}, got {kind!r}")
    language = item.get("language", "zh-CN")
    if language not in rules.LANGUAGES:
        raise InvalidInput(f"{where} ({rid}): language must be one of {', '.join(rules.LANGUAGES)}, got {language!r}")
    tz = item.get("timezone") or DEFAULT_TZ
    try:
        rules.zone(tz)
    except ValueError as exc:
        raise InvalidInput(f"{where} ({rid}): {exc}") from None
    roles = item.get("roles") or []
    if isinstance(roles, str):
        roles = [r for r in roles.replace(";", ",").split(",") if r.strip()]
    if not isinstance(roles, list) or not all(isinstance(r, str) and r.strip() and "," not in r for r in roles):
        raise InvalidInput(f"{where} ({rid}): roles must be a list of role names")
    unit_id = item.get("unit_id") or None
    if kind == "resident" and not unit_id:
        raise InvalidInput(f"{where} ({rid}): a resident needs a unit_id")
    start, end = item.get("quiet_start") or None, item.get("quiet_end") or None
    if (start is None) != (end is None):
        raise InvalidInput(f"{where} ({rid}): give both quiet_start and quiet_end, or neither")
    try:
        if start:
            rules.parse_hhmm(start)
            rules.parse_hhmm(end)
    except ValueError as exc:
        raise InvalidInput(f"{where} ({rid}): {exc}") from None
    row = {"recipient_id": rid.strip(), "site_id": item["site_id"].strip(), "name": item["name"].strip(),
           "kind": kind, "unit_id": unit_id, "roles": "," + ",".join(sorted({r.strip() for r in roles})) + ","
           if roles else "", "language": language, "timezone": tz,
           "email": (item.get("email") or "").strip() or None, "phone": (item.get("phone") or "").strip() or None,
           "webhook_url": (item.get("webhook_url") or "").strip() or None,
           "webhook_secret": item.get("webhook_secret") or None, "quiet_start": start, "quiet_end": end,
           "active": bool(item.get("active", True))}
    # a directory synced from elsewhere may hold a bad address: keep the person, warn, and let
    # only the messages on that channel fail (with the reason) when they are sent
    warnings = []
    for channel, present in (("email", row["email"]), ("sms", row["phone"]), ("webhook", row["webhook_url"])):
        problem = present and rules.address_problem(channel, row)
        if problem:
            warnings.append(f"{rid}: {problem}")
    return row, warnings


def upsert_recipients(conn, items: list[dict], now: datetime, cfg: Config | None = None) -> dict:
    """Create or replace recipients (all or none); returns counts, address warnings, and how many
    messages of recent events that had found nobody were written for them (see replay)."""
    if not isinstance(items, list) or not items:
        raise InvalidInput("give a non-empty list of recipients")
    checked, warnings, seen = [], [], set()
    for i, item in enumerate(items):
        row, problems = _check_recipient(item, f"recipient #{i + 1}")
        if row["recipient_id"] in seen:
            raise InvalidInput(f"recipient #{i + 1}: {row['recipient_id']!r} appears twice")
        seen.add(row["recipient_id"])
        checked.append(row)
        warnings += problems
    existing = set()
    ids = [r["recipient_id"] for r in checked]
    for chunk in range(0, len(ids), 500):
        existing |= set(conn.execute(select(recipients.c.recipient_id)
                                     .where(recipients.c.recipient_id.in_(ids[chunk:chunk + 500]))).scalars())
    new = [{**r, "updated_at": now} for r in checked if r["recipient_id"] not in existing]
    if new:
        conn.execute(insert(recipients), new)
    changed = [{**{f"b_{k}": v for k, v in r.items()}, "b_updated_at": now}
               for r in checked if r["recipient_id"] in existing]
    if changed:
        conn.execute(update(recipients).where(recipients.c.recipient_id == bindparam("b_recipient_id"))
                     .values({k: bindparam(f"b_{k}") for k in (*RECIPIENT_FIELDS[1:], "updated_at")}), changed)
    replayed = replay_for_recipients(conn, checked, now, cfg or Config())
    return {"created": len(new), "updated": len(changed), "warnings": warnings, "replayed": replayed}


ACCESS_KINDS = {"resident": "resident", "staff": "staff", "contractor": "user"}


def sync_people(conn, site_id: str, people_rows: list[dict], now: datetime, cfg: Config | None = None) -> dict:
    """People as access registers them (`access.people_changed`): everyone becomes a recipient
    (in-app inbox at least) without anyone typing them in twice. What access knows replaces name,
    kind, unit and activity; what notify keeps (email, language, roles, webhook, quiet hours)
    stays, and a phone number is taken from access only while notify has none. A person who
    moved out or is suspended stops receiving. Idempotent: the same event twice changes nothing."""
    ids = [str(p.get("person_id") or "") for p in people_rows]
    if not ids or not all(ids):
        raise InvalidInput("people_changed: every person needs a person_id")
    known = {}
    for chunk in range(0, len(ids), 500):
        known |= {r["recipient_id"]: dict(r) for r in conn.execute(
            select(recipients).where(recipients.c.recipient_id.in_(ids[chunk:chunk + 500]))).mappings()}
    items = []
    for p in people_rows:
        kind = ACCESS_KINDS.get(p.get("kind"), "user")
        mine = known.get(p["person_id"])
        item = {"recipient_id": p["person_id"], "site_id": site_id, "name": p.get("name") or p["person_id"],
                "kind": kind, "unit_id": p.get("unit_id") if kind == "resident" else None,
                "active": p.get("status") == "active"}
        if mine:
            roles = [r for r in (mine["roles"] or "").split(",") if r]
            item.update(language=mine["language"], timezone=mine["timezone"], email=mine["email"],
                        phone=mine["phone"] or p.get("phone"), webhook_url=mine["webhook_url"],
                        webhook_secret=mine["webhook_secret"], quiet_start=mine["quiet_start"],
                        quiet_end=mine["quiet_end"], roles=roles)
        else:
            item.update(phone=p.get("phone"), roles=[p["role"]] if kind == "staff" and p.get("role") else [])
        if kind == "resident" and not item["unit_id"]:
            continue                        # access requires a unit; a row without one is not usable here
        items.append(item)
    if not items:
        return {"created": 0, "updated": 0, "warnings": [], "replayed": 0}
    return upsert_recipients(conn, items, now, cfg)


def replay_for_recipients(conn, people: list[dict], now: datetime, cfg: Config) -> int:
    """Events of the last `replay_window_s` that found nobody (an unknown person, a unit without
    residents, a role nobody held) are fanned out again once the directory has someone for them:
    a directory filled after the events (a new resident, a late sync) still hears of them.
    Those already served are not written twice (the unique key); returns messages written."""
    since = now - timedelta(seconds=cfg.replay_window_s)
    misses = conn.execute(select(messages.c.event_id, messages.c.recipient_id, messages.c.site_id).where(
        messages.c.channel == "none", messages.c.status == "failed", messages.c.created_at >= since)).all()
    if not misses:
        return 0
    active = [p for p in people if p.get("active", True)]
    persons = {p["recipient_id"] for p in active}
    units = {(p["site_id"], p["unit_id"]) for p in active if p["kind"] == "resident" and p["unit_id"]}
    roles = {(p["site_id"], r) for p in active if p["kind"] == "staff" for r in p["roles"].split(",") if r}
    events: dict[str, list[str]] = defaultdict(list)
    for event_id, who, site_id in misses:
        if who.startswith("unit:"):
            hit = (site_id, who.removeprefix("unit:")) in units
        elif who.startswith("role:"):
            hit = any((site_id, r) in roles for r in who.removeprefix("role:").split("+"))
        else:
            hit = who in persons
        if hit:
            events[event_id].append(who)
    written = 0
    for event_id in sorted(events):
        row = conn.execute(select(consumed_events.c.event_type, consumed_events.c.payload)
                           .where(consumed_events.c.event_id == event_id)).first()
        if row is None or not row.payload:
            continue
        rows = [r for r in fan_out(conn, row.event_type, json.loads(row.payload), cfg, now) if r["channel"] != "none"]
        n = len(conn.execute(insert_ignore(conn, messages).returning(messages.c.message_id), rows).all()) \
            if rows else 0
        if n:
            # the miss is resolved: say so on it, so the failed list shows only what still needs a hand
            conn.execute(update(messages).where(messages.c.event_id == event_id, messages.c.channel == "none",
                                                messages.c.recipient_id.in_(events[event_id]))
                         .values(status="replayed", last_error=messages.c.last_error + f"; replayed at "
                                 f"{now.isoformat(timespec='seconds')} to recipients added since"))
        written += n
    return written


def _recipient_dict(row) -> dict:
    d = {k: _iso(v) for k, v in dict(row).items() if k != "webhook_secret"}
    d["roles"] = [r for r in (row["roles"] or "").split(",") if r]
    d["has_webhook_secret"] = bool(row["webhook_secret"])
    return d


def recipient(conn, recipient_id: str) -> dict:
    return _recipient_dict(_require_recipient(conn, recipient_id))


def _require_recipient(conn, recipient_id: str):
    row = conn.execute(select(recipients).where(recipients.c.recipient_id == recipient_id)).mappings().first()
    if row is None:
        raise NotFound(f"unknown recipient {recipient_id!r}")
    return row


def list_recipients(conn, site_id: str | None = None, unit_id: str | None = None, role: str | None = None,
                    limit: int = 500) -> list[dict]:
    q = select(recipients).order_by(recipients.c.recipient_id).limit(limit)
    if site_id:
        q = q.where(recipients.c.site_id == site_id)
    if unit_id:
        q = q.where(recipients.c.unit_id == unit_id)
    if role:
        q = q.where(recipients.c.roles.like(f"%,{role},%"))
    return [_recipient_dict(r) for r in conn.execute(q).mappings()]


def set_preferences(conn, recipient_id: str, prefs: list[dict]) -> dict:
    """Turn channels on or off per category for a recipient; returns the effective preferences."""
    _require_recipient(conn, recipient_id)
    if not isinstance(prefs, list) or not prefs:
        raise InvalidInput("give a non-empty list of {category, channel, enabled}")
    for i, p in enumerate(prefs):
        if not isinstance(p, dict) or set(p) != {"category", "channel", "enabled"}:
            raise InvalidInput(f"preference #{i + 1}: give exactly category, channel and enabled")
        if p["category"] not in rules.CATEGORIES:
            raise InvalidInput(f"preference #{i + 1}: category must be one of {', '.join(rules.CATEGORIES)}")
        if p["channel"] not in rules.CHANNELS:
            raise InvalidInput(f"preference #{i + 1}: channel must be one of {', '.join(rules.CHANNELS)}")
        if not isinstance(p["enabled"], bool):
            raise InvalidInput(f"preference #{i + 1}: enabled must be true or false")
    for p in prefs:
        conn.execute(preferences.delete().where(preferences.c.recipient_id == recipient_id,
                                                preferences.c.category == p["category"],
                                                preferences.c.channel == p["channel"]))
        conn.execute(insert(preferences).values(recipient_id=recipient_id, **p))
    return get_preferences(conn, recipient_id)


def _prefs(conn, recipient_ids: list[str]) -> dict[str, dict[tuple[str, str], bool]]:
    out: dict[str, dict] = defaultdict(dict)
    for chunk in range(0, len(recipient_ids), 500):
        for row in conn.execute(select(preferences).where(
                preferences.c.recipient_id.in_(recipient_ids[chunk:chunk + 500]))).mappings():
            out[row["recipient_id"]][(row["category"], row["channel"])] = row["enabled"]
    return out


def get_preferences(conn, recipient_id: str) -> dict:
    """Every (category, channel) with whether it is on and whether that is the default."""
    _require_recipient(conn, recipient_id)
    own = _prefs(conn, [recipient_id]).get(recipient_id, {})
    return {"recipient_id": recipient_id, "preferences": [
        {"category": c, "channel": ch, "enabled": own.get((c, ch), c in rules.DEFAULT_CHANNELS[ch]),
         "default": (c, ch) not in own} for c in rules.CATEGORIES for ch in rules.CHANNELS]}


def set_quiet_hours(conn, recipient_id: str, start: str | None, end: str | None) -> dict:
    row = _require_recipient(conn, recipient_id)
    if (start or None) is None and (end or None) is None:
        start = end = None
    elif not start or not end:
        raise InvalidInput("give both start and end (HH:MM, local time), or neither to remove quiet hours")
    else:
        try:
            rules.parse_hhmm(start)
            rules.parse_hhmm(end)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    conn.execute(update(recipients).where(recipients.c.recipient_id == row["recipient_id"])
                 .values(quiet_start=start, quiet_end=end))
    return recipient(conn, recipient_id)


# -- fan-out ---------------------------------------------------------------------------------------

def _audience(conn, site_id: str, route: rules.Route) -> tuple[list[dict], list[tuple[str, str]]]:
    """(recipients, [(pseudo recipient id, why nobody)])."""
    what, arg = route.audience
    base = select(recipients).where(recipients.c.active.is_(True))
    if what == "person":
        row = conn.execute(base.where(recipients.c.recipient_id == arg)).mappings().first()
        if row is None:
            return [], [(arg, f"unknown recipient {arg!r}: not in notify's directory (or inactive)")]
        return [dict(row)], []
    if what == "unit":
        rows = conn.execute(base.where(recipients.c.site_id == site_id, recipients.c.unit_id == arg,
                                       recipients.c.kind == "resident")
                            .order_by(recipients.c.recipient_id)).mappings().all()
        if not rows:
            return [], [(f"unit:{arg}", f"no resident of unit {arg!r} at site {site_id!r} in notify's directory")]
        return [dict(r) for r in rows], []
    rows = conn.execute(base.where(recipients.c.site_id == site_id, recipients.c.kind == "staff",
                                   or_(*[recipients.c.roles.like(f"%,{role},%") for role in arg]))
                        .order_by(recipients.c.recipient_id)).mappings().all()
    if not rows:
        return [], [(f"role:{'+'.join(arg)}", f"no staff with role {' or '.join(arg)} at site {site_id!r}")]
    return [dict(r) for r in rows], []


def _context(event_type: str, payload: dict, r: dict, cfg: Config) -> dict:
    ctx = {**payload, "recipient_name": r["name"], "recipient_id": r["recipient_id"],
           "tz": r.get("timezone") or DEFAULT_TZ, "console_url": cfg.console_url.rstrip("/")}
    if event_type == "billing.payment_received" and payload.get("receipt_path"):
        ctx["receipt_url"] = f"{ctx['console_url']}/{str(payload['receipt_path']).lstrip('/')}"
    return ctx


def _row(event_type, payload, recipient_id, channel, category, priority, language, now, **values) -> dict:
    row = {"message_id": str(uuid.uuid4()), "event_id": payload["event_id"], "event_type": event_type,
           "site_id": payload["site_id"], "recipient_id": recipient_id, "channel": channel, "category": category,
           "priority": priority, "address": None, "language": language, "subject": "", "body": "", "data": None,
           "status": "failed", "attempts": 0, "next_attempt_at": None, "last_error": None, "provider_answer": None,
           "created_at": now, "sent_at": None, "delivered_at": None, "read_at": None, "digest_id": None}
    row.update(values)
    return row


def fan_out(conn, event_type: str, payload: dict, cfg: Config, now: datetime) -> list[dict]:
    """The message rows for an event (not written). A recipient or channel that cannot be served
    gets a failed row saying why; the others are unaffected."""
    try:
        route = rules.route(event_type, payload)
    except KeyError as exc:
        return [_row(event_type, payload, "-", "none", "-", "normal", "en", now,
                     last_error=f"{event_type} without {exc.args[0]}: nobody to tell")]
    if route is None:
        return []
    people, problems = _audience(conn, payload["site_id"], route)
    rows = [_row(event_type, payload, who, "none", route.category, route.priority, "en", now, last_error=why)
            for who, why in problems]
    prefs = _prefs(conn, [p["recipient_id"] for p in people])
    recent = _recent(conn, event_type, [p["recipient_id"] for p in people], now - timedelta(seconds=cfg.storm_window_s))
    for person in people:
        rid = person["recipient_id"]
        try:
            subject, body = templates.render(event_type, person["language"], _context(event_type, payload, person, cfg))
            problem = None
        except templates.TemplateProblem as exc:
            subject, body, problem = "", "", str(exc)
        for channel in rules.channels_for(person, route.category, route.priority, prefs.get(rid, {})):
            common = dict(subject=subject, body=body, address=rules.address_of(channel, person))
            why = problem or rules.address_problem(channel, person)
            if why:
                rows.append(_row(event_type, payload, rid, channel, route.category, route.priority,
                                 person["language"], now, last_error=why, **common))
                continue
            status, when = rules.due_at(now, channel, route.priority, person, cfg.digest_hour)
            if rules.storm_hold(channel, status, recent.get((rid, channel), 0), cfg.storm_limit):
                status, when = "held", now + timedelta(seconds=cfg.storm_window_s)
            rows.append(_row(event_type, payload, rid, channel, route.category, route.priority, person["language"],
                             now, status=status, next_attempt_at=None if status == "delivered" else when,
                             delivered_at=now if status == "delivered" else None,
                             data=json.dumps(payload, ensure_ascii=False, default=str) if channel == "webhook" else None,
                             **common))
    return rows


def _recent(conn, event_type: str, recipient_ids: list[str], since: datetime) -> dict[tuple[str, str], int]:
    """Messages of this event type per (recipient, storm channel) created since `since`."""
    out: dict[tuple[str, str], int] = {}
    for chunk in range(0, len(recipient_ids), 500):
        rows = conn.execute(select(messages.c.recipient_id, messages.c.channel, func.count()).where(
            messages.c.recipient_id.in_(recipient_ids[chunk:chunk + 500]), messages.c.event_type == event_type,
            messages.c.channel.in_(sorted(rules.STORM_CHANNELS)), messages.c.created_at >= since,
            messages.c.status != "failed").group_by(messages.c.recipient_id, messages.c.channel)).all()
        out.update({(r, c): n for r, c, n in rows})
    return out


def take_event(conn, event_type: str, payload: dict, cfg: Config, now: datetime) -> dict:
    """Record an event once and write its messages in the same transaction; a redelivered event
    writes nothing (the event id is already there, and each message is unique per event,
    recipient and channel besides)."""
    if not isinstance(payload, dict) or not payload.get("event_id") or not payload.get("site_id"):
        raise InvalidInput(f"{event_type}: an event needs event_id and site_id")
    event_id = str(payload["event_id"])
    taken = conn.execute(insert_ignore(conn, consumed_events).values(
        event_id=event_id, event_type=event_type, site_id=payload["site_id"], received_at=now, messages=0, duplicates=0,
        payload=json.dumps(payload, ensure_ascii=False, default=str))
        .returning(consumed_events.c.event_id)).first()
    if taken is None:
        conn.execute(update(consumed_events).where(consumed_events.c.event_id == event_id)
                     .values(duplicates=consumed_events.c.duplicates + 1))
        return {"event_id": event_id, "duplicate": True, "messages": 0}
    rows = fan_out(conn, event_type, payload, cfg, now)
    if rows:
        conn.execute(insert_ignore(conn, messages), rows)
    conn.execute(update(consumed_events).where(consumed_events.c.event_id == event_id).values(messages=len(rows)))
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r["status"]] += 1
    return {"event_id": event_id, "duplicate": False, "messages": len(rows), "by_status": dict(counts),
            "errors": [f"{r['recipient_id']}/{r['channel']}: {r['last_error']}" for r in rows if r["status"] == "failed"]}


# -- the delivery worker's side --------------------------------------------------------------------

def claim(conn, channel: str, now: datetime, limit: int, lease_s: float) -> list[dict]:
    """Due messages of a channel, critical first, leased to the caller until now + lease_s (a
    worker that dies mid-send leaves them to be claimed again when the lease ends)."""
    q = (select(messages).where(messages.c.channel == channel, messages.c.status.in_(("queued", "sending")),
                                messages.c.next_attempt_at <= now)
         .order_by(case((messages.c.priority == "critical", 0), else_=1), messages.c.next_attempt_at)
         .limit(limit))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    rows = [dict(r) for r in conn.execute(q).mappings()]
    if rows:
        ids = [r["message_id"] for r in rows]
        conn.execute(update(messages).where(messages.c.message_id.in_(ids))
                     .values(status="sending", next_attempt_at=now + timedelta(seconds=lease_s)))
    return rows


def settle(conn, outcomes: list[dict], now: datetime, cfg: Config) -> dict:
    """Record what happened to claimed messages. Each outcome: message_id, attempts (as claimed),
    outcome (sent | delivered | retry | failed | wait), answer, and for wait a delay in seconds
    (and created_at). A retry past max_attempts makes a dead letter; a wait counts no attempt,
    but a message that has waited longer than max_wait_s is a dead letter too."""
    updates, log = [], []
    counts: dict[str, int] = defaultdict(int)
    for o in outcomes:
        kind, tries, answer = o["outcome"], o["attempts"], o.get("answer")
        values = {"b_id": o["message_id"], "b_attempts": tries + 1, "b_next": None, "b_error": None,
                  "b_answer": answer, "b_sent": None, "b_delivered": None}
        if kind in ("sent", "delivered"):
            values.update(b_status=kind, b_sent=now, b_delivered=now if kind == "delivered" else None)
        elif kind == "failed":
            values.update(b_status="failed", b_error=answer)
        elif kind == "retry":
            if tries + 1 >= cfg.max_attempts:
                kind = "dead"
                values.update(b_status="dead", b_error=f"gave up after {tries + 1} attempts: {answer}")
            else:
                delay = rules.retry_delay(tries + 1, cfg.retry_base_s, cfg.retry_factor, cfg.retry_max_delay_s)
                values.update(b_status="queued", b_next=now + timedelta(seconds=delay), b_error=answer)
        elif kind == "wait" and o.get("created_at") and (now - o["created_at"]).total_seconds() > cfg.max_wait_s:
            kind = "dead"
            values.update(b_status="dead", b_attempts=tries,
                          b_error=f"the channel stayed unreachable past {cfg.max_wait_s:.0f} s: {answer}")
        elif kind == "wait":
            values.update(b_status="queued", b_attempts=tries, b_next=now + timedelta(seconds=o.get("delay", 1.0)),
                          b_error=f"waiting: {answer}", b_answer=None)
        else:
            raise ValueError(f"unknown outcome {kind!r}")
        counts[kind] += 1
        updates.append(values)
        log.append({"message_id": o["message_id"], "at": now, "outcome": kind, "answer": answer})
    if updates:
        conn.execute(update(messages).where(messages.c.message_id == bindparam("b_id"),
                                            messages.c.status == "sending")
                     .values(status=bindparam("b_status"), attempts=bindparam("b_attempts"),
                             next_attempt_at=bindparam("b_next"), last_error=bindparam("b_error"),
                             provider_answer=bindparam("b_answer"), sent_at=bindparam("b_sent"),
                             delivered_at=bindparam("b_delivered")), updates)
        conn.execute(insert(attempts), log)
    return dict(counts)


def webhook_secrets(conn, recipient_ids: list[str]) -> dict[str, str]:
    rows = conn.execute(select(recipients.c.recipient_id, recipients.c.webhook_secret)
                        .where(recipients.c.recipient_id.in_(sorted(set(recipient_ids))))).all()
    return {rid: secret for rid, secret in rows if secret}


def set_channel_state(conn, channel: str, state: str, detail: str | None, now: datetime) -> None:
    conn.execute(insert_ignore(conn, channel_state).values(channel=channel, state=state, since=now, checked_at=now,
                                                           detail=detail))
    conn.execute(update(channel_state).where(channel_state.c.channel == channel).values(
        state=state, detail=detail, checked_at=now,
        since=case((channel_state.c.state == state, channel_state.c.since), else_=now)))


def channel_states(conn) -> list[dict]:
    return [{k: _iso(v) for k, v in dict(r).items()}
            for r in conn.execute(select(channel_state).order_by(channel_state.c.channel)).mappings()]


def delivery_report(conn, message_id: str, status: str, answer: str | None, now: datetime) -> dict:
    """A provider's later word on a message it accepted (an SMS delivery receipt)."""
    if status not in ("delivered", "failed"):
        raise InvalidInput("status must be delivered or failed")
    row = _require_message(conn, message_id)
    if row["status"] not in ("sent", "delivered", "failed"):
        raise InvalidInput(f"message {message_id} is {row['status']}; only a sent message can be reported on")
    values = {"status": status, "provider_answer": answer}
    if status == "delivered":
        values["delivered_at"] = now
    else:
        values["last_error"] = f"provider reports: {answer}"
    conn.execute(update(messages).where(messages.c.message_id == message_id).values(**values))
    conn.execute(insert(attempts).values(message_id=message_id, at=now, outcome=status, answer=f"report: {answer}"))
    return message(conn, message_id)


# -- digests ---------------------------------------------------------------------------------------

def release_digests(conn, now: datetime, cfg: Config) -> int:
    """Gather held items (low priority for the daily digest, or a storm's overflow) into one
    message per recipient and channel once any of them is due; returns how many were written."""
    due = set(conn.execute(select(messages.c.recipient_id, messages.c.channel).where(
        messages.c.status == "held", messages.c.next_attempt_at <= now).distinct()).all())
    if not due:
        return 0
    # everything held for a due (recipient, channel) goes in its one summary, due or not yet
    q = (select(messages).where(messages.c.status == "held",
                                messages.c.recipient_id.in_(sorted({r for r, _ in due})))
         .order_by(messages.c.recipient_id, messages.c.channel, messages.c.created_at))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in conn.execute(q).mappings():
        if (row["recipient_id"], row["channel"]) in due:
            groups[(row["recipient_id"], row["channel"])].append(dict(row))
    written = 0
    for (rid, channel), items in groups.items():
        person = conn.execute(select(recipients).where(recipients.c.recipient_id == rid)).mappings().first()
        first = items[0]
        payload = {"event_id": f"digest:{first['message_id']}", "site_id": first["site_id"]}
        if person is None:
            row = _row("notify.digest", payload, rid, channel, "digest", "normal", "en", now,
                       last_error=f"unknown recipient {rid!r}")
        else:
            person = dict(person)
            ctx = {"recipient_name": person["name"], "tz": person["timezone"],
                   "daily": all(i["priority"] == "low" for i in items),
                   "items": [{"subject": i["subject"], "created_at": i["created_at"]} for i in items]}
            try:
                subject, body = templates.render("notify.digest", person["language"], ctx)
                why = rules.address_problem(channel, person)
            except templates.TemplateProblem as exc:
                subject, body, why = "", "", str(exc)
            # a summary of a storm of critical alarms is itself critical (no quiet hours for it)
            priority = "critical" if any(i["priority"] == "critical" for i in items) else "normal"
            status, when = rules.due_at(now, channel, priority, person, cfg.digest_hour)
            row = _row("notify.digest", payload, rid, channel, "digest", priority, person["language"], now,
                       subject=subject, body=body, address=rules.address_of(channel, person),
                       **({"last_error": why} if why else {"status": status, "next_attempt_at": when}))
        conn.execute(insert_ignore(conn, messages).values(**row))
        conn.execute(update(messages).where(messages.c.message_id.in_([i["message_id"] for i in items]))
                     .values(status="digested", digest_id=row["message_id"]))
        written += 1
    return written


# -- inbox, messages, dead letters -------------------------------------------------------------------

def _message_dict(row, full: bool = False) -> dict:
    return {k: _iso(v) for k, v in dict(row).items() if k != "data" and (full or k != "body")}


def _require_message(conn, message_id: str):
    row = conn.execute(select(messages).where(messages.c.message_id == message_id)).mappings().first()
    if row is None:
        raise NotFound(f"unknown message {message_id!r}")
    return row


def message(conn, message_id: str) -> dict:
    row = _require_message(conn, message_id)
    d = _message_dict(row, full=True)
    d["attempt_log"] = [{k: _iso(v) for k, v in dict(a).items() if k not in ("id", "message_id")}
                        for a in conn.execute(select(attempts).where(attempts.c.message_id == message_id)
                                              .order_by(attempts.c.id)).mappings()]
    return d


def inbox(conn, recipient_id: str, unread_only: bool = False, limit: int = 50) -> dict:
    _require_recipient(conn, recipient_id)
    where = [messages.c.recipient_id == recipient_id, messages.c.channel == "inbox",
             messages.c.status == "delivered"]
    unread = conn.execute(select(func.count()).select_from(messages)
                          .where(*where, messages.c.read_at.is_(None))).scalar()
    if unread_only:
        where.append(messages.c.read_at.is_(None))
    rows = conn.execute(select(messages).where(*where).order_by(messages.c.created_at.desc(),
                                                                messages.c.message_id).limit(limit)).mappings()
    return {"recipient_id": recipient_id, "unread": unread,
            "messages": [{k: _iso(r[k]) for k in ("message_id", "event_id", "event_type", "category", "priority",
                                                  "subject", "body", "created_at", "read_at")} for r in rows]}


def mark_read(conn, recipient_id: str, message_id: str, now: datetime) -> dict:
    row = _require_message(conn, message_id)
    if row["recipient_id"] != recipient_id or row["channel"] != "inbox":
        raise NotFound(f"no message {message_id!r} in the inbox of {recipient_id!r}")
    if row["read_at"] is None:
        conn.execute(update(messages).where(messages.c.message_id == message_id).values(read_at=now))
    return {"message_id": message_id, "read_at": _iso(row["read_at"] or now)}


def mark_all_read(conn, recipient_id: str, now: datetime) -> dict:
    _require_recipient(conn, recipient_id)
    done = conn.execute(update(messages).where(messages.c.recipient_id == recipient_id, messages.c.channel == "inbox",
                                               messages.c.read_at.is_(None)).values(read_at=now)).rowcount
    return {"recipient_id": recipient_id, "marked": done}


def list_messages(conn, status: str | None = None, channel: str | None = None, recipient_id: str | None = None,
                  event_id: str | None = None, limit: int = 100) -> list[dict]:
    if status and status not in VISIBLE:
        raise InvalidInput(f"status must be one of {', '.join(VISIBLE)}")
    q = select(messages).order_by(messages.c.created_at.desc(), messages.c.message_id).limit(limit)
    for col, value in ((messages.c.status, status), (messages.c.channel, channel),
                       (messages.c.recipient_id, recipient_id), (messages.c.event_id, event_id)):
        if value:
            q = q.where(col == value)
    return [_message_dict(r) for r in conn.execute(q).mappings()]


def events_taken(conn) -> dict:
    """Events taken and the redeliveries that were recognised (and wrote nothing)."""
    taken, again = conn.execute(select(func.count(), func.coalesce(func.sum(consumed_events.c.duplicates), 0))
                                .select_from(consumed_events)).one()
    return {"events": taken, "duplicates_ignored": int(again)}


def counts(conn) -> dict:
    rows = conn.execute(select(messages.c.channel, messages.c.status, func.count())
                        .group_by(messages.c.channel, messages.c.status)).all()
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for channel, status, n in rows:
        out[channel][status] = n
    return dict(out)


def retry(conn, message_id: str, now: datetime) -> dict:
    """Send a dead (or failed) message again from now, with a fresh count of attempts; its address
    is read again from the directory, so a corrected address is used."""
    row = _require_message(conn, message_id)
    if row["status"] not in ("dead", "failed"):
        raise InvalidInput(f"message {message_id} is {row['status']}; only dead or failed messages are retried")
    if row["channel"] == "none" or not row["body"]:
        raise InvalidInput(f"message {message_id} was never written ({row['last_error']}); fix the cause, "
                           "the next event will reach the recipient")
    values = {"status": "queued", "attempts": 0, "next_attempt_at": now, "last_error": None}
    person = conn.execute(select(recipients).where(recipients.c.recipient_id == row["recipient_id"])).mappings().first()
    if person is not None and row["channel"] in ("email", "sms", "webhook"):
        problem = rules.address_problem(row["channel"], dict(person))
        if problem:
            raise InvalidInput(f"message {message_id}: {problem}; correct the recipient first")
        values["address"] = rules.address_of(row["channel"], dict(person))
    conn.execute(update(messages).where(messages.c.message_id == message_id,
                                        messages.c.status.in_(("dead", "failed"))).values(**values))
    conn.execute(insert(attempts).values(message_id=message_id, at=now, outcome="requeued", answer="retry requested"))
    return message(conn, message_id)


def due_soon(conn, now: datetime) -> dict:
    """How many messages per channel are due now (for the health of the delivery worker)."""
    rows = conn.execute(select(messages.c.channel, func.count()).where(
        or_(messages.c.status == "queued", messages.c.status == "sending"),
        and_(messages.c.next_attempt_at <= now)).group_by(messages.c.channel)).all()
    return {c: n for c, n in rows}
