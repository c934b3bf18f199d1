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

    async def sleep(self, wake: asyncio.Event | None = None) -> None:
        """Wait the current delay, or less if `wake` becomes set meanwhile (another part saw the
        peer come back); then double the delay for next time. A `wake` already set when the
        wait begins does not shorten it, so a part that keeps failing cannot spin."""
        if wake is None or wake.is_set():
            await asyncio.sleep(self.delay)
        else:
            try:
                await asyncio.wait_for(wake.wait(), self.delay)
            except TimeoutError:
                pass
        self.delay = min(self.delay * 2, self.maximum)
