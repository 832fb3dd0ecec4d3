"""Shared by the Realtime tests: a wake-up recorder tests can wait on."""

from __future__ import annotations

import asyncio
from collections import Counter


class WakeLog:
    """A ``Wake`` callback that remembers every reason and lets a test wait for one."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self._changed.set()

    def count(self, reason: str) -> int:
        return Counter(self.reasons)[reason]

    async def wait_for(self, reason: str, times: int = 1, timeout: float = 10) -> None:
        async def until() -> None:
            while self.count(reason) < times:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)
