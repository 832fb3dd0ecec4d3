"""The interface every wake-up source implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

# Called with a short reason ("step_ready", "run_cancelled", "sweep", ...) whenever the
# service should claim work now instead of waiting for its next poll.
Wake = Callable[[str], None]


class WakeupSource(Protocol):
    name: str

    async def run(self, wake: Wake) -> None:
        """Deliver wake-ups until cancelled. Reconnect on errors with backoff, and call
        ``wake("sweep")`` after every (re)connect, since events may have been missed."""
        ...
