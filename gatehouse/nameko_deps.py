"""nameko dependencies shared by the central services."""
from __future__ import annotations

import os
import time
from datetime import UTC, datetime

from nameko.extensions import DependencyProvider
from nameko.timer import timer

from gatehouse import settings
from gatehouse.db import engine_for

HEARTBEAT_INTERVAL_S = 2.0


class Database(DependencyProvider):
    """Gives each worker the service's SQLAlchemy engine (its own schema; see gatehouse.db)."""

    def __init__(self, service: str):
        self.service = service
        self.engine = None

    def setup(self):
        # a pool as large as the worker count on PostgreSQL; SQLite takes its default
        pool = {"pool_size": 10, "max_overflow": 10} if settings.database_url() else {}
        self.engine = engine_for(self.service, **pool)

    def stop(self):
        if self.engine is not None:
            self.engine.dispose()

    def get_dependency(self, worker_ctx):
        return self.engine


class Heartbeat(DependencyProvider):
    """What a service says about itself in its `<service>.heartbeat` event."""

    def setup(self):
        self.started_at = time.time()

    def get_dependency(self, worker_ctx):
        return {"pid": os.getpid(), "started_at": self.started_at, "uptime_s": round(time.time() - self.started_at, 1)}



class StoreService:
    """What every central service class shares: its `<service>.heartbeat` every
    HEARTBEAT_INTERVAL_S, and running a store function in a read or a write transaction.

    A subclass sets `name`, `db = Database(name)`, `dispatch = EventDispatcher()` and
    `heartbeat_info = Heartbeat()`, and overrides `_after_write` to publish what a write queued
    (its outbox relay). Subclass it through this module (`nameko_deps.StoreService`), not by
    importing the class: `nameko run` would take a class in the service module's namespace for a
    service of its own.
    """

    name: str

    @timer(interval=HEARTBEAT_INTERVAL_S)
    def heartbeat(self):
        self.dispatch("heartbeat", {"service": self.name, "at": datetime.now(UTC).isoformat(), **self.heartbeat_info})

    def _read(self, fn, *args, **kwargs):
        with self.db.connect() as conn:
            return fn(conn, *args, **kwargs)

    def _write(self, fn, *args, **kwargs):
        with self.db.begin() as conn:
            result = fn(conn, *args, **kwargs)
        self._after_write()
        return result

    def _after_write(self) -> None:
        """After a write committed (override: publish its events now rather than at the next tick)."""
