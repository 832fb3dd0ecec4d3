"""Step results on their way to the database, several per round trip.

Steps that finish while a completion is being written wait for it, then go together in
one ``stepsync.complete_steps`` call: under load one round trip and one commit carry
many results; when the service is idle the first result goes out at once, alone, so a
lone step's hand-off to the next is not delayed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from sync.db import Database, Lease

log = logging.getLogger(__name__)


@dataclass
class _Result:
    lease: Lease
    output: Any
    done: asyncio.Future[bool]


class CompletionBatcher:
    """Queues results and writes them ``max_batch`` at a time, ``writers`` writes at once."""

    def __init__(self, db: Database, *, max_batch: int, writers: int = 1) -> None:
        self.db = db
        self.max_batch = max_batch
        self.writers = writers
        self._queued: list[_Result] = []
        self._writing: set[asyncio.Task] = set()

    async def complete(self, lease: Lease, output: Any) -> bool:
        """True once committed; False: the lease was no longer ours, nothing changed.

        Raises what the write raised (connection errors: the caller retries).
        """
        result = _Result(lease, output, asyncio.get_running_loop().create_future())
        self._queued.append(result)
        if len(self._writing) < self.writers:
            writer = asyncio.create_task(self._write_queued(), name="complete-steps")
            self._writing.add(writer)
            writer.add_done_callback(self._writing.discard)
        return await result.done

    async def _write_queued(self) -> None:
        while self._queued:
            batch = self._queued[: self.max_batch]
            del self._queued[: self.max_batch]
            await self._write(batch)

    async def _write(self, batch: list[_Result]) -> None:
        try:
            completed = await self.db.complete_steps([(r.lease, r.output) for r in batch])
        except (psycopg.OperationalError, OSError) as exc:
            _settle(batch, error=exc)
        except psycopg.Error as exc:
            if len(batch) == 1:
                _settle(batch, error=exc)
                return
            # One output the database refuses (valid JSON that jsonb does not take) must
            # not fail the others: write them one by one, so only that step gets the error.
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
                    result.done.set_result(completed[result.lease.step_execution_id])


def _settle(batch: list[_Result], *, error: BaseException) -> None:
    for result in batch:
        if not result.done.done():
            result.done.set_exception(error)
