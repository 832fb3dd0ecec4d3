"""Shared by the Realtime tests: a wake-up recorder tests can wait on."""

from __future__ import annotations

import asyncio
import threading
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


class SupabaseStandIns:
    """Realtime and Edge Functions stand-ins behind one gateway URL, on a loop of their
    own in a background thread, for code under test that runs its own event loop
    (the CLI, the service)."""

    def __init__(self, database_url: str, key: str, deployed: set[str] | None = None) -> None:
        from tests.standins.edge_functions import EdgeFunctionsStandIn
        from tests.standins.gateway import GatewayStandIn
        from tests.standins.realtime_server import RealtimeStandIn

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.functions = EdgeFunctionsStandIn(deployed)
        self.realtime = RealtimeStandIn(database_url, key)
        self._gateway_class = GatewayStandIn
        self.gateway = None

    def call(self, coroutine, timeout: float = 30):
        """Run a coroutine on the stand-ins' loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    @property
    def url(self) -> str:
        return self.gateway.url

    def __enter__(self) -> SupabaseStandIns:
        self._thread.start()
        self.functions.start()
        self.call(self.realtime.start())
        self.gateway = self.call(
            self._gateway_class(
                {"/realtime/": self.realtime.url, "/functions/": self.functions.url}
            ).start()
        )
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.gateway.stop())
            self.call(self.realtime.stop())
            self.functions.stop()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
