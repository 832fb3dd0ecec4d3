"""Maintenance the service does on its own timer, apart from finding work.

The reaper hands expired leases back to the queue every ``reap_interval_seconds``: the
steps of a worker that died or stalled (``stepsync.reap_expired_leases`` decides which
and what becomes of them). When it handed any back it wakes the claim loop, so they run
again at once rather than at the next poll or notification. Each tick also samples the
queue depth for the metrics.

A lease that ran out during a database outage usually belongs to a worker that is alive
and holding a finished result it could not write. So the reaper gives owners a grace of
``grace_seconds`` (one lease) after its own connection comes back, and the database gives
every reaper the same grace after it restarts (``reap_expired_leases(p_grace_seconds)``);
owners keep trying to report for a minute (sync/retrying.py, REPORT).
"""

from __future__ import annotations

import asyncio
import logging
import time
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
        grace_seconds: int = 0,
        db_ok: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.interval_seconds = interval_seconds
        self.metrics = metrics
        self.grace_seconds = grace_seconds
        self.db_ok = db_ok  # told when a tick got through (the health check)
        self._lost_database = False
        self._reap_from = 0.0  # monotonic time before which nothing is reaped

    async def run(self, wake: Wake) -> None:
        while True:
            await self.tick(wake)
            await asyncio.sleep(self.interval_seconds)

    async def tick(self, wake: Wake) -> int:
        """Reap once; returns how many leases were handed back."""
        try:
            self.metrics.queue_depth.set(await self.db.queue_depth())
            if self._lost_database:
                self._lost_database = False
                self._reap_from = time.monotonic() + self.grace_seconds
                log.info(
                    "database back; reaping after the owners' grace",
                    extra={"grace_seconds": self.grace_seconds},
                )
            if time.monotonic() < self._reap_from:
                self.db_ok()
                return 0
            reaped = await self.db.reap_expired_leases(self.grace_seconds)
            if reaped:
                self.metrics.leases_reaped.inc(reaped)
                log.info("reaped expired leases", extra={"reaped": reaped})
                wake("reaped")
        except (psycopg.Error, OSError) as exc:
            # Not retried at once: the next tick is the retry (the pool reconnects by
            # itself, and the claim loop reports the outage too).
            log.warning("reaping failed", extra={"error": one_line(exc)})
            self._lost_database = True
            return 0
        self.db_ok()
        return reaped
