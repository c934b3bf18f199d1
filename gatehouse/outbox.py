"""The transactional outbox every central service uses for the events it publishes.

An event is written in the same transaction as the change it reports (`queue`), and a relay
publishes committed rows in order and marks them (`relay`), so a crash or a broker outage
between the two loses nothing: the next relay publishes what is left. A consumer may see an
event twice (published, then the crash before marking), so every payload carries its
`event_id` and consumers are idempotent.
"""
from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)

from gatehouse.bus import event_payload


def outbox_table(metadata: MetaData, service: str) -> Table:
    """The `outbox` table of a service's schema."""
    return Table(
        "outbox", metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("event_type", String(40), nullable=False),
        Column("payload", Text, nullable=False),
        Column("published", Boolean, nullable=False),
        Index(f"ix_{service}_outbox_unpublished", "published", "id"),
    )


def queue(conn, table: Table, site_id: str, event_type: str, **fields) -> dict:
    """Record `<service>.<event_type>` to publish once this transaction commits; returns the payload."""
    payload = event_payload(site_id, **fields)
    conn.execute(insert(table).values(event_type=event_type, published=False, payload=json.dumps(payload, default=str)))
    return payload


def unpublished(conn, table: Table, limit: int = 100) -> list[tuple[int, str, dict]]:
    rows = conn.execute(select(table.c.id, table.c.event_type, table.c.payload)
                        .where(table.c.published.is_(False)).order_by(table.c.id).limit(limit)).all()
    return [(i, t, json.loads(p)) for i, t, p in rows]


def mark_published(conn, table: Table, ids: list[int]) -> None:
    conn.execute(update(table).where(table.c.id.in_(ids)).values(published=True))


def relay(engine, table: Table, dispatch: Callable[[str, dict], None], lock,
          prepare: Callable[[int, str, dict], dict] | None = None) -> int:
    """Publish every committed, unpublished event in order (one relay at a time per process:
    `lock` is the process's semaphore); returns how many went out. `prepare(id, type, payload)`
    may add fields known only now (parking adds the outbox id as the revision)."""
    sent = 0
    with lock:
        while True:
            with engine.connect() as conn:
                pending = unpublished(conn, table)
            if not pending:
                return sent
            for outbox_id, event_type, payload in pending:
                dispatch(event_type, prepare(outbox_id, event_type, payload) if prepare else payload)
            with engine.begin() as conn:
                mark_published(conn, table, [i for i, _, _ in pending])
            sent += len(pending)
