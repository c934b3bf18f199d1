"""The access service's storage: plain functions over an SQLAlchemy connection."""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import and_, delete, func, insert, select, text, update

from gatehouse.bus import event_payload
from gatehouse.db import insert_ignore, serialize_writers
from gatehouse.records import InvalidInput, NotFound
from gatehouse.records import now as _now
from gatehouse.records import require as _require
from services.access import qr, rules
from services.access.tables import (
    access_events,
    access_groups,
    audit_log,
    cards,
    credential_outbox,
    gates,
    group_gates,
    group_members,
    holidays,
    people,
    signing_keys,
    sites,
    time_profiles,
    units,
    visitor_passes,
    visitors,
    zones,
)

CREDENTIALS_LOCK = 0x6761_7465  # advisory lock key for credential changes
SNAPSHOT_CHUNK = 2000


_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_id(value, what):
    if not isinstance(value, str) or not _ID.match(value.strip()):
        raise InvalidInput(f"{what} must be 1-64 letters, digits, '.', '_' or '-', got {value!r}")
    return value.strip()


def _check_text(value, what, limit=200, required=True):
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidInput(f"{what} must not be empty")
        return None
    if not isinstance(value, str) or len(value.strip()) > limit:
        raise InvalidInput(f"{what} must be text of at most {limit} characters")
    return value.strip()


def audit(conn, site_id: str, actor: str, action: str, target: str, **details) -> None:
    conn.execute(insert(audit_log).values(site_id=site_id, at=_now(), actor=actor, action=action, target=target,
                                          details=json.dumps(details, sort_keys=True, default=str)))


def list_audit(conn, site_id: str, limit: int = 100) -> list[dict]:
    rows = conn.execute(select(audit_log).where(audit_log.c.site_id == site_id)
                        .order_by(audit_log.c.id.desc()).limit(limit)).mappings().all()
    return [{**r, "at": r["at"].isoformat(), "details": json.loads(r["details"])} for r in rows]


# -- sites, gates, zones, units ---------------------------------------------------------------

def create_site(conn, site_id: str, name: str, timezone: str = "Asia/Shanghai") -> dict:
    site_id = _check_id(site_id, "site_id")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(f"unknown time zone {timezone!r}") from None
    serialize_writers(conn, CREDENTIALS_LOCK)
    existing = conn.execute(select(sites).where(sites.c.site_id == site_id)).mappings().first()
    if existing:
        conn.execute(update(sites).where(sites.c.site_id == site_id).values(name=name, timezone=timezone))
    else:
        conn.execute(insert(sites).values(site_id=site_id, name=name, timezone=timezone, emergency=False))
    ensure_signing_key(conn, site_id)      # also for sites made before QR codes existed
    _record(conn, site_id, [settings_item(conn, site_id)])
    return {"site_id": site_id, "name": name, "timezone": timezone}


def site(conn, site_id: str) -> dict:
    row = _require(conn, sites, sites.c.site_id, site_id, "site")
    return {"site_id": row["site_id"], "name": row["name"], "timezone": row["timezone"],
            "emergency": row["emergency"], "emergency_reason": row["emergency_reason"],
            "emergency_by": row["emergency_by"],
            "emergency_since": row["emergency_since"].isoformat() if row["emergency_since"] else None}


def set_zone(conn, site_id: str, zone_id: str, name: str, anti_passback: str = "none",
             timed_minutes: int = 0, reset_time: str = "00:00") -> dict:
    serialize_writers(conn, CREDENTIALS_LOCK)
    _require(conn, sites, sites.c.site_id, site_id, "site")
    zone_id = _check_id(zone_id, "zone_id")
    name = _check_text(name, "name")
    if anti_passback not in rules.ANTI_PASSBACK_MODES:
        raise InvalidInput(f"anti_passback must be one of {', '.join(rules.ANTI_PASSBACK_MODES)}")
    if not isinstance(timed_minutes, int) or not 0 <= timed_minutes <= 1440:
        raise InvalidInput("timed_minutes must be a whole number of minutes from 0 to 1440")
    if anti_passback == "timed" and timed_minutes == 0:
        raise InvalidInput("timed anti-passback needs timed_minutes > 0")
    try:
        reset_minute = rules.parse_periods([{"day": 0, "start": reset_time, "end": "24:00"}])[0].start
    except ValueError:
        raise InvalidInput(f"reset_time must be HH:MM before 24:00, got {reset_time!r}") from None
    values = dict(name=name, anti_passback=anti_passback, timed_minutes=timed_minutes, reset_minute=reset_minute)
    existing = conn.execute(select(zones.c.site_id).where(zones.c.zone_id == zone_id)).scalar()
    if existing and existing != site_id:
        raise InvalidInput(f"zone {zone_id!r} belongs to site {existing!r}")
    if existing:
        conn.execute(update(zones).where(zones.c.zone_id == zone_id).values(**values))
    else:
        conn.execute(insert(zones).values(zone_id=zone_id, site_id=site_id, **values))
    _record(conn, site_id, [zone_item(conn, zone_id)])
    return {"zone_id": zone_id, "site_id": site_id, **values, "reset_time": reset_time}


def add_gate(conn, site_id: str, gate_id: str, name: str, zone_id: str | None = None,
             direction: str | None = None) -> dict:
    serialize_writers(conn, CREDENTIALS_LOCK)
    _require(conn, sites, sites.c.site_id, site_id, "site")
    gate_id = _check_id(gate_id, "gate_id")
    if zone_id:
        zone = _require(conn, zones, zones.c.zone_id, zone_id, "zone")
        if zone["site_id"] != site_id:
            raise InvalidInput(f"zone {zone_id!r} belongs to site {zone['site_id']!r}")
        if direction not in (rules.ENTRY, rules.EXIT):
            raise InvalidInput("a gate in a zone needs direction 'in' or 'out'")
    elif direction:
        raise InvalidInput("direction needs a zone_id")
    row = conn.execute(select(gates).where(gates.c.gate_id == gate_id)).mappings().first()
    if row and row["site_id"] != site_id:
        raise InvalidInput(f"gate {gate_id!r} belongs to site {row['site_id']!r}")
    values = dict(name=name, zone_id=zone_id or None, direction=direction or None)
    if row:
        conn.execute(update(gates).where(gates.c.gate_id == gate_id).values(**values))
    else:
        conn.execute(insert(gates).values(gate_id=gate_id, site_id=site_id, **values))
    touched = {z for z in (zone_id, row["zone_id"] if row else None) if z}
    _record(conn, site_id, [zone_item(conn, z) for z in sorted(touched)])
    return {"gate_id": gate_id, "site_id": site_id, **values}


def gate(conn, gate_id: str) -> dict | None:
    row = conn.execute(select(gates).where(gates.c.gate_id == gate_id)).mappings().first()
    return dict(row) if row else None


def list_gates(conn, site_id: str) -> list[dict]:
    return [dict(r) for r in conn.execute(select(gates).where(gates.c.site_id == site_id)
                                          .order_by(gates.c.gate_id)).mappings()]


def add_unit(conn, site_id: str, unit_id: str, building: str, unit: str, room: str,
             floor_area_m2: str | None = None) -> dict:
    _require(conn, sites, sites.c.site_id, site_id, "site")
    unit_id = _check_id(unit_id, "unit_id")
    if conn.execute(select(units.c.unit_id).where(units.c.unit_id == unit_id)).first():
        raise InvalidInput(f"unit {unit_id!r} already exists")
    values = dict(unit_id=unit_id, site_id=site_id, building=_check_text(building, "building", 64),
                  unit=_check_text(unit, "unit", 64), room=_check_text(room, "room", 64),
                  floor_area_m2=floor_area_m2)
    conn.execute(insert(units).values(**values))
    return values


def list_units(conn, site_id: str) -> list[dict]:
    return [dict(r) for r in conn.execute(select(units).where(units.c.site_id == site_id)
                                          .order_by(units.c.unit_id)).mappings()]


# -- people -----------------------------------------------------------------------------------

def add_person(conn, site_id: str, person_id: str, name: str, kind: str = "resident", unit_id: str | None = None,
               role: str | None = None, phone: str | None = None) -> dict:
    _require(conn, sites, sites.c.site_id, site_id, "site")
    person_id = _check_id(person_id, "person_id")
    if kind not in rules.PERSON_KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(rules.PERSON_KINDS)}")
    name = _check_text(name, "name")
    if kind == "resident" and not unit_id:
        raise InvalidInput("a resident needs a unit_id (building-unit-room)")
    if unit_id:
        unit = _require(conn, units, units.c.unit_id, unit_id, "unit")
        if unit["site_id"] != site_id:
            raise InvalidInput(f"unit {unit_id!r} belongs to site {unit['site_id']!r}")
    if conn.execute(select(people.c.person_id).where(people.c.person_id == person_id)).first():
        raise InvalidInput(f"person {person_id!r} already exists")
    values = dict(person_id=person_id, site_id=site_id, name=name, kind=kind, status=rules.ACTIVE,
                  unit_id=unit_id or None, role=_check_text(role, "role", 64, required=False),
                  phone=_check_text(phone, "phone", 24, required=False))
    conn.execute(insert(people).values(created_at=_now(), **values))
    queue_people_changed(conn, site_id, [values])
    return values


def person(conn, person_id: str) -> dict:
    row = _require(conn, people, people.c.person_id, person_id, "person")
    groups = [g for (g,) in conn.execute(select(group_members.c.group_id).where(group_members.c.person_id == person_id))]
    card_rows = conn.execute(select(cards.c.card_number, cards.c.kind, cards.c.status)
                             .where(cards.c.person_id == person_id)).all()
    return {**{k: row[k] for k in ("person_id", "site_id", "name", "kind", "status", "role", "unit_id", "phone")},
            "groups": sorted(groups),
            "cards": [{"card_number": c if k == "card" else "(PIN)", "kind": k, "status": st} for c, k, st in card_rows]}


def list_people(conn, site_id: str, unit_id: str | None = None, limit: int = 200, after: str | None = None) -> dict:
    query = select(people).where(people.c.site_id == site_id).order_by(people.c.person_id).limit(limit + 1)
    if unit_id:
        query = query.where(people.c.unit_id == unit_id)
    if after:
        query = query.where(people.c.person_id > after)
    rows = conn.execute(query).mappings().all()
    page = [{k: r[k] for k in ("person_id", "name", "kind", "status", "role", "unit_id")} for r in rows[:limit]]
    return {"people": page, "next_after": page[-1]["person_id"] if len(rows) > limit else None}


def set_person_status(conn, person_id: str, status: str) -> None:
    if status not in (rules.ACTIVE, rules.SUSPENDED):
        raise InvalidInput("status must be active or suspended (use move-out for residents who leave)")
    serialize_writers(conn, CREDENTIALS_LOCK)
    row = _require(conn, people, people.c.person_id, person_id, "person")
    if row["status"] == rules.MOVED_OUT:
        raise InvalidInput(f"person {person_id!r} has moved out; register them again to give access")
    conn.execute(update(people).where(people.c.person_id == person_id).values(status=status))
    _record(conn, row["site_id"], credential_items(conn, row["site_id"], person_ids=[person_id]))
    queue_people_changed(conn, row["site_id"], [{**row, "status": status}])


def move_out(conn, person_id: str, actor: str) -> dict:
    """Everything a person holds stops at once: cards, PINs, QR codes, in one change."""
    serialize_writers(conn, CREDENTIALS_LOCK)
    row = _require(conn, people, people.c.person_id, person_id, "person")
    actor = _check_text(actor, "actor", 100)
    conn.execute(update(people).where(people.c.person_id == person_id).values(status=rules.MOVED_OUT))
    revoked = conn.execute(update(cards).where(cards.c.person_id == person_id, cards.c.status == rules.ACTIVE)
                           .values(status=rules.REVOKED, updated_at=_now())).rowcount
    conn.execute(delete(group_members).where(group_members.c.person_id == person_id))
    audit(conn, row["site_id"], actor, "move_out", person_id, credentials_revoked=revoked)
    _record(conn, row["site_id"], credential_items(conn, row["site_id"], person_ids=[person_id]))
    queue_people_changed(conn, row["site_id"], [{**row, "status": rules.MOVED_OUT}])
    return {"person_id": person_id, "status": rules.MOVED_OUT, "credentials_revoked": revoked}


# -- groups and schedules ---------------------------------------------------------------------

def set_time_profile(conn, site_id: str, profile_id: str, name: str, periods: list) -> dict:
    serialize_writers(conn, CREDENTIALS_LOCK)
    _require(conn, sites, sites.c.site_id, site_id, "site")
    profile_id = _check_id(profile_id, "profile_id")
    try:
        parsed = rules.parse_periods(periods)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    stored = json.dumps([[p.day, p.start, p.end] for p in parsed])
    existing = conn.execute(select(time_profiles.c.site_id).where(time_profiles.c.profile_id == profile_id)).scalar()
    if existing and existing != site_id:
        raise InvalidInput(f"time profile {profile_id!r} belongs to site {existing!r}")
    if existing:
        conn.execute(update(time_profiles).where(time_profiles.c.profile_id == profile_id)
                     .values(name=_check_text(name, "name"), periods=stored))
    else:
        conn.execute(insert(time_profiles).values(profile_id=profile_id, site_id=site_id,
                                                  name=_check_text(name, "name"), periods=stored))
    _record(conn, site_id, [profile_item(profile_id, stored)])
    return {"profile_id": profile_id, "site_id": site_id, "name": name, "periods": rules.format_periods(parsed)}


def list_time_profiles(conn, site_id: str) -> list[dict]:
    rows = conn.execute(select(time_profiles).where(time_profiles.c.site_id == site_id)).mappings().all()
    return [{"profile_id": r["profile_id"], "name": r["name"],
             "periods": rules.format_periods(rules.Period(*p) for p in json.loads(r["periods"]))} for r in rows]


def set_holiday(conn, site_id: str, day: str, name: str | None = None, remove: bool = False) -> dict:
    serialize_writers(conn, CREDENTIALS_LOCK)
    _require(conn, sites, sites.c.site_id, site_id, "site")
    try:
        day = rules.parse_holiday(day)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    conn.execute(delete(holidays).where(holidays.c.site_id == site_id, holidays.c.day == day))
    if not remove:
        conn.execute(insert(holidays).values(site_id=site_id, day=day, name=_check_text(name, "name")))
    _record(conn, site_id, [settings_item(conn, site_id)])
    return {"site_id": site_id, "day": day, "removed": remove}


def create_group(conn, site_id: str, group_id: str, name: str, gate_ids: list[str],
                 time_profile_id: str | None = None) -> dict:
    serialize_writers(conn, CREDENTIALS_LOCK)
    _require(conn, sites, sites.c.site_id, site_id, "site")
    group_id = _check_id(group_id, "group_id")
    known = {r.gate_id for r in conn.execute(select(gates.c.gate_id).where(gates.c.site_id == site_id))}
    unknown = sorted(set(gate_ids) - known)
    if unknown:
        raise NotFound(f"unknown gate(s) at site {site_id!r}: {', '.join(unknown)}")
    if time_profile_id:
        profile = _require(conn, time_profiles, time_profiles.c.profile_id, time_profile_id, "time profile")
        if profile["site_id"] != site_id:
            raise InvalidInput(f"time profile {time_profile_id!r} belongs to site {profile['site_id']!r}")
    existing = conn.execute(select(access_groups).where(access_groups.c.group_id == group_id)).mappings().first()
    if existing and existing["site_id"] != site_id:
        raise InvalidInput(f"access group {group_id!r} belongs to site {existing['site_id']!r}")
    values = dict(name=name, time_profile_id=time_profile_id or None)
    if existing:
        conn.execute(update(access_groups).where(access_groups.c.group_id == group_id).values(**values))
        conn.execute(delete(group_gates).where(group_gates.c.group_id == group_id))
    else:
        conn.execute(insert(access_groups).values(group_id=group_id, site_id=site_id, **values))
    if gate_ids:
        conn.execute(insert(group_gates), [{"group_id": group_id, "gate_id": g} for g in sorted(set(gate_ids))])
    # members' credentials name the group; only the group itself changes at the gates
    _record(conn, site_id, [group_item(conn, group_id)])
    return {"group_id": group_id, "site_id": site_id, "name": name, "gate_ids": sorted(set(gate_ids)),
            "time_profile_id": time_profile_id or None}


def list_groups(conn, site_id: str) -> list[dict]:
    rows = conn.execute(select(access_groups).where(access_groups.c.site_id == site_id)).mappings().all()
    return [{**dict(r), **{"gate_ids": group_item(conn, r["group_id"])["gate_ids"]}} for r in rows]


def add_to_group(conn, group_id: str, person_id: str, remove: bool = False) -> None:
    serialize_writers(conn, CREDENTIALS_LOCK)
    group = _require(conn, access_groups, access_groups.c.group_id, group_id, "access group")
    member = _require(conn, people, people.c.person_id, person_id, "person")
    if member["site_id"] != group["site_id"]:
        raise InvalidInput("person and access group belong to different sites")
    if remove:
        conn.execute(delete(group_members).where(group_members.c.group_id == group_id,
                                                 group_members.c.person_id == person_id))
    else:
        conn.execute(insert_ignore(conn, group_members).values(group_id=group_id, person_id=person_id))
    _record(conn, group["site_id"], credential_items(conn, group["site_id"], person_ids=[person_id]))


# -- cards and PINs ---------------------------------------------------------------------------

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


def issue_card(conn, person_id: str, card_number: str, valid_from=None, valid_until=None, kind: str = "card",
               record: bool = True) -> dict:
    serialize_writers(conn, CREDENTIALS_LOCK)
    holder = _require(conn, people, people.c.person_id, person_id, "person")
    if holder["status"] == rules.MOVED_OUT:
        raise InvalidInput(f"person {person_id!r} has moved out")
    site_id = holder["site_id"]
    if kind == "pin":
        if not isinstance(card_number, str) or not card_number.isdigit() or not 4 <= len(card_number) <= 8:
            raise InvalidInput("pin must be 4 to 8 digits")
        key = rules.pin_key(site_id, card_number)
    elif kind == "card":
        if not isinstance(card_number, str) or not rules.CARD_NUMBER.fullmatch(card_number.strip()):
            raise InvalidInput(f"card_number must be 4 to 32 hex digits, got {card_number!r}")
        key = rules.card_key(card_number)
    else:
        raise InvalidInput("kind must be card or pin")
    start, end = _parse_time(valid_from, "valid_from"), _parse_time(valid_until, "valid_until")
    if start and end and end <= start:
        raise InvalidInput("valid_until must be after valid_from")
    existing = conn.execute(select(cards).where(and_(cards.c.site_id == site_id,
                                                     cards.c.card_number == key))).mappings().first()
    if existing and existing["status"] == rules.ACTIVE and existing["person_id"] != person_id:
        raise InvalidInput("this PIN is taken; choose another" if kind == "pin"
                           else f"card {key!r} is already issued to another person")
    values = dict(person_id=person_id, status=rules.ACTIVE, valid_from=start, valid_until=end, updated_at=_now(),
                  kind=kind, replaced_by=None)
    if existing:
        conn.execute(update(cards).where(cards.c.id == existing["id"]).values(**values))
    else:
        conn.execute(insert(cards).values(site_id=site_id, card_number=key, **values))
    if record:
        _record(conn, site_id, credential_items(conn, site_id, card_numbers=[key]))
    shown = key if kind == "card" else "(PIN)"
    return {"card_number": shown, "person_id": person_id, "site_id": site_id, "status": rules.ACTIVE, "kind": kind}


def revoke_card(conn, site_id: str, card_number: str, status: str = rules.REVOKED) -> None:
    serialize_writers(conn, CREDENTIALS_LOCK)
    card_number = card_number if card_number.startswith("pin:") else rules.card_key(card_number)
    row = conn.execute(select(cards).where(and_(cards.c.site_id == site_id,
                                                cards.c.card_number == card_number))).mappings().first()
    if row is None:
        raise NotFound(f"unknown card {card_number!r} at site {site_id!r}")
    conn.execute(update(cards).where(cards.c.id == row["id"]).values(status=status, updated_at=_now()))
    _record(conn, site_id, credential_items(conn, site_id, card_numbers=[card_number]))


def replace_card(conn, site_id: str, old_card: str, new_card: str, actor: str) -> dict:
    """A lost card: the old one stops, the new one gets the same holder and validity."""
    serialize_writers(conn, CREDENTIALS_LOCK)
    old_card = rules.card_key(old_card)
    old = conn.execute(select(cards).where(and_(cards.c.site_id == site_id, cards.c.card_number == old_card,
                                                cards.c.kind == "card"))).mappings().first()
    if old is None:
        raise NotFound(f"unknown card {old_card!r} at site {site_id!r}")
    result = issue_card(conn, old["person_id"], new_card, old["valid_from"], old["valid_until"], record=False)
    new_card = result["card_number"]
    conn.execute(update(cards).where(cards.c.id == old["id"]).values(status="lost", replaced_by=new_card,
                                                                    updated_at=_now()))
    audit(conn, site_id, _check_text(actor, "actor", 100), "card_replaced", old_card, new_card=new_card,
          person_id=old["person_id"])
    # one change for the gates: the new card never works while the lost one still does
    _record(conn, site_id, credential_items(conn, site_id, card_numbers=[old_card, new_card]))
    return {**result, "replaces": old_card}


# -- emergency ----------------------------------------------------------------------------------

def set_emergency(conn, site_id: str, active: bool, actor: str, reason: str = "") -> dict:
    serialize_writers(conn, CREDENTIALS_LOCK)
    row = _require(conn, sites, sites.c.site_id, site_id, "site")
    actor = _check_text(actor, "actor", 100)
    if active and not reason:
        raise InvalidInput("reason is required to start emergency mode")
    if bool(row["emergency"]) == bool(active):
        return site(conn, site_id)
    conn.execute(update(sites).where(sites.c.site_id == site_id).values(
        emergency=bool(active), emergency_reason=reason or None if active else None,
        emergency_since=_now() if active else None, emergency_by=actor if active else None))
    audit(conn, site_id, actor, "emergency_started" if active else "emergency_cleared", site_id, reason=reason)
    _record(conn, site_id, [settings_item(conn, site_id)])
    return site(conn, site_id)


# -- signing keys ---------------------------------------------------------------------------------

def ensure_signing_key(conn, site_id: str) -> dict:
    """The site's current QR signing key, made on first use."""
    row = conn.execute(select(signing_keys).where(signing_keys.c.site_id == site_id,
                                                  signing_keys.c.retired_at.is_(None))
                       .order_by(signing_keys.c.created_at.desc())).mappings().first()
    if row is None:
        key_id, private, public = qr.new_signing_key()
        row = dict(key_id=key_id, site_id=site_id, private_key=private, public_key=public, created_at=_now())
        conn.execute(insert(signing_keys).values(**row))
    return dict(row)


def rotate_signing_key(conn, site_id: str, actor: str, retire_old: bool = False) -> dict:
    """A new key signs from now on; with retire_old, codes signed by older keys stop working."""
    serialize_writers(conn, CREDENTIALS_LOCK)
    _require(conn, sites, sites.c.site_id, site_id, "site")
    if retire_old:
        conn.execute(update(signing_keys).where(signing_keys.c.site_id == site_id,
                                                signing_keys.c.retired_at.is_(None)).values(retired_at=_now()))
    key_id, private, public = qr.new_signing_key()
    conn.execute(insert(signing_keys).values(key_id=key_id, site_id=site_id, private_key=private, public_key=public,
                                             created_at=_now() + timedelta(microseconds=1)))
    audit(conn, site_id, _check_text(actor, "actor", 100), "signing_key_rotated", key_id, retire_old=retire_old)
    _record(conn, site_id, [settings_item(conn, site_id)])
    return {"key_id": key_id, "site_id": site_id}


# -- what the gates must know -------------------------------------------------------------------

def _unix(value) -> int:
    return int(value.timestamp()) if value else 0


def credential_items(conn, site_id: str, person_ids=None, card_numbers=None) -> list[dict]:
    """The gates' view of the selected cards and PINs, and of the selected people (for their QR
    codes). person_ids=None and card_numbers=None: everything at the site."""
    everything = person_ids is None and card_numbers is None
    card_query = (select(cards.c.card_number, cards.c.person_id, cards.c.status, cards.c.valid_from,
                         cards.c.valid_until).where(cards.c.site_id == site_id))
    if person_ids is not None:
        card_query = card_query.where(cards.c.person_id.in_(person_ids))
    if card_numbers is not None:
        card_query = card_query.where(cards.c.card_number.in_(card_numbers))
    card_rows = conn.execute(card_query.order_by(cards.c.card_number)).all()
    wanted_people = set(person_ids or ()) | {r.person_id for r in card_rows}
    person_query = select(people.c.person_id, people.c.name, people.c.kind, people.c.status).where(
        people.c.site_id == site_id)
    if not everything:
        if not wanted_people:
            return []
        person_query = person_query.where(people.c.person_id.in_(wanted_people))
    holders = {r.person_id: r for r in conn.execute(person_query)}
    member_query = select(group_members.c.person_id, group_members.c.group_id).join(
        access_groups, access_groups.c.group_id == group_members.c.group_id).where(access_groups.c.site_id == site_id)
    if not everything:
        member_query = member_query.where(group_members.c.person_id.in_(holders))
    groups_of: dict[str, list[str]] = {}
    for person_id, group_id in conn.execute(member_query):
        groups_of.setdefault(person_id, []).append(group_id)

    def item(key, holder, status, valid_from=0, valid_until=0):
        return {"type": "credential", "card_number": key, "person_id": holder.person_id,
                "person_name": holder.name, "status": status, "valid_from": valid_from, "valid_until": valid_until,
                "gate_ids": [], "group_ids": sorted(groups_of.get(holder.person_id, ())),
                "person_kind": holder.kind, "max_uses": 0, "uses": 0}

    out = [item(r.card_number, holders[r.person_id], rules.credential_status(r.status, holders[r.person_id].status),
                _unix(r.valid_from), _unix(r.valid_until)) for r in card_rows]
    if everything:
        selected = holders
    else:
        selected = {p: holders[p] for p in (person_ids or ()) if p in holders}
    out += [item(f"person:{p}", h, rules.credential_status(rules.ACTIVE, h.status)) for p, h in sorted(selected.items())]
    return out


def visitor_items(conn, site_id: str, pass_ids=None) -> list[dict]:
    query = (select(visitor_passes, visitors.c.name).join(visitors, visitors.c.visitor_id == visitor_passes.c.visitor_id)
             .where(visitor_passes.c.site_id == site_id))
    if pass_ids is not None:
        query = query.where(visitor_passes.c.pass_id.in_(pass_ids))
    return [{"type": "credential", "card_number": f"visitor:{r['pass_id']}", "person_id": r["visitor_id"],
             "person_name": r["name"], "status": r["status"], "valid_from": _unix(r["valid_from"]),
             "valid_until": _unix(r["valid_until"]), "gate_ids": json.loads(r["gate_ids"]), "group_ids": [],
             "person_kind": rules.VISITOR, "max_uses": r["max_uses"], "uses": r["uses"]}
            for r in conn.execute(query).mappings()]


def group_item(conn, group_id: str) -> dict:
    row = conn.execute(select(access_groups).where(access_groups.c.group_id == group_id)).mappings().first()
    gate_ids = sorted(g for (g,) in conn.execute(select(group_gates.c.gate_id).where(group_gates.c.group_id == group_id)))
    return {"type": "group", "group_id": group_id, "gate_ids": gate_ids, "time_profile_id": row["time_profile_id"]}


def profile_item(profile_id: str, stored_periods: str) -> dict:
    return {"type": "time_profile", "profile_id": profile_id,
            "periods": [{"day": d, "start": s, "end": e} for d, s, e in json.loads(stored_periods)]}


def zone_item(conn, zone_id: str) -> dict:
    row = conn.execute(select(zones).where(zones.c.zone_id == zone_id)).mappings().first()
    members = conn.execute(select(gates.c.gate_id, gates.c.direction).where(gates.c.zone_id == zone_id)).all()
    return {"type": "zone", "zone_id": zone_id, "anti_passback": row["anti_passback"],
            "timed_minutes": row["timed_minutes"], "reset_minute": row["reset_minute"],
            "entry_gate_ids": sorted(g for g, d in members if d == rules.ENTRY),
            "exit_gate_ids": sorted(g for g, d in members if d == rules.EXIT)}


def settings_item(conn, site_id: str) -> dict:
    row = conn.execute(select(sites).where(sites.c.site_id == site_id)).mappings().first()
    days = sorted(d for (d,) in conn.execute(select(holidays.c.day).where(holidays.c.site_id == site_id)))
    keys = conn.execute(select(signing_keys.c.key_id, signing_keys.c.public_key)
                        .where(signing_keys.c.site_id == site_id, signing_keys.c.retired_at.is_(None))).all()
    return {"type": "settings", "timezone": row["timezone"], "holidays": days, "emergency": bool(row["emergency"]),
            "emergency_reason": row["emergency_reason"] or "",
            "qr_keys": [{"key_id": k, "public_key": bytes(p).hex()} for k, p in keys]}


def site_items(conn, site_id: str) -> list[dict]:
    """Everything the gates of a site need, settings and rules first."""
    out = [settings_item(conn, site_id)]
    out += [profile_item(r.profile_id, r.periods) for r in conn.execute(
        select(time_profiles.c.profile_id, time_profiles.c.periods).where(time_profiles.c.site_id == site_id))]
    out += [group_item(conn, g) for (g,) in conn.execute(
        select(access_groups.c.group_id).where(access_groups.c.site_id == site_id))]
    out += [zone_item(conn, z) for (z,) in conn.execute(select(zones.c.zone_id).where(zones.c.site_id == site_id))]
    return out + credential_items(conn, site_id) + visitor_items(conn, site_id)


def _record(conn, site_id, items) -> None:
    """Queue items for the gates, in the caller's transaction (the relay publishes them)."""
    for i in range(0, len(items), SNAPSHOT_CHUNK):
        conn.execute(insert(credential_outbox).values(
            site_id=site_id, published=False, payload=json.dumps({"site_id": site_id, "items": items[i:i + SNAPSHOT_CHUNK]})))


def queue_event(conn, site_id: str, event_type: str, fields: dict) -> None:
    """An event to publish once this transaction commits (by the same relay, in order)."""
    payload = event_payload(site_id, **{k: v for k, v in fields.items() if k != "site_id"})
    conn.execute(insert(credential_outbox).values(site_id=site_id, published=False,
                                                  payload=json.dumps({"event": event_type, "payload": payload})))


PEOPLE_EVENT_CHUNK = 500


PERSON_EVENT_FIELDS = ("person_id", "name", "kind", "unit_id", "role", "phone", "status")


def queue_people_changed(conn, site_id: str, changed: list[dict]) -> None:
    """`access.people_changed` for these people (each a person's row, or its values, as it is
    now), in chunks, after this transaction commits: notify keeps its recipients from it."""
    rows = [{k: p.get(k) for k in PERSON_EVENT_FIELDS} for p in changed]
    for i in range(0, len(rows), PEOPLE_EVENT_CHUNK):
        queue_event(conn, site_id, "people_changed", {"people": rows[i:i + PEOPLE_EVENT_CHUNK]})


def record_snapshot(conn, site_id: str) -> int:
    """Queue everything of the site for the gates again (a new or rebuilt projection)."""
    serialize_writers(conn, CREDENTIALS_LOCK)
    _require(conn, sites, sites.c.site_id, site_id, "site")
    before = conn.execute(select(func.count()).select_from(credential_outbox)).scalar()
    _record(conn, site_id, site_items(conn, site_id))
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
    attributes = dict(event.get("attributes") or {})
    if "crop_jpeg_b64" in attributes:       # a plate crop is parking's to keep; the log notes its size
        attributes["crop_jpeg_b64"] = f"({len(attributes['crop_jpeg_b64'])} characters, kept by parking)"
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
