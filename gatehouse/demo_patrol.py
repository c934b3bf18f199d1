"""The demo estate's patrol part (called by gatehouse.demo.seed; idempotent)."""
from __future__ import annotations


def seed(rpc, now):
    """Yield one printable line per thing seeded."""
    yield from ()
