"""Exponential backoff for the agent's retries (centre link and devices)."""
from __future__ import annotations

import asyncio


class Backoff:
    def __init__(self, initial: float = 0.2, maximum: float = 5.0):
        if not 0 < initial <= maximum:
            raise ValueError("need 0 < initial <= maximum")
        self.initial, self.maximum, self.delay = initial, maximum, initial

    def reset(self) -> None:
        self.delay = self.initial

    async def sleep(self) -> None:
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.maximum)
