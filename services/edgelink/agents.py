"""Registered edge agents and their secrets (stored as SHA-256 of a 256-bit random token)."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from datetime import UTC, datetime

from sqlalchemy import delete, insert, select

from services.edgelink.tables import agents


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def register(engine, agent_id: str, site_id: str, secret: str | None = None) -> str:
    """Create or re-key an agent; returns its secret (shown once)."""
    if not agent_id or not site_id:
        raise ValueError("agent_id and site_id are required")
    secret = secret or secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(delete(agents).where(agents.c.agent_id == agent_id))
        conn.execute(insert(agents).values(agent_id=agent_id, site_id=site_id, secret_sha256=_digest(secret),
                                           created_at=datetime.now(UTC)))
    return secret


def all_agents(engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(agents.c.agent_id, agents.c.site_id)).mappings()]


class Authenticator:
    """Checks an agent's id and secret; keeps the digests in memory, re-reading on a miss at
    most once a second (so wrong secrets cannot turn into a flood of database reads)."""

    RELOAD_EVERY_S = 1.0

    def __init__(self, engine):
        self.engine = engine
        self._known: dict[str, tuple[str, str]] = {}
        self._loaded_at = float("-inf")
        self._lock = threading.Lock()

    def _load(self):
        with self._lock:
            if time.monotonic() - self._loaded_at < self.RELOAD_EVERY_S:
                return
            with self.engine.connect() as conn:
                self._known = {r.agent_id: (r.site_id, r.secret_sha256) for r in conn.execute(select(agents))}
            self._loaded_at = time.monotonic()

    def site_of(self, agent_id: str, secret: str) -> str | None:
        entry = self._known.get(agent_id)
        if entry is None or not hmac.compare_digest(entry[1], _digest(secret)):
            self._load()   # registered or re-keyed since we last looked
            entry = self._known.get(agent_id)
        if entry is None or not hmac.compare_digest(entry[1], _digest(secret)):
            return None
        return entry[0]
