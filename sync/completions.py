"""Step results on their way to the database, several per round trip.

Steps that finish while a completion is being written wait for it, then go together in
one ``stepsync.complete_steps`` call: under load one round trip and one commit carry
many results; when the service is idle the first result goes out at once, alone, so a
lone step's hand-off to the next is not delayed. While ``hand_off`` is on, each run's
next step comes back leased to this worker with the result that made it due.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from sync.db import Completion, Database, Lease

log = logging.getLogger(__name__)


@dataclass
class _Result:
    lease: Lease
    output: Any
    done: asyncio.Future[Completion]


class CompletionBatcher:
    """Queues results and writes them ``max_batch`` at a time, ``writers`` writes at once;
    next steps are handed to ``worker`` with leases of ``lease_seconds``."""

    def __init__(
        self,
        db: Database,
        *,
        max_batch: int,
        writers: int,
        worker: str,
        lease_seconds: int,
    ) -> None:
        self.db = db
        self.max_batch = max_batch
        self.writers = writers
        self.worker = worker
        self.lease_seconds = lease_seconds
        self.hand_off = True  # off once the service stops taking work
        self._queued: list[_Result] = []
        self._writing: set[asyncio.Task] = set()

    async def complete(self, lease: Lease, output: Any) -> Completion:
        """What completing the step did, once committed.

        Raises what the write raised (connection errors: the caller retries).
        """
        result = _Result(lease, output, asyncio.get_running_loop().create_future())
        self._queued.append(result)
        if len(self._writing) < self.writers:
            self._writing.add(asyncio.create_task(self._write_queued(), name="complete-steps"))
        return await result.done

    async def _write_queued(self) -> None:
        try:
            while self._queued:
                batch = self._queued[: self.max_batch]
                del self._queued[: self.max_batch]
                await self._write(batch)
        finally:
            # Leave in the same step that found the queue empty. The results just
            # written wake their steps before this task's done callbacks would run, and
            # a step that finishes at once (a hand-off, a no-op) must then see one
            # writer fewer, or its result waits for a writer that has already gone.
            self._writing.discard(asyncio.current_task())

    async def _write(self, batch: list[_Result]) -> None:
        try:
            completions = await self.db.complete_steps(
                [(r.lease, r.output) for r in batch],
                worker=self.worker if self.hand_off else None,
                lease_seconds=self.lease_seconds,
            )
        except (psycopg.OperationalError, OSError) as exc:
            _settle(batch, error=exc)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch, error=exc)
                return
            # One result that cannot be written (valid JSON that jsonb does not take, a
            # value that cannot be sent) must not fail the others: write them one by one,
            # so only that step gets the error.
            log.warning(
                "batch of results refused; writing them one by one",
                extra={"error": str(exc).strip(), "steps": len(batch)},
            )
            for result in batch:
                await self._write([result])
        except BaseException:
            for result in batch:
                result.done.cancel()
            raise
        else:
            for result in batch:
                if not result.done.done():
                    result.done.set_result(completions[result.lease.step_execution_id])


def _settle(batch: list[_Result], *, error: BaseException) -> None:
    for result in batch:
        if not result.done.done():
            result.done.set_exception(error)
