"""`gatehouse patrol ...`: the patrol commands (wired into gatehouse.cli)."""
from __future__ import annotations

import click


@click.group("patrol")
def patrol():
    """Patrol commands."""
