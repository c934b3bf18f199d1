"""Bulk import of units and people (with cards, PINs, groups) from CSV or XLSX.

The file is read and every row checked first (services.access.importing); then, in one
transaction, either everything is written or, when the file has errors, nothing, unless the
caller asked for the valid rows only. Credentials reach the gates in the same transaction's
outbox records, like any other change.
"""
from __future__ import annotations

from sqlalchemy import delete, insert, select

from gatehouse.db import serialize_writers
from services.access import importing, rules, store
from services.access.tables import access_groups, cards, people, sites, units

CHUNK = 2000


class PinKeys(frozenset):
    """The site's active PINs, stored as keys: a PIN from the file is hashed to be looked up."""

    def __new__(cls, site_id: str, keys):
        made = super().__new__(cls, keys)
        made.site_id = site_id
        return made

    def __contains__(self, pin) -> bool:
        return super().__contains__(rules.pin_key(self.site_id, str(pin)))


def existing(conn, site_id: str) -> importing.Existing:
    site_row = conn.execute(select(sites.c.timezone).where(sites.c.site_id == site_id)).first()
    if site_row is None:
        raise store.NotFound(f"unknown site {site_id!r}")
    active_cards = conn.execute(select(cards.c.card_number, cards.c.kind).where(
        cards.c.site_id == site_id, cards.c.status == "active")).all()
    return importing.Existing(
        timezone=site_row.timezone,
        person_ids=frozenset(p for (p,) in conn.execute(select(people.c.person_id))),
        unit_ids=frozenset(u for (u,) in conn.execute(select(units.c.unit_id).where(units.c.site_id == site_id))),
        card_numbers=frozenset(c for c, k in active_cards if k == "card"),
        pins=PinKeys(site_id, (c for c, k in active_cards if k == "pin")),
        group_ids=frozenset(g for (g,) in conn.execute(select(access_groups.c.group_id)
                                                       .where(access_groups.c.site_id == site_id))))


def run_import(conn, site_id: str, filename: str, data: bytes, kind: str | None, actor: str,
               valid_only: bool = False, dry_run: bool = False, progress=None) -> dict:
    """Check a file and import it; returns the per-row report and what was written."""
    serialize_writers(conn, store.CREDENTIALS_LOCK)
    try:
        tables = importing.read_table(filename, data, kind)
    except importing.ImportFileError as exc:
        raise store.InvalidInput(str(exc)) from None
    plan = importing.plan_import(tables, existing(conn, site_id), progress)
    summary = plan.summary()
    if dry_run or (plan.error_count and not valid_only):
        return {**summary, "imported": False, "units_imported": 0, "people_imported": 0,
                "why_not": "dry run" if dry_run else "the file has errors; fix them or import the valid rows only"}
    elsewhere = _units_elsewhere(conn, site_id, [u["unit_id"] for u in plan.units])
    if elsewhere:
        raise store.InvalidInput(f"unit_id(s) already used at another site: {', '.join(elsewhere)}")
    now = store._now()
    if plan.units:
        conn.execute(insert(units), [{"site_id": site_id, **{k: u.get(k) for k in
                                      ("unit_id", "building", "unit", "room", "floor_area_m2")}} for u in plan.units])
    if plan.people:
        conn.execute(insert(people), [{"site_id": site_id, "status": "active", "created_at": now, **{
            k: p.get(k) for k in ("person_id", "name", "kind", "role", "unit_id", "phone")}} for p in plan.people])
        members = [{"group_id": g, "person_id": p["person_id"]} for p in plan.people for g in p.get("groups") or ()]
        if members:
            conn.execute(insert(store.group_members), members)
        credentials = [_card(site_id, p, c, "card", now) for p in plan.people for c in p.get("card_numbers") or ()]
        credentials += [_card(site_id, p, p["pin"], "pin", now) for p in plan.people if p.get("pin")]
        if credentials:
            # a revoked card or PIN may be given out again: its old row makes way
            keys = [c["card_number"] for c in credentials]
            for i in range(0, len(keys), CHUNK):
                conn.execute(delete(cards).where(cards.c.site_id == site_id, cards.c.card_number.in_(keys[i:i + CHUNK])))
            conn.execute(insert(cards), credentials)
        person_ids = [p["person_id"] for p in plan.people]
        for i in range(0, len(person_ids), CHUNK):
            store._record(conn, site_id, store.credential_items(conn, site_id, person_ids=person_ids[i:i + CHUNK]))
        store.queue_people_changed(conn, site_id, [{**p, "status": "active"} for p in plan.people])
    store.audit(conn, site_id, actor, "import", filename, units=len(plan.units), people=len(plan.people),
                rejected_rows=plan.error_count)
    return {**summary, "imported": True, "units_imported": len(plan.units), "people_imported": len(plan.people)}


def _card(site_id: str, person: dict, value: str, kind: str, now) -> dict:
    key = rules.pin_key(site_id, value) if kind == "pin" else value
    return {"site_id": site_id, "card_number": key, "person_id": person["person_id"], "status": "active",
            "valid_from": person.get("valid_from"), "valid_until": person.get("valid_until"), "updated_at": now,
            "kind": kind, "replaced_by": None}


def _units_elsewhere(conn, site_id: str, unit_ids: list[str]) -> list[str]:
    found = []
    for i in range(0, len(unit_ids), CHUNK):
        found += [u for (u,) in conn.execute(select(units.c.unit_id).where(
            units.c.unit_id.in_(unit_ids[i:i + CHUNK]), units.c.site_id != site_id))]
    return sorted(found)
