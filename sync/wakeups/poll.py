"""The poll timer: always on, because no notification source guarantees delivery.

Every tick hands expired leases back to the queue (a crashed worker's steps) and wakes
the service to look for work.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import psycopg

from sync.db import Database
from sync.wakeups.base import Wake

log = logging.getLogger(__name__)


class PollWakeups:
    name = "poll"

    def __init__(
        self,
        db: Database,
        interval_seconds: float,
        *,
        on_tick: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self.db = db
        self.interval_seconds = interval_seconds
        self.on_tick = on_tick  # receives the number of leases reaped

    async def run(self, wake: Wake) -> None:
        while True:
            try:
                reaped = await self.db.reap_expired_leases()
                if reaped:
                    log.info("reaped expired leases", extra={"reaped": reaped})
                if self.on_tick is not None:
                    await self.on_tick(reaped)
            except (psycopg.Error, OSError) as exc:
                # The pool reconnects by itself; the claim loop reports the outage too.
                log.warning("poll tick failed", extra={"error": str(exc).strip()})
            wake("poll")
            await asyncio.sleep(self.interval_seconds)
