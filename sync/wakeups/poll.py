"""The poll timer: always on, because no notification source guarantees delivery.

It only wakes the service to look for work; expired leases are the reaper's
(:mod:`sync.maintenance`), on its own timer.
"""

from __future__ import annotations

import asyncio

from sync.wakeups.base import Wake


class PollWakeups:
    name = "poll"

    def __init__(self, interval_seconds: float) -> None:
        self.interval_seconds = interval_seconds

    async def run(self, wake: Wake) -> None:
        while True:
            wake("poll")
            await asyncio.sleep(self.interval_seconds)
