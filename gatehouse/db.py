"""One place for database engines and migrations.

Each service owns its own schema: an SQLite file `var/<service>.db` (WAL mode) by default, or
the PostgreSQL schema `<service>` in the database named by DATABASE_URL. No service reads
another's tables.
"""
from __future__ import annotations

from datetime import UTC
from pathlib import Path

from sqlalchemy import DateTime, Engine, TypeDecorator, create_engine, event, text

from gatehouse import settings

# Every service with a migrations folder, in a fixed order (access first: the demo seeds it first).
SERVICES_WITH_DATA = tuple(sorted((p.parent.parent.name for p in (settings.ROOT / "services").glob("*/migrations/env.py")),
                                  key=lambda name: (name != "access", name)))


def engine_for(service: str, url: str | None = None, **kwargs) -> Engine:
    url = url if url is not None else settings.database_url()
    if not url:
        path = settings.var_dir() / f"{service}.db"
        engine = create_engine(f"sqlite:///{path}", **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.close()
            # Let SQLAlchemy's "begin" below decide how transactions start.
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn):
            # Take the write lock at the start: a transaction that reads, then writes, can then
            # never fail half way with SQLITE_BUSY_SNAPSHOT, and writers queue on busy_timeout.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if not url.startswith("postgresql"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got {url.split(':', 1)[0]}://")
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, connect_args={"options": f"-csearch_path={service}"}, **kwargs)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def serialize_writers(conn, key: int) -> None:
    """Make writers of one kind of change commit in the order they started (PostgreSQL).

    SQLite already runs one writer at a time (BEGIN IMMEDIATE above).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def migrations_dir(service: str) -> Path:
    return settings.ROOT / "services" / service / "migrations"


def migrate(service: str, url: str | None = None, revision: str = "head") -> None:
    """Bring the service's schema to `revision` (creating the PostgreSQL schema first)."""
    from alembic import command
    from alembic.config import Config

    engine = engine_for(service, url)
    if not is_sqlite(engine):
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{service}"'))
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir(service)))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


def run_alembic_env(metadata) -> None:
    """The body of every service's migrations/env.py."""
    from alembic import context

    conn = context.config.attributes.get("connection")
    if conn is None:
        raise RuntimeError("run migrations through `gatehouse migrate` (gatehouse.db.migrate)")
    context.configure(connection=conn, target_metadata=metadata,
                      render_as_batch=conn.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def insert_ignore(engine_or_conn, table):
    """INSERT that skips rows whose unique key is already there (both dialects)."""
    if engine_or_conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert(table).on_conflict_do_nothing()


class UTCDateTime(TypeDecorator):
    """Times stored in UTC on both databases; always returned timezone-aware (UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: give times in UTC with tzinfo")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=UTC) if value is not None else None
