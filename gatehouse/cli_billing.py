"""`gatehouse billing ...`: the billing commands (wired into gatehouse.cli)."""
from __future__ import annotations

import click


@click.group("billing")
def billing():
    """Billing commands."""
