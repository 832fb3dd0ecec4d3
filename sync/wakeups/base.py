"""The interface every wake-up source implements."""

from __future__ import annotations

import random
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


def reconnect_delay(failures: int, initial: float, maximum: float) -> float:
    """Seconds to wait after ``failures`` failed (re)connects in a row: doubling from
    ``initial`` up to ``maximum``, then jittered down by up to half, so workers that lost
    the same server do not all come back in the same instant."""
    base = min(initial * 2 ** (failures - 1), maximum)
    return base * (0.5 + random.random() / 2)
