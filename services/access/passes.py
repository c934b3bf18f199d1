"""QR codes for people and visitors: issued and signed here, verified at the gates offline.

A person's QR code is short-lived (minutes) and names the person; the gate checks the
signature, the code's window, and the person's synced status and groups. A visitor pass
carries its own gates, window and use limit, so a gate can admit a visitor whose pass it has
not synced yet; revoking the pass reaches the gates through the sync like any credential.
"""
from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select, update

from gatehouse.db import serialize_writers
from services.access import qr, rules
from services.access.store import (
    CREDENTIALS_LOCK,
    InvalidInput,
    NotFound,
    _check_text,
    _parse_time,
    _record,
    _require,
    audit,
    ensure_signing_key,
    visitor_items,
)
from services.access.tables import gates, people, units, visitor_passes, visitors

MAX_PERSON_QR_MINUTES = 24 * 60
MAX_VISIT_DAYS = 31


def _sign(conn, site_id: str, claims: dict) -> str:
    key = ensure_signing_key(conn, site_id)
    return qr.sign(claims, key["key_id"], bytes(key["private_key"]))


def person_qr(conn, person_id: str, minutes: int = 5) -> dict:
    """A code that opens what the person's cards open, for `minutes` from now."""
    row = _require(conn, people, people.c.person_id, person_id, "person")
    if not isinstance(minutes, int) or not 1 <= minutes <= MAX_PERSON_QR_MINUTES:
        raise InvalidInput(f"minutes must be a whole number from 1 to {MAX_PERSON_QR_MINUTES}")
    if row["status"] != rules.ACTIVE:
        raise InvalidInput(f"person {person_id!r} is {row['status']}")
    now = datetime.now(UTC)
    until = now + timedelta(minutes=minutes)
    code = _sign(conn, row["site_id"], {"id": secrets.token_hex(6), "site": row["site_id"], "sub": f"person:{person_id}",
                                        "from": int(now.timestamp()) - 60, "until": int(until.timestamp())})
    return {"person_id": person_id, "code": code, "valid_until": until.isoformat()}


def mask_id_number(id_number: str | None) -> str | None:
    """Keep the first 3 and last 4 characters of an ID number; the rest is never stored."""
    if not id_number:
        return None
    value = id_number.strip().upper()
    if not value.isalnum() or not 6 <= len(value) <= 32:
        raise InvalidInput("id_number must be 6 to 32 letters or digits")
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


def register_visitor(conn, site_id: str, name: str, purpose: str, registered_by: str, host_unit_id: str,
                     expected_from: str, expected_until: str, phone: str | None = None,
                     host_person_id: str | None = None, id_number: str | None = None, walk_in: bool = False,
                     gate_ids: list[str] | None = None, max_uses: int = 4) -> dict:
    """Register a visitor and issue a pass (QR) for their window, gates and number of passages."""
    serialize_writers(conn, CREDENTIALS_LOCK)
    unit = _require(conn, units, units.c.unit_id, host_unit_id, "unit")
    if unit["site_id"] != site_id:
        raise InvalidInput(f"unit {host_unit_id!r} is not at site {site_id!r}")
    if host_person_id:
        host = _require(conn, people, people.c.person_id, host_person_id, "person")
        if host["unit_id"] != host_unit_id:
            raise InvalidInput(f"{host_person_id!r} does not live in unit {host_unit_id!r}")
    start, end = _parse_time(expected_from, "expected_from"), _parse_time(expected_until, "expected_until")
    if not start or not end or end <= start:
        raise InvalidInput("expected_from and expected_until are required, and until must be after from")
    if end - start > timedelta(days=MAX_VISIT_DAYS):
        raise InvalidInput(f"a visit lasts at most {MAX_VISIT_DAYS} days")
    if not isinstance(max_uses, int) or not 1 <= max_uses <= 100:
        raise InvalidInput("max_uses must be a whole number from 1 to 100")
    site_gates = {g for (g,) in conn.execute(select(gates.c.gate_id).where(gates.c.site_id == site_id))}
    gate_ids = sorted(set(gate_ids or site_gates))
    unknown = sorted(set(gate_ids) - site_gates)
    if unknown:
        raise NotFound(f"unknown gate(s) at site {site_id!r}: {', '.join(unknown)}")
    visitor_id = "v-" + secrets.token_hex(5)
    pass_id = "vp-" + secrets.token_hex(6)
    conn.execute(insert(visitors).values(
        visitor_id=visitor_id, site_id=site_id, name=_check_text(name, "name"),
        phone=_check_text(phone, "phone", 24, required=False), id_number_masked=mask_id_number(id_number),
        host_unit_id=host_unit_id, host_person_id=host_person_id or None, purpose=_check_text(purpose, "purpose"),
        registered_by=_check_text(registered_by, "registered_by", 100), walk_in=bool(walk_in),
        registered_at=datetime.now(UTC)))
    conn.execute(insert(visitor_passes).values(pass_id=pass_id, visitor_id=visitor_id, site_id=site_id,
                                               gate_ids=json.dumps(gate_ids), valid_from=start, valid_until=end,
                                               max_uses=max_uses, uses=0, status=rules.ACTIVE))
    code = _sign(conn, site_id, {"id": pass_id, "site": site_id, "sub": f"visitor:{pass_id}", "name": name.strip()[:40],
                                 "from": int(start.timestamp()), "until": int(end.timestamp()), "gates": gate_ids,
                                 "uses": max_uses})
    audit(conn, site_id, registered_by, "visitor_registered", visitor_id, pass_id=pass_id, host_unit_id=host_unit_id,
          walk_in=bool(walk_in))
    _record(conn, site_id, visitor_items(conn, site_id, [pass_id]))
    return {"visitor_id": visitor_id, "pass_id": pass_id, "code": code, "gate_ids": gate_ids,
            "valid_from": start.isoformat(), "valid_until": end.isoformat(), "max_uses": max_uses}


def revoke_pass(conn, pass_id: str, actor: str) -> dict:
    serialize_writers(conn, CREDENTIALS_LOCK)
    row = _require(conn, visitor_passes, visitor_passes.c.pass_id, pass_id, "visitor pass")
    conn.execute(update(visitor_passes).where(visitor_passes.c.pass_id == pass_id).values(status=rules.REVOKED))
    audit(conn, row["site_id"], _check_text(actor, "actor", 100), "visitor_pass_revoked", pass_id)
    _record(conn, row["site_id"], visitor_items(conn, row["site_id"], [pass_id]))
    return {"pass_id": pass_id, "status": rules.REVOKED}


def list_visitors(conn, site_id: str, limit: int = 100) -> list[dict]:
    rows = conn.execute(
        select(visitors, visitor_passes.c.pass_id, visitor_passes.c.status, visitor_passes.c.uses,
               visitor_passes.c.max_uses, visitor_passes.c.valid_from, visitor_passes.c.valid_until,
               visitor_passes.c.arrived_at)
        .join(visitor_passes, visitor_passes.c.visitor_id == visitors.c.visitor_id)
        .where(visitors.c.site_id == site_id).order_by(visitors.c.registered_at.desc()).limit(limit)).mappings().all()
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()} for r in rows]


def record_visitor_use(conn, site_id: str, pass_id: str) -> dict | None:
    """A passage on a visitor pass reached the centre: count it; the first one is the arrival."""
    row = conn.execute(select(visitor_passes, visitors.c.name, visitors.c.host_unit_id, visitors.c.host_person_id,
                              visitors.c.purpose)
                       .join(visitors, visitors.c.visitor_id == visitor_passes.c.visitor_id)
                       .where(visitor_passes.c.pass_id == pass_id, visitor_passes.c.site_id == site_id)
                       ).mappings().first()
    if row is None:
        return None
    first = row["arrived_at"] is None
    conn.execute(update(visitor_passes).where(visitor_passes.c.pass_id == pass_id).values(
        uses=visitor_passes.c.uses + 1, arrived_at=row["arrived_at"] or datetime.now(UTC)))
    _record(conn, site_id, visitor_items(conn, site_id, [pass_id]))
    if not first:
        return None
    return {"visitor_id": row["visitor_id"], "pass_id": pass_id, "name": row["name"],
            "host_unit_id": row["host_unit_id"], "host_person_id": row["host_person_id"], "purpose": row["purpose"]}

