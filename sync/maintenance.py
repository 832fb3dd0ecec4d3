"""Maintenance the service does on its own timer, apart from finding work.

The reaper hands expired leases back to the queue every ``reap_interval_seconds``: the
steps of a worker that died or stalled (``stepsync.reap_expired_leases`` decides which
and what becomes of them). When it handed any back it wakes the claim loop, so they run
again at once rather than at the next poll or notification. Each tick also samples the
queue depth for the metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import psycopg

from sync.db import Database
from sync.metrics import Metrics
from sync.retrying import one_line
from sync.wakeups.base import Wake

log = logging.getLogger(__name__)


class Reaper:
    name = "reaper"

    def __init__(
        self,
        db: Database,
        interval_seconds: float,
        *,
        metrics: Metrics,
        db_ok: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.interval_seconds = interval_seconds
        self.metrics = metrics
        self.db_ok = db_ok  # told when a tick got through (the health check)

    async def run(self, wake: Wake) -> None:
        while True:
            await self.tick(wake)
            await asyncio.sleep(self.interval_seconds)

    async def tick(self, wake: Wake) -> int:
        """Reap once; returns how many leases were handed back."""
        try:
            reaped = await self.db.reap_expired_leases()
            if reaped:
                self.metrics.leases_reaped.inc(reaped)
                log.info("reaped expired leases", extra={"reaped": reaped})
                wake("reaped")
            self.metrics.queue_depth.set(await self.db.queue_depth())
        except (psycopg.Error, OSError) as exc:
            # Not retried at once: the next tick is the retry (the pool reconnects by
            # itself, and the claim loop reports the outage too).
            log.warning("reaping failed", extra={"error": one_line(exc)})
            return 0
        self.db_ok()
        return reaped
