"""The parking service's storage: plain functions over an SQLAlchemy connection. What a stay
costs and who may enter are decided by services.parking.rules; this module keeps the record.
"""
from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, insert, select, update

from gatehouse.db import serialize_writers
from gatehouse.outbox import queue as outbox_queue
from gatehouse.records import InvalidInput, NotFound
from gatehouse.records import now as _now
from gatehouse.records import require as _require
from services.parking import rules
from services.parking.tables import lanes, lots, outbox, payments, read_queue, sessions, vehicles

PARKING_LOCK = 0x7061_726B
KINDS = ("resident", "monthly", "visitor", "staff", "blacklist")
DIRECTIONS = ("entry", "exit", "both")
PAYMENT_METHODS = ("cash", "online")
LONG_STAY_DAYS = 3


def _plain(row) -> dict:
    return {k: (v.isoformat() if isinstance(v, (datetime, date)) else v) for k, v in dict(row).items()}


def _build(cls, fields: dict | None, what: str):
    """A rules dataclass from a JSON object; InvalidInput names an unknown or bad field."""
    fields = fields or {}
    if not isinstance(fields, dict):
        raise InvalidInput(f"{what} must be an object")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise InvalidInput(f"{what}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what}: {exc}") from None


def _plate(text) -> str:
    try:
        return rules.normalize_plate(text)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"plate: {exc}") from None


# -- lots, lanes, vehicles ------------------------------------------------------------------------

def set_lot(conn, site_id: str, lot_id: str, name: str, timezone: str = "Asia/Shanghai", shared_capacity: int = 0,
            tariff: dict | None = None, tolerate_province: bool = True, exit_window_minutes: int = 15) -> dict:
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {timezone!r}") from None
    if not isinstance(shared_capacity, int) or shared_capacity < 0:
        raise InvalidInput("shared_capacity must be a whole number, 0 or more")
    if not isinstance(exit_window_minutes, int) or not 1 <= exit_window_minutes <= 120:
        raise InvalidInput("exit_window_minutes must be from 1 to 120")
    checked = _build(rules.Tariff, tariff, "tariff")
    try:       # a tariff that cannot price a stay is refused now, not at the exit lane
        rules.price(checked, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, 3, tzinfo=UTC), timezone)
    except ValueError as exc:
        raise InvalidInput(f"tariff: {exc}") from None
    values = dict(site_id=site_id, name=name, timezone=timezone, shared_capacity=shared_capacity,
                  tariff=json.dumps(dataclasses.asdict(checked)), tolerate_province=bool(tolerate_province),
                  exit_window_minutes=exit_window_minutes)
    if conn.execute(select(lots.c.lot_id).where(lots.c.lot_id == lot_id)).first():
        conn.execute(update(lots).where(lots.c.lot_id == lot_id).values(**values))
    else:
        conn.execute(insert(lots).values(lot_id=lot_id, **values))
    _publish_items(conn, site_id, [lot_item(conn, lot_id)])
    return lot(conn, lot_id)


def lot(conn, lot_id: str) -> dict:
    row = _require(conn, lots, lots.c.lot_id, lot_id, "lot")
    return {**_plain(row), "tariff": json.loads(row["tariff"]), **occupancy(conn, lot_id)}


def _lot_rules(conn, lot_id: str) -> tuple[dict, rules.Tariff]:
    row = _require(conn, lots, lots.c.lot_id, lot_id, "lot")
    return dict(row), rules.Tariff(**json.loads(row["tariff"]))


def add_lane(conn, lot_id: str, lane_id: str, name: str, direction: str, policy: dict | None = None) -> dict:
    _require(conn, lots, lots.c.lot_id, lot_id, "lot")
    if direction not in DIRECTIONS:
        raise InvalidInput(f"direction must be one of {', '.join(DIRECTIONS)}")
    checked = _build(rules.LanePolicy, policy, "policy")
    values = dict(lot_id=lot_id, name=name, direction=direction, policy=json.dumps(dataclasses.asdict(checked)))
    if conn.execute(select(lanes.c.lane_id).where(lanes.c.lane_id == lane_id)).first():
        conn.execute(update(lanes).where(lanes.c.lane_id == lane_id).values(**values))
    else:
        conn.execute(insert(lanes).values(lane_id=lane_id, **values))
    _publish_items(conn, _require(conn, lots, lots.c.lot_id, lot_id, "lot")["site_id"], lane_items(conn, lot_id, lane_id))
    return {"lane_id": lane_id, **values, "policy": dataclasses.asdict(checked)}


def _lane_policy(conn, lane_id: str) -> rules.LanePolicy:
    row = conn.execute(select(lanes.c.policy).where(lanes.c.lane_id == lane_id)).first()
    return rules.LanePolicy(**json.loads(row.policy)) if row else rules.LanePolicy()


def _date(value, what):
    if value in (None, ""):
        return None
    try:
        return value if isinstance(value, date) else date.fromisoformat(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a date YYYY-MM-DD, got {value!r}") from None


def register_vehicle(conn, lot_id: str, plate: str, kind: str, holder: str, valid_from=None, valid_until=None,
                     grace_days: int = 0, free_minutes: int = 0, fixed_space: bool = False, note: str | None = None
                     ) -> dict:
    """Register (or change) a plate's right at a lot: a resident's car, a monthly pass, a visitor
    registered by a host, staff, or a blacklisted plate."""
    _require(conn, lots, lots.c.lot_id, lot_id, "lot")
    plate = _plate(plate)
    if kind not in KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(KINDS)}")
    if not holder:
        raise InvalidInput("holder is required (person, unit or host)")
    start, end = _date(valid_from, "valid_from"), _date(valid_until, "valid_until")
    if kind in ("monthly", "visitor") and not (start and end):
        raise InvalidInput(f"a {kind} right needs valid_from and valid_until")
    if start and end and end < start:
        raise InvalidInput("valid_until must not be before valid_from")
    for name, value, top in (("grace_days", grace_days, 60), ("free_minutes", free_minutes, 7 * 1440)):
        if not isinstance(value, int) or not 0 <= value <= top:
            raise InvalidInput(f"{name} must be a whole number from 0 to {top}")
    values = dict(kind=kind, holder=holder, valid_from=start, valid_until=end, grace_days=grace_days,
                  free_minutes=free_minutes, fixed_space=bool(fixed_space), note=note, updated_at=_now())
    key = (vehicles.c.lot_id == lot_id) & (vehicles.c.plate == plate)
    if conn.execute(select(vehicles.c.id).where(key)).first():
        conn.execute(update(vehicles).where(key).values(**values))
    else:
        conn.execute(insert(vehicles).values(lot_id=lot_id, plate=plate, **values))
    _publish_items(conn, _require(conn, lots, lots.c.lot_id, lot_id, "lot")["site_id"], vehicle_items(conn, lot_id, plate))
    return _plain(conn.execute(select(vehicles).where(key)).mappings().first())


def list_vehicles(conn, lot_id: str, kind: str | None = None) -> list[dict]:
    query = select(vehicles).where(vehicles.c.lot_id == lot_id).order_by(vehicles.c.plate)
    if kind:
        query = query.where(vehicles.c.kind == kind)
    return [_plain(r) for r in conn.execute(query).mappings()]


def rights(conn, lot_id: str) -> dict[str, rules.VehicleRight]:
    return {r.plate: rules.VehicleRight(plate=r.plate, kind=r.kind, valid_from=r.valid_from, valid_until=r.valid_until,
                                        grace_days=r.grace_days, free_minutes=r.free_minutes,
                                        fixed_space=r.fixed_space, holder=r.holder)
            for r in conn.execute(select(vehicles).where(vehicles.c.lot_id == lot_id))}


def occupancy(conn, lot_id: str) -> dict:
    """Cars inside now, and how many of them take a shared space (fixed-space holders do not)."""
    fixed = select(vehicles.c.plate).where(vehicles.c.lot_id == lot_id, vehicles.c.fixed_space.is_(True))
    open_sessions = (sessions.c.lot_id == lot_id) & (sessions.c.status == "open")
    inside = conn.execute(select(func.count()).where(open_sessions)).scalar()
    shared = conn.execute(select(func.count()).where(open_sessions, sessions.c.plate.not_in(fixed))).scalar()
    return {"inside": inside, "shared_occupied": shared}


# -- what the lanes must know ----------------------------------------------------------------------

def lot_item(conn, lot_id: str) -> dict:
    row = _require(conn, lots, lots.c.lot_id, lot_id, "lot")
    return {"type": "lot", "lot_id": lot_id, "timezone": row["timezone"], "shared_capacity": row["shared_capacity"],
            "tariff_json": row["tariff"], "tolerate_province": row["tolerate_province"],
            "exit_window_minutes": row["exit_window_minutes"]}


def lane_items(conn, lot_id: str, lane_id: str | None = None) -> list[dict]:
    query = select(lanes).where(lanes.c.lot_id == lot_id)
    if lane_id:
        query = query.where(lanes.c.lane_id == lane_id)
    return [{"type": "lane", "lane_id": r.lane_id, "lot_id": r.lot_id, "direction": r.direction,
             "policy_json": r.policy} for r in conn.execute(query)]


def vehicle_items(conn, lot_id: str, plate: str | None = None) -> list[dict]:
    query = select(vehicles).where(vehicles.c.lot_id == lot_id)
    if plate:
        query = query.where(vehicles.c.plate == plate)
    return [{"type": "vehicle", "lot_id": r.lot_id, "plate": r.plate, "kind": r.kind, "holder": r.holder,
             "valid_from": r.valid_from.isoformat() if r.valid_from else "",
             "valid_until": r.valid_until.isoformat() if r.valid_until else "", "grace_days": r.grace_days,
             "free_minutes": r.free_minutes, "fixed_space": r.fixed_space} for r in conn.execute(query)]


def _publish_items(conn, site_id: str, items: list[dict]) -> None:
    """Items for the site's agents, sent after commit as `parking.site_data_changed` (the
    relay adds the revision: the outbox id, so a later change always has a higher one)."""
    for i in range(0, len(items), 2000):
        _queue(conn, site_id, "site_data_changed", items=items[i:i + 2000])


def record_snapshot(conn, site_id: str) -> int:
    """Everything the lanes of a site need, again (edgelink's projection is new or rebuilt)."""
    count = 0
    for (lot_id,) in conn.execute(select(lots.c.lot_id).where(lots.c.site_id == site_id)).all():
        items = [lot_item(conn, lot_id), *lane_items(conn, lot_id), *vehicle_items(conn, lot_id)]
        _publish_items(conn, site_id, items)
        count += len(items)
    return count


# -- sessions -----------------------------------------------------------------------------------------

def _queue(conn, site_id: str, event_type: str, **fields) -> None:
    outbox_queue(conn, outbox, site_id, event_type, **fields)


def _open_session(conn, lot_id: str, plate: str, tolerate_province: bool):
    query = select(sessions).where(sessions.c.lot_id == lot_id, sessions.c.status == "open")
    exact = conn.execute(query.where(sessions.c.plate == plate)).mappings().first()
    if exact or not tolerate_province:
        return exact
    candidates = [r for r in conn.execute(query).mappings() if rules.plates_match(plate, r["plate"], True)]
    return candidates[0] if len(candidates) == 1 else None


def record_entry(conn, lot_id: str, lane_id: str, plate: str, event_id: str, at: datetime,
                 offline: bool = False) -> dict:
    """A car entered (the barrier rose and it drove in). One open session per plate and lot: the
    same car read again while inside (a double read, a re-entry without exit) makes no second."""
    serialize_writers(conn, PARKING_LOCK)
    lot_row, _ = _lot_rules(conn, lot_id)
    plate = _plate(plate)
    if conn.execute(select(sessions.c.session_id).where(sessions.c.entry_event_id == event_id)).first():
        return session_by_event(conn, event_id)                   # redelivered: already recorded
    current = _open_session(conn, lot_id, plate, lot_row["tolerate_province"])
    if current:
        return {**_plain(current), "duplicate": True}
    right, _fuzzy = rules.find_right(plate, rights(conn, lot_id), lot_row["tolerate_province"])
    row = dict(session_id=str(uuid.uuid4()), lot_id=lot_id, site_id=lot_row["site_id"], plate=plate,
               kind=right.kind if right else "visitor", entry_event_id=event_id, entered_at=at, entry_lane=lane_id,
               paid_fen=0, currency=rules.Tariff().currency, status="open",
               flags="offline_entry" if offline else "")
    conn.execute(insert(sessions).values(**row))
    return {**_plain(row), "duplicate": False}


def session_by_event(conn, event_id: str) -> dict | None:
    row = conn.execute(select(sessions).where((sessions.c.entry_event_id == event_id)
                                              | (sessions.c.exit_event_id == event_id))).mappings().first()
    return _plain(row) if row else None


def quote(conn, session_id: str, now: datetime | None = None) -> dict:
    """What is due now for an open session: the fee for the stay so far, minus what was paid."""
    row = _require(conn, sessions, sessions.c.session_id, session_id, "session")
    lot_row, tariff = _lot_rules(conn, row["lot_id"])
    now = now or _now()
    decision = _due(conn, row, tariff, lot_row["timezone"], now)
    return {"session_id": session_id, "plate": row["plate"], "fee_fen": row["paid_fen"] + decision.fee_fen,
            "paid_fen": row["paid_fen"], "due_fen": decision.fee_fen, "reason": decision.reason,
            "currency": row["currency"], "at": now.isoformat()}


def _due(conn, row, tariff: rules.Tariff, tz: str, at: datetime, lane_id: str | None = None) -> rules.ExitDecision:
    """What the session owes at `at`, as the exit lane decides it (one pricing rule for the
    cashier's quote, the exit and billing: services.parking.rules.exit_decision)."""
    right, _ = rules.find_right(row["plate"], rights(conn, row["lot_id"]), False)
    policy = _lane_policy(conn, lane_id) if lane_id else rules.LanePolicy()
    return rules.exit_decision(right, row["entered_at"], at, row["paid_fen"], row.get("paid_until"), tariff, tz,
                               True, policy, 1.0, at.astimezone(ZoneInfo(tz)).date())


def record_exit(conn, lot_id: str, lane_id: str, plate: str, event_id: str, at: datetime,
                offline: bool = False) -> dict:
    """A car left: close its session with the fee, and tell billing (`parking.session_closed`)."""
    serialize_writers(conn, PARKING_LOCK)
    lot_row, tariff = _lot_rules(conn, lot_id)
    plate = _plate(plate)
    done = conn.execute(select(sessions).where(sessions.c.exit_event_id == event_id)).mappings().first()
    if done:
        return _plain(done)                                       # redelivered: already closed
    row = _open_session(conn, lot_id, plate, lot_row["tolerate_province"])
    flags = set(filter(None, (row["flags"] if row else "").split(",")))
    if offline:
        flags.add("offline_exit")
    if row is None:
        row = dict(session_id=str(uuid.uuid4()), lot_id=lot_id, site_id=lot_row["site_id"], plate=plate,
                   kind="visitor", entry_event_id=None, entered_at=None, entry_lane=None, paid_fen=0,
                   currency=tariff.currency, status="open", flags="", fee_fen=None, paid_until=None)
        conn.execute(insert(sessions).values(**row))
        flags.add("no_entry_record")
    if row["entered_at"] is not None and rules.flag_long_stay(row["entered_at"], at, LONG_STAY_DAYS):
        flags.add("long_stay")
    due = _due(conn, row, tariff, lot_row["timezone"], at, lane_id).fee_fen
    fee = row["paid_fen"] + due
    values = dict(exit_event_id=event_id, left_at=at, exit_lane=lane_id, fee_fen=fee, status="closed",
                  flags=",".join(sorted(flags)))
    conn.execute(update(sessions).where(sessions.c.session_id == row["session_id"]).values(**values))
    closed = {**_plain({**row, **values})}
    closed["due_fen"] = due
    # billing charges a registered vehicle's fee to its holder (a unit, or a visitor's host)
    holder = conn.execute(select(vehicles.c.holder).where(vehicles.c.lot_id == lot_id, vehicles.c.plate == row["plate"])
                          ).scalar()
    _queue(conn, lot_row["site_id"], "session_closed", lot_id=lot_id, session_id=row["session_id"], plate=plate,
           holder=holder, kind=row["kind"], entered_at=closed["entered_at"], left_at=closed["left_at"], fee_fen=fee,
           paid_fen=row["paid_fen"], due_fen=closed["due_fen"], currency=row["currency"], flags=closed["flags"])
    return closed


def record_exit_waiting(conn, lot_id: str, lane_id: str, plate: str, event_id: str, at: datetime,
                        fee_fen: int) -> dict | None:
    """A car waits at an exit for its fee: tell the cashiers (`parking.payment_awaited`), once per
    stay however often the camera reads it again. A car with no entry record gets its stay now."""
    serialize_writers(conn, PARKING_LOCK)
    lot_row, tariff = _lot_rules(conn, lot_id)
    plate = _plate(plate)
    row = _open_session(conn, lot_id, plate, lot_row["tolerate_province"])
    if row is None:
        row = dict(session_id=str(uuid.uuid4()), lot_id=lot_id, site_id=lot_row["site_id"], plate=plate,
                   kind="visitor", entry_event_id=None, entered_at=None, entry_lane=None, paid_fen=0,
                   currency=tariff.currency, status="open", flags="no_entry_record", fee_fen=None, paid_until=None)
        conn.execute(insert(sessions).values(**row))
    flags = set(filter(None, row["flags"].split(",")))
    if "awaiting_payment" in flags:
        return None
    conn.execute(update(sessions).where(sessions.c.session_id == row["session_id"]).values(
        flags=",".join(sorted(flags | {"awaiting_payment"}))))
    # the edge event's id is the event's id: a redelivered batch is the same fact to consumers
    _queue(conn, lot_row["site_id"], "payment_awaited", event_id=event_id, lot_id=lot_id, lane_id=lane_id,
           session_id=row["session_id"], plate=plate, due_fen=int(fee_fen), currency=row["currency"],
           waiting_since=at.isoformat())
    return {"session_id": row["session_id"], "due_fen": int(fee_fen)}


def record_payment(conn, session_id: str, payment_id: str, amount_fen: int, method: str, recorded_by: str) -> dict:
    """A payment for a session, once: the same payment_id again (a retry) changes nothing.
    An online payment opens an exit window of the lot's exit_window_minutes."""
    serialize_writers(conn, PARKING_LOCK)
    if not isinstance(payment_id, str) or not 1 <= len(payment_id) <= 64:
        raise InvalidInput("payment_id (the idempotency key) must be 1-64 characters")
    if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
        raise InvalidInput("amount_fen must be a whole number of fen above 0")
    if method not in PAYMENT_METHODS:
        raise InvalidInput(f"method must be one of {', '.join(PAYMENT_METHODS)}")
    if not recorded_by:
        raise InvalidInput("recorded_by is required")
    seen = conn.execute(select(payments).where(payments.c.payment_id == payment_id)).mappings().first()
    if seen:
        if seen["session_id"] != session_id or seen["amount_fen"] != amount_fen:
            raise InvalidInput(f"payment {payment_id!r} was already recorded for another session or amount")
        return {**session(conn, session_id), "duplicate_payment": True}
    row = _require(conn, sessions, sessions.c.session_id, session_id, "session")
    if row["status"] != "open":
        raise InvalidInput(f"session {session_id} is closed; record a late payment with billing")
    lot_row, _ = _lot_rules(conn, row["lot_id"])
    now = _now()
    conn.execute(insert(payments).values(payment_id=payment_id, session_id=session_id, amount_fen=amount_fen,
                                         currency=row["currency"], method=method, recorded_by=recorded_by,
                                         recorded_at=now))
    paid_until = now + timedelta(minutes=lot_row["exit_window_minutes"])
    conn.execute(update(sessions).where(sessions.c.session_id == session_id).values(
        paid_fen=sessions.c.paid_fen + amount_fen, paid_until=paid_until))
    _queue(conn, lot_row["site_id"], "exit_cleared", lot_id=row["lot_id"], session_id=session_id,
           plate=row["plate"], paid_until=paid_until.isoformat(), paid_fen=row["paid_fen"] + amount_fen,
           method=method)
    return {**session(conn, session_id), "duplicate_payment": False}


def session(conn, session_id: str) -> dict:
    row = _require(conn, sessions, sessions.c.session_id, session_id, "session")
    paid = [_plain(p) for p in conn.execute(select(payments).where(payments.c.session_id == session_id)
                                            .order_by(payments.c.recorded_at)).mappings()]
    return {**_plain(row), "payments": paid}


def list_sessions(conn, lot_id: str, status: str | None = None, plate: str | None = None, limit: int = 100) -> list:
    query = select(sessions).where(sessions.c.lot_id == lot_id).order_by(sessions.c.entered_at.desc()).limit(limit)
    if status:
        query = query.where(sessions.c.status == status)
    if plate:
        query = query.where(sessions.c.plate == _plate(plate))
    rows = [_plain(r) for r in conn.execute(query).mappings()]
    now = _now()
    for r in rows:    # open for days: flagged now, not only when it finally leaves
        if r["status"] == "open" and r["entered_at"] and rules.flag_long_stay(
                datetime.fromisoformat(r["entered_at"]), now, LONG_STAY_DAYS):
            r["flags"] = ",".join(sorted(set(filter(None, r["flags"].split(","))) | {"long_stay"}))
    return rows


# -- low-confidence reads -----------------------------------------------------------------------------

def queue_read(conn, lot_id: str, lane_id: str, event_id: str, plate: str, confidence: float, crop_jpeg: bytes | None,
               at: datetime) -> None:
    if conn.execute(select(read_queue.c.read_id).where(read_queue.c.read_id == event_id)).first():
        return
    conn.execute(insert(read_queue).values(read_id=event_id, lot_id=lot_id, lane_id=lane_id, plate_read=plate[:16],
                                           confidence=int(round(confidence * 1000)), crop_jpeg=crop_jpeg, read_at=at,
                                           status="pending"))


def pending_reads(conn, lot_id: str) -> list[dict]:
    rows = conn.execute(select(read_queue).where(read_queue.c.lot_id == lot_id, read_queue.c.status == "pending")
                        .order_by(read_queue.c.read_at)).mappings().all()
    return [{**{k: v for k, v in _plain(r).items() if k != "crop_jpeg"}, "confidence": r["confidence"] / 1000,
             "has_crop": r["crop_jpeg"] is not None} for r in rows]


def read_crop(conn, read_id: str) -> bytes:
    row = _require(conn, read_queue, read_queue.c.read_id, read_id, "read")
    if row["crop_jpeg"] is None:
        raise NotFound(f"read {read_id!r} has no crop image")
    return bytes(row["crop_jpeg"])


def decide_read(conn, read_id: str, operator: str, plate: str | None = None) -> dict:
    """An operator confirms what the plate says (maybe corrected), or rejects the read (plate None)."""
    row = _require(conn, read_queue, read_queue.c.read_id, read_id, "read")
    if row["status"] != "pending":
        raise InvalidInput(f"read {read_id} was already {row['status']} by {row['operator']}")
    if not operator:
        raise InvalidInput("operator is required")
    values = dict(status="confirmed" if plate else "rejected", confirmed_plate=_plate(plate) if plate else None,
                  operator=operator, decided_at=_now())
    conn.execute(update(read_queue).where(read_queue.c.read_id == read_id).values(**values))
    if plate:
        lot_row, _ = _lot_rules(conn, row["lot_id"])
        _queue(conn, lot_row["site_id"], "read_confirmed", lot_id=row["lot_id"], lane_id=row["lane_id"],
               read_id=read_id, plate=values["confirmed_plate"], operator=operator)
    return {"read_id": read_id, **_plain(values)}

