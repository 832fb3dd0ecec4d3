"""Wake on PostgreSQL ``LISTEN``: one dedicated connection that reconnects with backoff.

Notifications only say "look now"; a lost one (disconnect, restart) is covered by the
``sweep`` wake-up after every (re)connect and by the poll timer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace

import psycopg

from sync import retrying
from sync.wakeups.base import Wake

log = logging.getLogger(__name__)

STEP_READY = "stepsync_step_ready"
RUN_CHANGED = "stepsync_run_changed"
APPLICATION_NAME = "stepsync-listen"  # finds the connection in pg_stat_activity


class PostgresWakeups:
    name = "postgres"

    def __init__(
        self,
        url: str,
        *,
        channels: tuple[str, ...] = (STEP_READY, RUN_CHANGED),
        health_check_seconds: float = 15.0,
        initial_backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
    ) -> None:
        self.url = url
        self.channels = channels
        self.health_check_seconds = health_check_seconds
        self.initial_backoff_seconds = initial_backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.connected = asyncio.Event()
        self.connections = 0  # successful (re)connects so far

    async def run(self, wake: Wake) -> None:
        policy = replace(
            retrying.RECONNECT,
            initial_seconds=self.initial_backoff_seconds,
            max_seconds=self.max_backoff_seconds,
        )
        async for attempt in retrying.loop(policy, "listen connection"):
            with attempt:
                try:
                    async with await psycopg.AsyncConnection.connect(
                        self.url, autocommit=True, application_name=APPLICATION_NAME
                    ) as conn:
                        for channel in self.channels:
                            await conn.execute(
                                psycopg.sql.SQL("listen {}").format(psycopg.sql.Identifier(channel))
                            )
                        self.connected.set()
                        self.connections += 1
                        retrying.reset_backoff(attempt)
                        log.info("listening", extra={"channels": list(self.channels)})
                        wake("sweep")
                        await self._deliver(conn, wake)
                finally:
                    self.connected.clear()

    async def _deliver(self, conn: psycopg.AsyncConnection, wake: Wake) -> None:
        while True:
            # The timeout lets a silent connection be checked: a dead TCP peer would
            # otherwise leave us waiting forever for notifications that never come.
            async for notify in conn.notifies(timeout=self.health_check_seconds):
                reason = wake_reason(notify.channel, notify.payload)
                if reason is not None:
                    wake(reason)
            await conn.execute("select 1")


def wake_reason(channel: str, payload: str) -> str | None:
    """What a notification means to the service, or None when it means nothing.

    A run starting or finishing makes nothing claimable by itself (its ready step has
    its own notification); a cancelled run matters because its running step must stop,
    also when the run stays running for the compensations its cancel asked for
    (``cancelling``).
    """
    if channel != RUN_CHANGED:
        return "step_ready"
    try:
        change = json.loads(payload)
        cancelled = change.get("status") == "cancelled" or change.get("cancelling") is True
    except (ValueError, AttributeError):
        return "run_changed"  # an unexpected payload: look rather than miss something
    return "run_cancelled" if cancelled else None
