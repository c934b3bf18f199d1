"""`gatehouse notify ...`: the notify commands (wired into gatehouse.cli)."""
from __future__ import annotations

import click


@click.group("notify")
def notify():
    """Notify commands."""
