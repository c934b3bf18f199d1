"""What every service's store shares: the errors callers see (the console maps them by name
to 400 and 404), the clock, and fetching a row that must exist."""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select


class InvalidInput(ValueError):
    """Bad input from a caller: the message says what and nothing was written."""


class NotFound(InvalidInput):
    pass


def now() -> datetime:
    return datetime.now(UTC)


def require(conn, table, key_col, key, what):
    """The row whose `key_col` is `key`, or NotFound naming `what`."""
    row = conn.execute(select(table).where(key_col == key)).mappings().first()
    if row is None:
        raise NotFound(f"unknown {what} {key!r}")
    return row
