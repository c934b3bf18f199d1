"""The console's patrol endpoints. Thin: the patrol service decides."""
from __future__ import annotations


class PatrolApi:
    pass
