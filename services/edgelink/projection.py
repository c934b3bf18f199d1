"""Per-site, versioned projection of what the gates need, built from access's events.

Items arrive as JSON on the bus (`access.site_data_changed`); each is turned into its gRPC
message once, here, and stored serialized, so a sync of 100,000 credentials streams stored
bytes.
"""
from __future__ import annotations

import threading
import uuid

from sqlalchemy import select, update

from gatehouse.db import serialize_writers
from gatehouse.edge.v1 import edge_pb2 as pb
from services.edgelink.tables import items, site_versions

PROJECTION_LOCK = 0x6564_6765


def _upsert(conn, table):
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(table)


def item_change(item: dict) -> tuple[str, pb.Change]:
    """(projection key, Change without version) for one item of `site_data_changed`."""
    kind = item["type"]
    if kind == "credential":
        fields = {k: item[k] for k in ("card_number", "person_id", "person_name", "status", "valid_from",
                                       "valid_until", "gate_ids", "group_ids", "person_kind", "max_uses", "uses")
                  if k in item}
        return f"credential:{item['card_number']}", pb.Change(credential=pb.Credential(**fields))
    if kind == "group":
        return f"group:{item['group_id']}", pb.Change(group=pb.AccessGroup(
            group_id=item["group_id"], gate_ids=item["gate_ids"], time_profile_id=item.get("time_profile_id") or ""))
    if kind == "time_profile":
        return f"time_profile:{item['profile_id']}", pb.Change(time_profile=pb.TimeProfile(
            profile_id=item["profile_id"],
            periods=[pb.Period(day=p["day"], start_minute=p["start"], end_minute=p["end"]) for p in item["periods"]]))
    if kind == "zone":
        return f"zone:{item['zone_id']}", pb.Change(zone=pb.Zone(
            zone_id=item["zone_id"], anti_passback=item["anti_passback"], timed_minutes=item["timed_minutes"],
            reset_minute=item["reset_minute"], entry_gate_ids=item["entry_gate_ids"],
            exit_gate_ids=item["exit_gate_ids"]))
    if kind == "settings":
        return "settings", pb.Change(settings=pb.SiteSettings(
            timezone=item["timezone"], holidays=item["holidays"], emergency=item["emergency"],
            emergency_reason=item.get("emergency_reason") or "",
            qr_keys=[pb.QrKey(key_id=k["key_id"], public_key=bytes.fromhex(k["public_key"]))
                     for k in item["qr_keys"]]))
    if kind == "vehicle":
        return f"vehicle:{item['lot_id']}:{item['plate']}", pb.Change(vehicle=pb.VehicleRight(
            **{k: item[k] for k in ("lot_id", "plate", "kind", "grace_days", "free_minutes", "fixed_space", "holder")},
            valid_from=item.get("valid_from") or "", valid_until=item.get("valid_until") or ""))
    if kind == "lot":
        return f"lot:{item['lot_id']}", pb.Change(lot=pb.ParkingLot(
            lot_id=item["lot_id"], timezone=item["timezone"], shared_capacity=item["shared_capacity"],
            tariff_json=item["tariff_json"], tolerate_province=item["tolerate_province"],
            exit_window_minutes=item["exit_window_minutes"]))
    if kind == "lane":
        return f"lane:{item['lane_id']}", pb.Change(lane=pb.Lane(
            lane_id=item["lane_id"], lot_id=item["lot_id"], direction=item["direction"],
            policy_json=item["policy_json"]))
    if kind == "removed":
        return f"{item['kind']}:{item['key']}", pb.Change(removed=pb.Removed(kind=item["kind"], key=item["key"]))
    raise ValueError(f"unknown site item type {kind!r}")


class Projection:
    def __init__(self, engine):
        self.engine = engine
        self.changed = threading.Condition()   # notified after every applied change
        self.generation = 0                    # +1 per applied change, under `changed`

    def apply(self, site_id: str, revision: int, site_items: list[dict]) -> int:
        """Apply access's `site_data_changed` (idempotent: older or equal revisions are ignored).

        Returns the site's version afterwards.
        """
        changes = [item_change(item) for item in site_items]
        with self.engine.begin() as conn:
            serialize_writers(conn, PROJECTION_LOCK)
            base = conn.execute(select(site_versions.c.version)
                                .where(site_versions.c.site_id == site_id)).scalar()
            if base is None:
                base = 0
                conn.execute(_upsert(conn, site_versions).values(site_id=site_id, version=0, epoch=uuid.uuid4().hex))
            rows = [{"site_id": site_id, "item_key": key, "version": base + i + 1, "source_revision": revision,
                     "payload": change.SerializeToString()} for i, (key, change) in enumerate(changes)]
            if rows:
                stmt = _upsert(conn, items)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["site_id", "item_key"],
                    set_={"version": stmt.excluded.version, "source_revision": stmt.excluded.source_revision,
                          "payload": stmt.excluded.payload},
                    where=items.c.source_revision < stmt.excluded.source_revision)
                conn.execute(stmt, rows)
                conn.execute(update(site_versions).where(site_versions.c.site_id == site_id)
                             .values(version=base + len(rows)))
            version = base + len(rows)
        with self.changed:
            self.generation += 1
            self.changed.notify_all()
        return version

    def latest_version(self, site_id: str) -> int:
        return self.position(site_id)[1]

    def position(self, site_id: str) -> tuple[str, int]:
        """(epoch, version) of the site's projection; ("", 0) before it has any data."""
        with self.engine.connect() as conn:
            row = conn.execute(select(site_versions.c.epoch, site_versions.c.version)
                               .where(site_versions.c.site_id == site_id)).first()
        return (row.epoch, row.version) if row else ("", 0)

    def versions(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return dict(conn.execute(select(site_versions.c.site_id, site_versions.c.version)).all())

    def changes_since(self, site_id: str, cursor: int, limit: int = 1000) -> list[pb.Change]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(items.c.version, items.c.payload)
                                .where(items.c.site_id == site_id, items.c.version > cursor)
                                .order_by(items.c.version).limit(limit)).all()
        changes = []
        for version, payload in rows:
            change = pb.Change.FromString(payload)
            change.version = version
            changes.append(change)
        return changes

    def wait_for_change(self, seen_generation: int, timeout: float) -> None:
        """Wait until something changed after `seen_generation` (read before the last query), so
        a change that lands between the query and the wait is not slept through."""
        with self.changed:
            self.changed.wait_for(lambda: self.generation != seen_generation, timeout)
