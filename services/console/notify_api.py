"""The console's notify endpoints. Thin: the notify service decides."""
from __future__ import annotations


class NotifyApi:
    pass
