"""The access service's storage: plain functions over an SQLAlchemy connection."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import and_, delete, func, insert, select, text, update

from gatehouse.db import insert_ignore, serialize_writers
from services.access import rules
from services.access.tables import (
    access_events,
    access_groups,
    cards,
    credential_outbox,
    gates,
    group_gates,
    group_members,
    people,
    sites,
)

CREDENTIALS_LOCK = 0x6761_7465  # advisory lock key for credential changes
SNAPSHOT_CHUNK = 2000


class InvalidInput(ValueError):
    """Bad input from a caller: the message says what and nothing was written."""


class NotFound(InvalidInput):
    pass


def _now() -> datetime:
    return datetime.now(UTC)


def _require(conn, table, key_col, key, what):
    row = conn.execute(select(table).where(key_col == key)).mappings().first()
    if row is None:
        raise NotFound(f"unknown {what} {key!r}")
    return row


def _check_id(value, what):
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise InvalidInput(f"{what} must be a non-empty string of at most 64 characters")
    return value.strip()


# -- sites, gates, people, groups, cards ------------------------------------------------------

def create_site(conn, site_id: str, name: str, timezone: str = "Asia/Shanghai") -> dict:
    site_id = _check_id(site_id, "site_id")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {timezone!r}") from None
    existing = conn.execute(select(sites).where(sites.c.site_id == site_id)).mappings().first()
    if existing:
        conn.execute(update(sites).where(sites.c.site_id == site_id).values(name=name, timezone=timezone))
    else:
        conn.execute(insert(sites).values(site_id=site_id, name=name, timezone=timezone))
    return {"site_id": site_id, "name": name, "timezone": timezone}


def add_gate(conn, site_id: str, gate_id: str, name: str) -> dict:
    _require(conn, sites, sites.c.site_id, site_id, "site")
    gate_id = _check_id(gate_id, "gate_id")
    row = conn.execute(select(gates).where(gates.c.gate_id == gate_id)).mappings().first()
    if row and row["site_id"] != site_id:
        raise InvalidInput(f"gate {gate_id!r} belongs to site {row['site_id']!r}")
    if row:
        conn.execute(update(gates).where(gates.c.gate_id == gate_id).values(name=name))
    else:
        conn.execute(insert(gates).values(gate_id=gate_id, site_id=site_id, name=name))
    return {"gate_id": gate_id, "site_id": site_id, "name": name}


def gate(conn, gate_id: str) -> dict | None:
    row = conn.execute(select(gates).where(gates.c.gate_id == gate_id)).mappings().first()
    return dict(row) if row else None


def add_person(conn, site_id: str, person_id: str, name: str, kind: str = "resident") -> dict:
    _require(conn, sites, sites.c.site_id, site_id, "site")
    person_id = _check_id(person_id, "person_id")
    if kind not in rules.PERSON_KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(rules.PERSON_KINDS)}")
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("name must not be empty")
    if conn.execute(select(people.c.person_id).where(people.c.person_id == person_id)).first():
        raise InvalidInput(f"person {person_id!r} already exists")
    conn.execute(insert(people).values(person_id=person_id, site_id=site_id, name=name.strip(), kind=kind,
                                       status=rules.ACTIVE, created_at=_now()))
    return {"person_id": person_id, "site_id": site_id, "name": name.strip(), "kind": kind, "status": rules.ACTIVE}


def set_person_status(conn, person_id: str, status: str) -> None:
    if status not in rules.PERSON_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(rules.PERSON_STATUSES)}")
    serialize_writers(conn, CREDENTIALS_LOCK)
    person = _require(conn, people, people.c.person_id, person_id, "person")
    conn.execute(update(people).where(people.c.person_id == person_id).values(status=status))
    _record_changes(conn, person["site_id"], person_ids=[person_id])


def create_group(conn, site_id: str, group_id: str, name: str, gate_ids: list[str]) -> dict:
    serialize_writers(conn, CREDENTIALS_LOCK)
    _require(conn, sites, sites.c.site_id, site_id, "site")
    group_id = _check_id(group_id, "group_id")
    known = {r.gate_id for r in conn.execute(select(gates.c.gate_id).where(gates.c.site_id == site_id))}
    unknown = sorted(set(gate_ids) - known)
    if unknown:
        raise NotFound(f"unknown gate(s) at site {site_id!r}: {', '.join(unknown)}")
    existing = conn.execute(select(access_groups).where(access_groups.c.group_id == group_id)).mappings().first()
    if existing and existing["site_id"] != site_id:
        raise InvalidInput(f"access group {group_id!r} belongs to site {existing['site_id']!r}")
    if existing:
        conn.execute(update(access_groups).where(access_groups.c.group_id == group_id).values(name=name))
        conn.execute(delete(group_gates).where(group_gates.c.group_id == group_id))
    else:
        conn.execute(insert(access_groups).values(group_id=group_id, site_id=site_id, name=name))
    if gate_ids:
        conn.execute(insert(group_gates), [{"group_id": group_id, "gate_id": g} for g in sorted(set(gate_ids))])
    members = [r.person_id for r in conn.execute(select(group_members.c.person_id)
                                                 .where(group_members.c.group_id == group_id))]
    _record_changes(conn, site_id, person_ids=members)
    return {"group_id": group_id, "site_id": site_id, "name": name, "gate_ids": sorted(set(gate_ids))}


def add_to_group(conn, group_id: str, person_id: str) -> None:
    serialize_writers(conn, CREDENTIALS_LOCK)
    group = _require(conn, access_groups, access_groups.c.group_id, group_id, "access group")
    person = _require(conn, people, people.c.person_id, person_id, "person")
    if person["site_id"] != group["site_id"]:
        raise InvalidInput("person and access group belong to different sites")
    conn.execute(insert_ignore(conn, group_members).values(group_id=group_id, person_id=person_id))
    _record_changes(conn, group["site_id"], person_ids=[person_id])


def _parse_time(value, what):
    if value in (None, ""):
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    except ValueError:
        raise InvalidInput(f"{what} must be an ISO 8601 time, got {value!r}") from None
    if not isinstance(parsed, datetime) or parsed.tzinfo is None:
        raise InvalidInput(f"{what} must include a UTC offset, e.g. 2026-01-01T00:00:00+08:00")
    return parsed


def issue_card(conn, person_id: str, card_number: str, valid_from=None, valid_until=None) -> dict:
    serialize_writers(conn, CREDENTIALS_LOCK)
    person = _require(conn, people, people.c.person_id, person_id, "person")
    card_number = _check_id(card_number, "card_number")
    start, end = _parse_time(valid_from, "valid_from"), _parse_time(valid_until, "valid_until")
    if start and end and end <= start:
        raise InvalidInput("valid_until must be after valid_from")
    site_id = person["site_id"]
    existing = conn.execute(select(cards).where(and_(cards.c.site_id == site_id,
                                                     cards.c.card_number == card_number))).mappings().first()
    if existing and existing["status"] == rules.ACTIVE and existing["person_id"] != person_id:
        raise InvalidInput(f"card {card_number!r} is already issued to another person")
    values = dict(person_id=person_id, status=rules.ACTIVE, valid_from=start, valid_until=end, updated_at=_now())
    if existing:
        conn.execute(update(cards).where(cards.c.id == existing["id"]).values(**values))
    else:
        conn.execute(insert(cards).values(site_id=site_id, card_number=card_number, **values))
    _record_changes(conn, site_id, card_numbers=[card_number])
    return {"card_number": card_number, "person_id": person_id, "site_id": site_id, "status": rules.ACTIVE}


def revoke_card(conn, site_id: str, card_number: str) -> None:
    serialize_writers(conn, CREDENTIALS_LOCK)
    row = conn.execute(select(cards).where(and_(cards.c.site_id == site_id,
                                                cards.c.card_number == card_number))).mappings().first()
    if row is None:
        raise NotFound(f"unknown card {card_number!r} at site {site_id!r}")
    conn.execute(update(cards).where(cards.c.id == row["id"]).values(status=rules.REVOKED, updated_at=_now()))
    _record_changes(conn, site_id, card_numbers=[card_number])


# -- what the gates must know -----------------------------------------------------------------

def credential_views(conn, site_id: str, person_ids=None, card_numbers=None) -> list[dict]:
    """The edge's view of each selected card: status, validity and the gates it opens."""
    query = (select(cards.c.card_number, cards.c.person_id, cards.c.status.label("card_status"),
                    cards.c.valid_from, cards.c.valid_until, people.c.name, people.c.status.label("person_status"))
             .join(people, people.c.person_id == cards.c.person_id)
             .where(cards.c.site_id == site_id))
    if person_ids is not None:
        query = query.where(cards.c.person_id.in_(person_ids))
    if card_numbers is not None:
        query = query.where(cards.c.card_number.in_(card_numbers))
    rows = conn.execute(query.order_by(cards.c.card_number)).mappings().all()
    if not rows:
        return []
    gate_rows = conn.execute(
        select(group_members.c.person_id, group_gates.c.gate_id)
        .join(group_gates, group_gates.c.group_id == group_members.c.group_id)
        .where(group_members.c.person_id.in_({r["person_id"] for r in rows}))
    ).all()
    gates_of: dict[str, set[str]] = {}
    for person_id, gate_id in gate_rows:
        gates_of.setdefault(person_id, set()).add(gate_id)
    return [{
        "card_number": r["card_number"], "person_id": r["person_id"], "person_name": r["name"],
        "status": rules.credential_status(r["card_status"], r["person_status"]),
        "valid_from": int(r["valid_from"].timestamp()) if r["valid_from"] else 0,
        "valid_until": int(r["valid_until"].timestamp()) if r["valid_until"] else 0,
        "gate_ids": sorted(gates_of.get(r["person_id"], ())),
    } for r in rows]


def _record_changes(conn, site_id, person_ids=None, card_numbers=None) -> None:
    views = credential_views(conn, site_id, person_ids=person_ids, card_numbers=card_numbers)
    for i in range(0, len(views), SNAPSHOT_CHUNK):
        conn.execute(insert(credential_outbox).values(
            site_id=site_id, published=False,
            payload=json.dumps({"site_id": site_id, "credentials": views[i:i + SNAPSHOT_CHUNK]})))


def record_snapshot(conn, site_id: str) -> int:
    """Queue every card of the site for the gates again (a new or rebuilt projection)."""
    serialize_writers(conn, CREDENTIALS_LOCK)
    _require(conn, sites, sites.c.site_id, site_id, "site")
    before = conn.execute(select(func.count()).select_from(credential_outbox)).scalar()
    _record_changes(conn, site_id)
    return conn.execute(select(func.count()).select_from(credential_outbox)).scalar() - before


def unpublished_changes(conn, limit: int = 100) -> list[tuple[int, dict]]:
    rows = conn.execute(select(credential_outbox.c.revision, credential_outbox.c.payload)
                        .where(credential_outbox.c.published.is_(False))
                        .order_by(credential_outbox.c.revision).limit(limit)).all()
    return [(rev, json.loads(payload)) for rev, payload in rows]


def mark_published(conn, revisions: list[int]) -> None:
    conn.execute(update(credential_outbox).where(credential_outbox.c.revision.in_(revisions))
                 .values(published=True))


# -- events from the edge ---------------------------------------------------------------------

def _event_row(batch: dict, event: dict) -> dict:
    attributes = event.get("attributes") or {}
    return {
        "event_id": event["event_id"], "site_id": batch["site_id"], "agent_id": batch["agent_id"],
        "device_id": event["device_id"], "gate_id": event.get("gate_id", ""), "kind": event["kind"],
        "device_seq": int(event["device_seq"]), "device_time": datetime.fromisoformat(event["device_time"]),
        "received_at": datetime.fromisoformat(batch["received_at"]), "offline": bool(event.get("offline")),
        "card_number": attributes.get("card_number"), "person_id": attributes.get("person_id"),
        "reason": attributes.get("reason"), "attributes": json.dumps(attributes, sort_keys=True),
    }


_EVENT_COLUMNS = {  # column -> PostgreSQL type, for the one-statement batch insert
    "event_id": "text", "site_id": "text", "agent_id": "text", "device_id": "text", "gate_id": "text",
    "kind": "text", "device_seq": "bigint", "device_time": "timestamptz", "received_at": "timestamptz",
    "offline": "boolean", "card_number": "text", "person_id": "text", "reason": "text", "attributes": "text",
}
_UTC = " AT TIME ZONE 'UTC'"   # timestamps are stored as naive UTC (gatehouse.db.UTCDateTime)
_PG_INSERT_EVENTS = text(
    f"INSERT INTO access_events ({', '.join(_EVENT_COLUMNS)}) "
    f"SELECT {', '.join(c + (_UTC if t == 'timestamptz' else '') for c, t in _EVENT_COLUMNS.items())} "
    "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) "
    f"AS x({', '.join(f'{c} {t}' for c, t in _EVENT_COLUMNS.items())}) "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id")


def store_edge_events(conn, batch: dict) -> list[dict]:
    """Store a batch idempotently (unique event_id); return the rows that were new."""
    rows = [_event_row(batch, e) for e in batch["events"]]
    if not rows:
        return []
    if conn.dialect.name == "postgresql":
        # One statement, one JSON parameter, expanded by the server: a multi-row VALUES of
        # 14 x 500 placeholders costs psycopg ~100 ms on the client to parse and adapt.
        payload = json.dumps(rows, default=lambda v: v.isoformat())
        new_ids = {r.event_id for r in conn.execute(_PG_INSERT_EVENTS, {"rows": payload})}
    else:
        stmt = insert_ignore(conn, access_events).returning(access_events.c.event_id)
        new_ids = {r.event_id for r in conn.execute(stmt, rows)}
    return [r for r in rows if r["event_id"] in new_ids]


def _event_dict(row, zones: dict[str, ZoneInfo]) -> dict:
    zone = zones.get(row["site_id"], UTC)
    return {
        "id": row["id"], "event_id": row["event_id"], "site_id": row["site_id"], "agent_id": row["agent_id"],
        "device_id": row["device_id"], "gate_id": row["gate_id"], "kind": row["kind"],
        "device_seq": row["device_seq"], "device_time": row["device_time"].isoformat(),
        "device_time_local": row["device_time"].astimezone(zone).isoformat(),
        "received_at": row["received_at"].isoformat(), "offline": row["offline"],
        "card_number": row["card_number"], "person_id": row["person_id"], "reason": row["reason"],
        "attributes": json.loads(row["attributes"]),
    }


def list_events(conn, site_id: str | None = None, limit: int = 50, before: int | None = None,
                kind: str | None = None) -> dict:
    """Newest first; `before` is the `next_before` of the previous page. Times are UTC, with
    `device_time_local` in the site's time zone beside them."""
    query = select(access_events).order_by(access_events.c.id.desc()).limit(limit + 1)
    if site_id:
        query = query.where(access_events.c.site_id == site_id)
    if kind:
        query = query.where(access_events.c.kind == kind)
    if before is not None:
        query = query.where(access_events.c.id < before)
    rows = conn.execute(query).mappings().all()
    zones = {site: ZoneInfo(tz) for site, tz in conn.execute(
        select(sites.c.site_id, sites.c.timezone).where(sites.c.site_id.in_({r["site_id"] for r in rows})))}
    page = [_event_dict(r, zones) for r in rows[:limit]]
    return {"events": page, "next_before": page[-1]["id"] if len(rows) > limit else None}


def count_events(conn, site_id: str | None = None) -> int:
    query = select(func.count()).select_from(access_events)
    if site_id:
        query = query.where(access_events.c.site_id == site_id)
    return conn.execute(query).scalar()
