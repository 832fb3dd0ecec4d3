"""The service loop: wake → claim → execute → complete/fail, N steps at a time.

Wake-up sources (LISTEN, the poll timer) only set an event; the database decides what
runs (``stepsync.claim_steps``). Results go to the database in batches
(:mod:`sync.completions`), and each brings back its run's next step when it is plainly
due, leased to this worker (hand-off), which then runs in the slot just freed. Every
step runs as its own asyncio task under its own timeout, while one heartbeat task keeps
all leases alive and notices lost ones (lease expired, run cancelled), whose executions
it cancels: their results would be refused by the fencing token anyway.

Shutdown (SIGTERM/SIGINT or :meth:`StepService.stop`): stop claiming, let running steps
finish for ``shutdown_grace_seconds`` (heartbeats continue), then cancel the rest and
hand them back with ``release_steps`` so another worker starts them at once, without
using up an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from sync.completions import CompletionBatcher
from sync.db import Database, DatabaseSetupError, Lease
from sync.executors.base import Executor, PermanentStepError, StepError, StepRequest
from sync.executors.output import json_output
from sync.metrics import Metrics, MetricsServer
from sync.settings import Settings
from sync.wakeups.base import WakeupSource
from sync.wakeups.poll import PollWakeups

log = logging.getLogger(__name__)

# Reporting a result is retried this many times on connection errors; after that the
# lease runs out and the step is attempted again elsewhere.
REPORT_ATTEMPTS = 5
# Result writes in flight at once: while one batch commits, the next ones are already
# being written rather than only gathered, and one slow commit does not hold back every
# result. With a no-op executor and 4 connections, three writers kept three or four
# statements active most of the time, two writers mostly two (docs/service.md).
COMPLETION_WRITERS = 3


@dataclass
class RunningStep:
    request: StepRequest
    lease: Lease
    started: float = field(default_factory=time.monotonic)
    exec_task: asyncio.Task | None = None
    # Why the execution was cancelled from outside: "lease_lost" or "shutdown".
    stop_reason: str | None = None
    # The run's next step took over this step's slot (hand-off).
    slot_taken_over: bool = False

    @property
    def log_fields(self) -> dict[str, Any]:
        return {
            "run_id": str(self.request.run_id),
            "step_execution_id": str(self.request.step_execution_id),
            "step_order": self.request.step_order,
            "attempt": self.request.attempt,
        }


class StepService:
    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        executor: Executor,
        wakeup_sources: list[WakeupSource] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.worker = settings.worker_id
        self.db = db
        self.executor = executor
        self.metrics = metrics or Metrics()
        self.completions = CompletionBatcher(
            db,
            max_batch=settings.concurrency,
            writers=COMPLETION_WRITERS,
            worker=self.worker,
            lease_seconds=settings.lease_seconds,
        )
        self.poller = PollWakeups(db, settings.poll_interval_seconds, on_tick=self._on_poll)
        self.wakeup_sources: list[WakeupSource] = [*(wakeup_sources or []), self.poller]
        self.running: dict[uuid.UUID, RunningStep] = {}
        self.step_tasks: set[asyncio.Task] = set()
        self.metrics_server: MetricsServer | None = None
        self.started = asyncio.Event()  # set once the service claims work
        self._wakeup = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._heartbeat_now = asyncio.Event()
        self._stopping = asyncio.Event()
        self._first_wake: tuple[str, float] | None = None
        self._claims: set[asyncio.Task] = set()
        self._reserved = 0  # slots held for claims in flight
        self._last_db_ok = time.monotonic()

    # --- control ---------------------------------------------------------------------

    def wake(self, reason: str) -> None:
        """Look for work now. Safe to call often: wake-ups before a claim coalesce.

        ``run_cancelled`` only checks the leases at once: a cancelled run's running step
        shows up as a lost lease, and cancelling makes nothing claimable.
        """
        if reason in ("run_cancelled", "run_changed"):
            self._heartbeat_now.set()
            if reason == "run_cancelled":
                return
        if self._first_wake is None:
            self._first_wake = (reason, time.perf_counter())
        self._wakeup.set()

    def stop(self) -> None:
        if not self._stopping.is_set():
            log.info("stopping: no new claims", extra={"running": len(self.running)})
            self._stopping.set()
            self.completions.hand_off = False

    def healthy(self) -> bool:
        stale_after = 3 * self.settings.poll_interval_seconds + 10
        return not self._stopping.is_set() and time.monotonic() - self._last_db_ok < stale_after

    # --- the loop --------------------------------------------------------------------

    async def run(self, *, install_signal_handlers: bool = False) -> None:
        """Serve until :meth:`stop` (or a signal), then drain and release."""
        loop = asyncio.get_running_loop()
        if self.settings.metrics_port:
            host, port = self.settings.metrics_host, self.settings.metrics_port
            try:
                self.metrics_server = MetricsServer(self.metrics, self.healthy, host, port)
            except OSError as exc:
                raise DatabaseSetupError(
                    f"cannot serve metrics on {host}:{port} (STEPSYNC_METRICS_PORT): "
                    f"{exc.strerror or exc}"
                ) from None
        try:
            await self.db.open()
        except BaseException:
            if self.metrics_server is not None:
                self.metrics_server.server.server_close()
            raise
        if self.metrics_server is not None:
            self.metrics_server.start()
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        sources = [
            asyncio.create_task(
                _keep_running(f"wake-up source {source.name}", lambda s=source: s.run(self.wake)),
                name=f"wakeup:{source.name}",
            )
            for source in self.wakeup_sources
        ]
        heartbeat = asyncio.create_task(
            _keep_running("heartbeat", self._heartbeat_loop), name="heartbeat"
        )
        log.info(
            "serving",
            extra={
                "worker": self.worker,
                "executor": self.executor.name,
                "concurrency": self.settings.concurrency,
                "wakeups": [source.name for source in self.wakeup_sources],
            },
        )
        try:
            await self._claim_loop()
        finally:
            for task in sources:
                task.cancel()
            await asyncio.gather(*sources, return_exceptions=True)
            await self._drain()
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            await self.executor.aclose()
            await self.db.close()
            if self.metrics_server is not None:
                self.metrics_server.stop()
            if install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            log.info("stopped", extra={"worker": self.worker})

    async def _claim_loop(self) -> None:
        # Up to ``claimers`` claims run at once: a claim assembles each step's context in
        # SQL, and one claim at a time would leave the other connections idle while the
        # executors wait for work. Slots of an in-flight claim are reserved up front.
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            self.started.set()
            while not self._stopping.is_set():
                free = self.settings.concurrency - len(self.running) - self._reserved
                if free <= 0 or len(self._claims) >= self.settings.claimers:
                    self._slot_free.clear()
                    await self._until(self._slot_free, stopping)
                    continue
                await self._until(self._wakeup, stopping)
                if self._stopping.is_set():
                    break
                self._wakeup.clear()
                wake, self._first_wake = self._first_wake, None
                batch = min(self.settings.batch_size, free)
                self._reserved += batch
                claim = asyncio.create_task(self._claim(batch, wake), name="claim")
                self._claims.add(claim)
                claim.add_done_callback(self._claims.discard)
        finally:
            stopping.cancel()

    async def _claim(self, batch: int, wake: tuple[str, float] | None) -> None:
        try:
            claimed = await self.db.claim_steps(self.worker, batch, self.settings.lease_seconds)
        except (psycopg.Error, OSError) as exc:
            log.warning("claim failed; retrying", extra={"error": str(exc).strip()})
            claimed = None
            if isinstance(exc, (psycopg.OperationalError, OSError)):
                await self._recover()
        finally:
            # Give the slots and the claim back before the loop looks again.
            self._reserved -= batch
            self._claims.discard(asyncio.current_task())
        if claimed is None:
            if not self._stopping.is_set():
                await asyncio.sleep(1.0)
                self.wake("retry")
            self._slot_free.set()
            return
        self._last_db_ok = time.monotonic()
        if wake is not None:
            reason, since = wake
            self.metrics.wakeup_latency.labels(reason).observe(time.perf_counter() - since)
        for request, lease in claimed:
            self._start_step(request, lease)
        if len(claimed) == batch:
            self.wake("more")  # a full batch: there is probably more waiting
        self._slot_free.set()

    @staticmethod
    async def _until(event: asyncio.Event, stopping: asyncio.Task) -> None:
        if event.is_set():
            return
        waiter = asyncio.create_task(event.wait())
        try:
            await asyncio.wait({waiter, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()

    # --- one step --------------------------------------------------------------------

    def _start_step(self, request: StepRequest, lease: Lease) -> None:
        running = RunningStep(request, lease)
        self.running[lease.step_execution_id] = running
        self.metrics.steps_claimed.inc()
        self.metrics.steps_running.inc()
        task = asyncio.create_task(
            self._run_step(running), name=f"step:{request.step_execution_id}"
        )
        self.step_tasks.add(task)
        task.add_done_callback(self.step_tasks.discard)

    async def _run_step(self, running: RunningStep) -> None:
        request = running.request
        log.info("step started", extra={**running.log_fields, "step_name": request.step_name})
        try:
            outcome = await self._execute(running)
            if outcome is not None:
                await self._report(running, *outcome)
        finally:
            self.running.pop(running.lease.step_execution_id, None)
            self.metrics.steps_running.dec()
            self._slot_free.set()
            # A slot that no handed-off step took is free: look for work now rather than
            # wait for a notification (or, polling only, the next tick).
            if not self._stopping.is_set() and not running.slot_taken_over:
                self.wake("step_done")

    async def _execute(self, running: RunningStep) -> tuple[str, Any] | None:
        """("ok", output) | ("error", StepError) | None when there is nothing to report."""
        request = running.request
        running.exec_task = asyncio.create_task(self.executor.execute(request))
        try:
            async with asyncio.timeout(request.timeout_seconds):
                output = await running.exec_task
            return "ok", json_output(output)
        except TimeoutError:
            return "error", StepError(
                f"timed out after {request.timeout_seconds:g}s", retryable=True
            )
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            if running.stop_reason == "shutdown":
                await self._release(running)
            else:
                self.metrics.steps_stale.inc()
                log.warning("lease lost; execution cancelled", extra=running.log_fields)
            return None
        except StepError as exc:
            return "error", exc
        except Exception as exc:
            log.exception("executor raised", extra=running.log_fields)
            return "error", StepError(f"{type(exc).__name__}: {exc}", retryable=True)

    async def _report(self, running: RunningStep, kind: str, value: Any) -> None:
        duration = time.monotonic() - running.started
        fields = {**running.log_fields, "duration_ms": round(duration * 1000, 1)}
        if kind == "ok":
            try:
                completion = await self._with_retries(
                    running, lambda: self.completions.complete(running.lease, value)
                )
            except psycopg.Error as exc:
                # Valid JSON that jsonb still refuses (a \u0000 in a string, say): retrying
                # cannot help, so the attempt fails for good instead of expiring.
                message = exc.diag.message_primary or str(exc).strip()
                kind, value = (
                    "error",
                    PermanentStepError(f"output refused by the database: {message}"),
                )
            else:
                if completion is None:
                    return  # could not be recorded: the lease will expire
                if completion.completed:
                    self.metrics.steps_completed.inc()
                    self.metrics.step_duration.labels("completed").observe(duration)
                    log.info("step completed", extra=fields)
                else:
                    self.metrics.steps_stale.inc()
                    log.warning("completion refused: lease lost (stale token)", extra=fields)
                if completion.next_step is not None:
                    running.slot_taken_over = await self._take_over(*completion.next_step)
                return
        error: StepError = value
        outcome = await self._with_retries(
            running,
            lambda: self.db.fail_step(running.lease, str(error), retryable=error.retryable),
        )
        fields = {**fields, "error": str(error), "retryable": error.retryable, "outcome": outcome}
        if outcome == "retrying":
            self.metrics.steps_retried.inc()
            self.metrics.step_duration.labels("retrying").observe(duration)
            log.warning("step failed; will retry", extra=fields)
        elif outcome == "failed":
            self.metrics.steps_failed.inc()
            self.metrics.step_duration.labels("failed").observe(duration)
            log.error("step failed", extra=fields)
        elif outcome == "stale":
            self.metrics.steps_stale.inc()
            log.warning("failure refused: lease lost (stale token)", extra=fields)

    async def _take_over(self, request: StepRequest, lease: Lease) -> bool:
        """Run a step handed to this worker with the result of the one before it (True);
        one that arrives after stopping began goes back to the queue at once (False)."""
        self.metrics.steps_handed_off.inc()
        if self._stopping.is_set():
            await self._release(RunningStep(request, lease))
            return False
        self._start_step(request, lease)
        return True

    async def _with_retries(self, running: RunningStep, call: Any) -> Any:
        delay = 0.2
        for attempt in range(1, REPORT_ATTEMPTS + 1):
            try:
                result = await call()
                self._last_db_ok = time.monotonic()
                return result
            except (psycopg.OperationalError, OSError) as exc:
                if attempt == REPORT_ATTEMPTS:
                    log.error(
                        "could not record the result; the lease will expire and the step run again",
                        extra={**running.log_fields, "error": str(exc).strip()},
                    )
                    return None
                await self._recover()
                await asyncio.sleep(delay)
                delay *= 2
        return None

    async def _release(self, running: RunningStep) -> None:
        released = await self._with_retries(
            running, lambda: self.db.release_steps(self.worker, [running.lease])
        )
        if released:
            self.metrics.steps_released.inc(released)
            log.info("step handed back", extra=running.log_fields)

    # --- leases ----------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heartbeat_now.wait(), timeout=interval)
            self._heartbeat_now.clear()
            beating = list(self.running.values())
            if not beating:
                continue
            try:
                held = await self.db.heartbeat_steps(
                    self.worker, [r.lease for r in beating], self.settings.lease_seconds
                )
            except (psycopg.Error, OSError) as exc:
                log.warning("heartbeat failed", extra={"error": str(exc).strip()})
                if isinstance(exc, (psycopg.OperationalError, OSError)):
                    await self._recover()
                continue
            self._last_db_ok = time.monotonic()
            for running in beating:
                if running.lease.step_execution_id in held:
                    continue
                still_running = self.running.get(running.lease.step_execution_id) is running
                if still_running and running.exec_task is not None and not running.exec_task.done():
                    running.stop_reason = "lease_lost"
                    running.exec_task.cancel()

    async def _drain(self) -> None:
        """Give running steps the grace period, then cancel and hand back the rest."""
        if self._claims:
            # Steps a claim in flight returns are ours too: let them start, then drain.
            await asyncio.wait(set(self._claims), timeout=30)
        if self.step_tasks:
            log.info(
                "waiting for running steps",
                extra={
                    "running": len(self.step_tasks),
                    "grace_seconds": self.settings.shutdown_grace_seconds,
                },
            )
            _, pending = await asyncio.wait(
                set(self.step_tasks), timeout=self.settings.shutdown_grace_seconds
            )
            if pending:
                for running in list(self.running.values()):
                    if running.exec_task is not None and not running.exec_task.done():
                        running.stop_reason = "shutdown"
                        running.exec_task.cancel()
                await asyncio.wait(pending, timeout=10)

    async def _recover(self) -> None:
        # Pooled connections are not checked on checkout; after a connection error
        # replace the broken idle ones before the retry.
        try:
            await self.db.recover()
        except Exception as exc:  # the retry reports the database's state itself
            log.warning("pool check failed", extra={"error": str(exc).strip()})

    async def _on_poll(self, reaped: int) -> None:
        if reaped:
            self.metrics.leases_reaped.inc(reaped)
        self.metrics.queue_depth.set(await self.db.queue_depth())
        self._last_db_ok = time.monotonic()


async def _keep_running(name: str, run: Any) -> None:
    """Run a background loop; a bug in it is logged and the loop restarted, because a
    silently dead heartbeat or listener would only show up as lost leases or lag."""
    while True:
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(f"{name} failed; restarting it")
            await asyncio.sleep(1.0)


def build_service(
    settings: Settings, database_url: str, *, executor: Executor | None = None
) -> StepService:
    """The service as ``stepsync serve`` runs it, from settings alone."""
    from sync.executors import executor_from_setting
    from sync.wakeups.postgres import PostgresWakeups

    db = Database(
        database_url,
        role=settings.db_role,
        size=settings.pool_size,
        transaction_pooler=settings.db_transaction_pooler,
    )
    sources: list[WakeupSource] = []
    if "postgres" in settings.listen:
        sources.append(PostgresWakeups(database_url))
    if "realtime" in settings.listen:
        from sync.wakeups.realtime import realtime_source

        sources.append(realtime_source(settings))
    return StepService(
        settings,
        db=db,
        executor=executor or executor_from_setting(settings.executor, settings),
        wakeup_sources=sources,
    )
