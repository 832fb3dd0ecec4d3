"""One leased step's life: execute it under its timeout, then report the outcome.

Every way an attempt ends is an :data:`Outcome`, and every outcome takes the same road,
:meth:`StepRunner.report`: written with the report retry policy (connection errors,
:data:`sync.retrying.REPORT`), then counted and logged. If the database stays away, the
lease runs out and the step is attempted again elsewhere.

==============  =================================  =========================================
outcome         when                               written with
==============  =================================  =========================================
``Completed``   the executor returned JSON         ``complete_steps``, batched with other
                                                   results (:mod:`sync.completions`)
``Failed``      it raised, timed out, returned     ``fail_step``: retried or failed for good
                non-JSON, or the database refused  per ``StepError.retryable``
                its output
``HandedBack``  cancelled: the service is          ``release_steps``: queued again at once,
                stopping                           without using an attempt
``LeaseLost``   cancelled: the lease is gone       nothing: the fencing token would be
                (expired and taken, run cancelled) refused anyway
==============  =================================  =========================================

A completion can bring back the run's next step, leased to this worker (hand-off); the
service then starts it in the slot this step frees (:attr:`StepRunner.slot_taken_over`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from sync import retrying
from sync.completions import CompletionBatcher
from sync.db import Completion, Database, LeasedStep
from sync.executors.base import Executor, PermanentStepError, StepError
from sync.executors.output import json_output
from sync.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completed:
    output: Any


@dataclass(frozen=True)
class Failed:
    error: StepError


@dataclass(frozen=True)
class HandedBack:
    pass


@dataclass(frozen=True)
class LeaseLost:
    pass


Outcome = Completed | Failed | HandedBack | LeaseLost


@dataclass(frozen=True)
class RunnerContext:
    """What the step runners of one service share."""

    executor: Executor
    db: Database
    completions: CompletionBatcher
    metrics: Metrics
    worker: str
    # A next step handed to this worker with a result: True when it was started, False
    # when it was handed back (the service is stopping).
    take_over: Callable[[LeasedStep], Awaitable[bool]]
    # Before a retry after a connection error: replace broken pooled connections.
    recover: Callable[[], Awaitable[None]]
    # A write got through: the database is reachable (the health check).
    db_ok: Callable[[], None]


class StepRunner:
    """Runs one leased step and reports how it ended."""

    def __init__(self, step: LeasedStep, context: RunnerContext) -> None:
        self.step = step
        self.context = context
        self.started = time.monotonic()
        self.duration = 0.0  # executor time, once it has ended
        self.execution: asyncio.Task | None = None
        # How an execution cancelled from outside ends (see cancel()).
        self._cancelled_as: HandedBack | LeaseLost = LeaseLost()
        # The run's next step took over this step's slot (hand-off).
        self.slot_taken_over = False

    @property
    def log_fields(self) -> dict[str, Any]:
        request = self.step.request
        return {
            "run_id": str(request.run_id),
            "step_execution_id": str(request.step_execution_id),
            "step_order": request.step_order,
            "attempt": request.attempt,
        }

    async def run(self) -> None:
        log.info(
            "step started", extra={**self.log_fields, "step_name": self.step.request.step_name}
        )
        await self.report(await self.execute())

    def cancel(self, outcome: HandedBack | LeaseLost) -> None:
        """Stop the execution from outside; the attempt then ends with ``outcome``."""
        if self.execution is not None and not self.execution.done():
            self._cancelled_as = outcome
            self.execution.cancel()

    async def execute(self) -> Outcome:
        request = self.step.request
        self.execution = asyncio.create_task(self.context.executor.execute(request))
        try:
            async with asyncio.timeout(request.timeout_seconds):
                output = await self.execution
            return Completed(json_output(output))
        except TimeoutError:
            return Failed(
                StepError(f"timed out after {request.timeout_seconds:g}s", retryable=True)
            )
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # this runner itself is being cancelled, not only the execution
            return self._cancelled_as
        except StepError as exc:
            return Failed(exc)
        except Exception as exc:
            log.exception("executor raised", extra=self.log_fields)
            return Failed(StepError(f"{type(exc).__name__}: {exc}", retryable=True))
        finally:
            self.duration = time.monotonic() - self.started

    async def report(self, outcome: Outcome) -> None:
        """Write ``outcome`` to the database, then count and log what it did."""
        try:
            written = await retrying.call(
                lambda: self._write(outcome),
                retrying.REPORT,
                "recording a step's outcome",
                fields=self.log_fields,
                before_retry=self.context.recover,
            )
        except (psycopg.Error, OSError) as exc:
            if isinstance(outcome, Completed) and not retrying.is_connection_error(exc):
                # Valid JSON that jsonb still refuses (a \u0000 in a string, say): retrying
                # cannot help, so the attempt fails for good instead of expiring.
                message = exc.diag.message_primary or str(exc).strip()
                refused = PermanentStepError(f"output refused by the database: {message}")
                await self.report(Failed(refused))
                return
            log.error(
                "could not record the result; the lease will expire and the step run again",
                extra={**self.log_fields, "error": retrying.one_line(exc)},
            )
            return
        except Exception as exc:
            if isinstance(outcome, Completed):
                # An output that cannot even be sent: the same output would fail again.
                unsent = PermanentStepError(
                    f"output could not be recorded: {type(exc).__name__}: {exc}"
                )
                await self.report(Failed(unsent))
                return
            log.exception("could not record the result", extra=self.log_fields)
            return
        await self._account(outcome, written)

    async def _write(self, outcome: Outcome) -> Any:
        context, lease = self.context, self.step.lease
        match outcome:
            case Completed(output):
                written: Any = await context.completions.complete(lease, output)
            case Failed(error):
                written = await context.db.fail_step(lease, str(error), retryable=error.retryable)
            case HandedBack():
                written = await context.db.release_steps(context.worker, [lease])
            case LeaseLost():
                return None  # nothing to write: the token would be refused
        context.db_ok()
        return written

    async def _account(self, outcome: Outcome, written: Any) -> None:
        metrics, duration = self.context.metrics, self.duration
        fields = {**self.log_fields, "duration_ms": round(duration * 1000, 1)}
        match outcome:
            case Completed():
                completion: Completion = written
                if completion.refused is not None:
                    metrics.steps_failed.inc()
                    metrics.step_duration.labels("failed").observe(duration)
                    log.error(
                        "step failed: output refused",
                        extra={**fields, "error": f"output refused: it {completion.refused}"},
                    )
                elif completion.completed:
                    metrics.steps_completed.inc()
                    metrics.step_duration.labels("completed").observe(duration)
                    log.info("step completed", extra=fields)
                else:
                    metrics.steps_stale.inc()
                    log.warning("completion refused: lease lost (stale token)", extra=fields)
                if completion.next_step is not None:
                    self.slot_taken_over = await self.context.take_over(completion.next_step)
            case Failed(error):
                fields |= {"error": str(error), "retryable": error.retryable, "outcome": written}
                if written == "retrying":
                    metrics.steps_retried.inc()
                    metrics.step_duration.labels("retrying").observe(duration)
                    log.warning("step failed; will retry", extra=fields)
                elif written == "failed":
                    metrics.steps_failed.inc()
                    metrics.step_duration.labels("failed").observe(duration)
                    log.error("step failed", extra=fields)
                elif written == "stale":
                    metrics.steps_stale.inc()
                    log.warning("failure refused: lease lost (stale token)", extra=fields)
            case HandedBack():
                if written:
                    metrics.steps_released.inc(written)
                    log.info("step handed back", extra=self.log_fields)
            case LeaseLost():
                metrics.steps_stale.inc()
                log.warning("lease lost; execution cancelled", extra=self.log_fields)
