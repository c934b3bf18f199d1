"""nameko dependencies shared by the central services."""
from __future__ import annotations

import os
import time

from nameko.extensions import DependencyProvider

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

