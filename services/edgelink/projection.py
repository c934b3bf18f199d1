"""Per-site, versioned projection of what the gates need, built from access's events."""
from __future__ import annotations

import json
import threading
import uuid

from sqlalchemy import select, update

from gatehouse.db import serialize_writers
from services.edgelink.tables import credentials, site_versions

PROJECTION_LOCK = 0x6564_6765


def _upsert(conn, table):
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(table)


class Projection:
    def __init__(self, engine):
        self.engine = engine
        self.changed = threading.Condition()   # notified after every applied change

    def apply_credentials(self, site_id: str, revision: int, views: list[dict]) -> int:
        """Apply access's `credentials_changed` (idempotent: older or equal revisions are ignored).

        Returns the site's version afterwards.
        """
        with self.engine.begin() as conn:
            serialize_writers(conn, PROJECTION_LOCK)
            base = conn.execute(select(site_versions.c.version)
                                .where(site_versions.c.site_id == site_id)).scalar()
            if base is None:
                base = 0
                conn.execute(_upsert(conn, site_versions).values(site_id=site_id, version=0, epoch=uuid.uuid4().hex))
            rows = [{"site_id": site_id, "card_number": v["card_number"], "version": base + i + 1,
                     "source_revision": revision, "payload": json.dumps(v, sort_keys=True)}
                    for i, v in enumerate(views)]
            if rows:
                stmt = _upsert(conn, credentials)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["site_id", "card_number"],
                    set_={"version": stmt.excluded.version, "source_revision": stmt.excluded.source_revision,
                          "payload": stmt.excluded.payload},
                    where=credentials.c.source_revision < stmt.excluded.source_revision)
                conn.execute(stmt, rows)
                conn.execute(update(site_versions).where(site_versions.c.site_id == site_id)
                             .values(version=base + len(rows)))
            version = base + len(rows)
        with self.changed:
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

    def changes_since(self, site_id: str, cursor: int, limit: int = 1000) -> list[tuple[int, dict]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(credentials.c.version, credentials.c.payload)
                                .where(credentials.c.site_id == site_id, credentials.c.version > cursor)
                                .order_by(credentials.c.version).limit(limit)).all()
        return [(version, json.loads(payload)) for version, payload in rows]

    def wait_for_change(self, timeout: float) -> None:
        with self.changed:
            self.changed.wait(timeout)
