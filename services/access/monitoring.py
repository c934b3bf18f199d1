"""What the centre makes of events from the gates: alarms with their states, who is inside
each zone, visitor arrivals, remote opens carried out, emergency inputs.

`follow_up` runs in the transaction that stored the events, on the newly stored ones only, so
a redelivered batch raises nothing twice. It returns the bus events to send after commit.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy import case, func, insert, select, update

from services.access import passes, store
from services.access.store import InvalidInput, NotFound, _check_text
from services.access.tables import alarms, gates, people, presence, remote_opens, sites, visitors

RAISED, ACKNOWLEDGED, CLEARED = "raised", "acknowledged", "cleared"
OPEN_STATES = (RAISED, ACKNOWLEDGED)
# event kind -> alarm kind; every door_forced is its own alarm, the others are states that
# are open once per device until the device says they are over
ALARM_EVENTS = {"door_forced": "door_forced", "door_held_open": "door_held_open", "device_offline": "device_offline",
                "device_fault": "device_fault", "antipassback_violation": "antipassback_violation",
                "outbox_high_water": "outbox_high_water", "unlock_failed": "unlock_failed"}
ONE_AT_A_TIME = {"door_held_open", "device_offline", "device_fault", "outbox_high_water"}
CLEARING_EVENTS = {"door_closed": "door_held_open", "device_online": "device_offline",
                   "device_fault_cleared": "device_fault"}


def _now() -> datetime:
    return datetime.now(UTC)


def follow_up(conn, rows: list[dict]) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    for row in rows:
        attributes = json.loads(row["attributes"]) if isinstance(row["attributes"], str) else row["attributes"]
        kind = row["kind"]
        if kind in ALARM_EVENTS:
            alarm = _raise(conn, row, ALARM_EVENTS[kind], attributes)
            if alarm:
                out.append(("alarm_raised", alarm))
        if kind in CLEARING_EVENTS:
            out += [("alarm_cleared", a) for a in _auto_clear(conn, row, CLEARING_EVENTS[kind])]
        if kind == "access_granted":
            _move(conn, row, attributes)
            key = attributes.get("card_number", "")
            if key.startswith("visitor:"):
                arrival = passes.record_visitor_use(conn, row["site_id"], key.removeprefix("visitor:"))
                if arrival:
                    out.append(("visitor_arrived", {**arrival, "gate_id": row["gate_id"],
                                                    "arrived_at": row["device_time"].isoformat()}))
        if attributes.get("command_id") and kind in ("remote_open", "unlock_failed"):
            conn.execute(update(remote_opens).where(remote_opens.c.command_id == attributes["command_id"])
                         .values(status="executed" if kind == "remote_open" else "failed", done_at=row["received_at"]))
        if kind in ("emergency_input_on", "emergency_input_off"):
            _emergency_input(conn, row, kind == "emergency_input_on")
    return out


# -- alarms -------------------------------------------------------------------------------------

def _alarm_dict(row) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime) else json.loads(v) if k == "details" else v)
            for k, v in dict(row).items()}


def _raise(conn, row: dict, kind: str, attributes: dict) -> dict | None:
    if kind in ONE_AT_A_TIME and conn.execute(select(alarms.c.alarm_id).where(
            alarms.c.site_id == row["site_id"], alarms.c.device_id == row["device_id"], alarms.c.kind == kind,
            alarms.c.state.in_(OPEN_STATES))).first():
        return None
    values = dict(site_id=row["site_id"], gate_id=row["gate_id"], device_id=row["device_id"], kind=kind, state=RAISED,
                  raised_at=row["device_time"], source_event_id=row["event_id"],
                  details=json.dumps({**attributes, "offline": row["offline"]}, sort_keys=True))
    alarm_id = conn.execute(insert(alarms).values(**values).returning(alarms.c.alarm_id)).scalar()
    return _alarm_dict({"alarm_id": alarm_id, **values})


def _auto_clear(conn, row: dict, kind: str) -> list[dict]:
    open_alarms = conn.execute(select(alarms).where(
        alarms.c.site_id == row["site_id"], alarms.c.device_id == row["device_id"], alarms.c.kind == kind,
        alarms.c.state.in_(OPEN_STATES))).mappings().all()
    for alarm in open_alarms:
        conn.execute(update(alarms).where(alarms.c.alarm_id == alarm["alarm_id"])
                     .values(state=CLEARED, cleared_by="device", cleared_at=row["device_time"]))
    return [{**_alarm_dict(a), "state": CLEARED, "cleared_by": "device"} for a in open_alarms]


def list_alarms(conn, site_id: str, state: str | None = None, limit: int = 100) -> list[dict]:
    query = select(alarms).where(alarms.c.site_id == site_id).order_by(alarms.c.alarm_id.desc()).limit(limit)
    if state == "open":
        query = query.where(alarms.c.state.in_(OPEN_STATES))
    elif state:
        if state not in (RAISED, ACKNOWLEDGED, CLEARED):
            raise InvalidInput("state must be open, raised, acknowledged or cleared")
        query = query.where(alarms.c.state == state)
    return [_alarm_dict(r) for r in conn.execute(query).mappings()]


def acknowledge_alarm(conn, alarm_id: int, operator: str, clear: bool = False) -> dict:
    """An operator takes an alarm (acknowledge), or closes it (clear); both are recorded."""
    operator = _check_text(operator, "operator", 100)
    row = conn.execute(select(alarms).where(alarms.c.alarm_id == alarm_id)).mappings().first()
    if row is None:
        raise NotFound(f"unknown alarm {alarm_id!r}")
    if row["state"] == CLEARED:
        raise InvalidInput(f"alarm {alarm_id} is already cleared")
    now = _now()
    values = {"state": CLEARED, "cleared_by": operator, "cleared_at": now} if clear else {}
    if row["state"] == RAISED:
        values.update(acknowledged_by=operator, acknowledged_at=now)
        values.setdefault("state", ACKNOWLEDGED)
    if values:
        conn.execute(update(alarms).where(alarms.c.alarm_id == alarm_id).values(**values))
    store.audit(conn, row["site_id"], operator, "alarm_cleared" if clear else "alarm_acknowledged", str(alarm_id),
                kind=row["kind"], gate_id=row["gate_id"])
    return _alarm_dict(conn.execute(select(alarms).where(alarms.c.alarm_id == alarm_id)).mappings().first())


# -- presence -----------------------------------------------------------------------------------

def _move(conn, row: dict, attributes: dict) -> None:
    zone_id, direction, person_id = attributes.get("zone_id"), attributes.get("direction"), row.get("person_id")
    if not zone_id or direction not in ("in", "out") or not person_id:
        return
    key = (presence.c.zone_id == zone_id) & (presence.c.person_id == person_id)
    current = conn.execute(select(presence.c.since).where(key)).first()
    values = dict(inside=direction == "in", since=row["device_time"], gate_id=row["gate_id"])
    if current is None:
        conn.execute(insert(presence).values(zone_id=zone_id, person_id=person_id, site_id=row["site_id"], **values))
    elif current.since <= row["device_time"]:     # events from several agents may arrive out of order
        conn.execute(update(presence).where(key).values(**values))


def who_is_inside(conn, site_id: str, zone_id: str | None = None) -> list[dict]:
    """For evacuation: everyone whose last movement in a zone was an entry, with where and when."""
    query = (select(presence.c.zone_id, presence.c.person_id, presence.c.since, presence.c.gate_id,
                    func.coalesce(people.c.name, visitors.c.name).label("name"),
                    func.coalesce(people.c.kind, case((visitors.c.visitor_id.is_not(None), "visitor"))).label("kind"),
                    func.coalesce(people.c.phone, visitors.c.phone).label("phone"),
                    func.coalesce(people.c.unit_id, visitors.c.host_unit_id).label("unit_id"))
             .outerjoin(people, people.c.person_id == presence.c.person_id)
             .outerjoin(visitors, visitors.c.visitor_id == presence.c.person_id)
             .where(presence.c.site_id == site_id, presence.c.inside.is_(True))
             .order_by(presence.c.zone_id, presence.c.since))
    if zone_id:
        query = query.where(presence.c.zone_id == zone_id)
    return [{**dict(r), "since": r["since"].isoformat()} for r in conn.execute(query).mappings()]


# -- remote open, emergency input ---------------------------------------------------------------

def record_remote_open(conn, command_id: str, site_id: str, gate_id: str, requested_by: str, reason: str) -> None:
    conn.execute(insert(remote_opens).values(command_id=command_id, site_id=site_id, gate_id=gate_id,
                                             requested_by=requested_by, reason=reason, requested_at=_now(),
                                             status="sent"))
    store.audit(conn, site_id, requested_by, "remote_open", gate_id, reason=reason, command_id=command_id)


def remote_open_undelivered(conn, command_id: str) -> None:
    conn.execute(update(remote_opens).where(remote_opens.c.command_id == command_id, remote_opens.c.status == "sent")
                 .values(status="undelivered", done_at=_now()))


def remote_open(conn, command_id: str) -> dict:
    row = conn.execute(select(remote_opens).where(remote_opens.c.command_id == command_id)).mappings().first()
    if row is None:
        raise NotFound(f"unknown command {command_id!r}")
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(row).items()}


def _emergency_input(conn, row: dict, active: bool) -> None:
    site_row = conn.execute(select(sites.c.emergency, sites.c.emergency_by).where(
        sites.c.site_id == row["site_id"])).first()
    if site_row is None:
        return
    actor = f"input:{row['device_id']}"
    if active and not site_row.emergency:
        gate_name = conn.execute(select(gates.c.name).where(gates.c.gate_id == row["gate_id"])).scalar()
        store.set_emergency(conn, row["site_id"], True, actor, f"emergency input at {gate_name or row['gate_id']}")
    elif not active and site_row.emergency and (site_row.emergency_by or "") == actor:
        store.set_emergency(conn, row["site_id"], False, actor)
