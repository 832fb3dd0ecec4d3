"""The service loop: wake → claim → start a runner per step, N steps at a time.

Wake-up sources (LISTEN, the poll timer) only set an event; the database decides what
runs (``stepsync.claim_steps``). Each claimed step gets a :class:`~sync.runner.StepRunner`
as its own asyncio task: it executes the step under its timeout and reports the outcome
(:mod:`sync.runner`). A completion can bring back its run's next step, leased to this
worker (hand-off), which then runs in the slot just freed. One heartbeat task keeps all
leases alive and notices lost ones (lease expired, run cancelled), whose executions it
cancels: their results would be refused by the fencing token anyway. The reaper
(:mod:`sync.maintenance`) hands expired leases back on its own timer, and the scheduler
(:mod:`sync.scheduler`) starts scheduled tasks' runs at their fire times on its own.

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
from collections.abc import Awaitable, Callable

import psycopg

from sync import retrying
from sync.completions import CompletionBatcher
from sync.db import Database, DatabaseSetupError, LeasedStep
from sync.executors.base import Executor
from sync.maintenance import Reaper
from sync.metrics import Metrics, MetricsServer
from sync.runner import HandedBack, LeaseLost, RunnerContext, StepRunner
from sync.scheduler import Scheduler
from sync.settings import Settings
from sync.wakeups.base import WakeupSource
from sync.wakeups.poll import PollWakeups

log = logging.getLogger(__name__)

# Result writes in flight at once: while one batch commits, the next ones are already
# being written rather than only gathered, and one slow commit does not hold back every
# result. With a no-op executor and 4 connections, three writers kept three or four
# statements active most of the time, two writers mostly two (docs/service.md).
COMPLETION_WRITERS = 3


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
        self.runner_context = RunnerContext(
            executor=executor,
            db=db,
            completions=self.completions,
            metrics=self.metrics,
            worker=self.worker,
            take_over=self._take_over,
            recover=self._recover,
            db_ok=self._db_ok,
        )
        self.poller = PollWakeups(settings.poll_interval_seconds)
        self.wakeup_sources: list[WakeupSource] = [*(wakeup_sources or []), self.poller]
        self.reaper = Reaper(
            db,
            settings.reap_every_seconds,
            metrics=self.metrics,
            grace_seconds=settings.lease_seconds,
            db_ok=self._db_ok,
        )
        self.scheduler = (
            Scheduler(
                db,
                settings.schedule_interval_seconds,
                batch_size=settings.schedule_batch_size,
                worker=self.worker,
                metrics=self.metrics,
                db_ok=self._db_ok,
            )
            if settings.scheduler
            else None
        )
        # Executors that write to the database too (the app's chat tables) get the pool.
        attach_database = getattr(executor, "attach_database", None)
        if attach_database is not None:
            attach_database(db)
        self.running: dict[uuid.UUID, StepRunner] = {}
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
        tick = min(self.settings.poll_interval_seconds, self.settings.reap_every_seconds)
        stale_after = 3 * tick + 10
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
        # Wake-up sources, the reaper and the scheduler stop before the drain; heartbeats go
        # on through it.
        background = [
            asyncio.create_task(
                _keep_running(f"wake-up source {source.name}", lambda s=source: s.run(self.wake)),
                name=f"wakeup:{source.name}",
            )
            for source in self.wakeup_sources
        ]
        background.append(
            asyncio.create_task(
                _keep_running("reaper", lambda: self.reaper.run(self.wake)), name="reaper"
            )
        )
        if self.scheduler is not None:
            scheduler = self.scheduler
            background.append(
                asyncio.create_task(
                    _keep_running("scheduler", lambda: scheduler.run(self.wake)),
                    name="scheduler",
                )
            )
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
                "reap_interval_seconds": self.settings.reap_every_seconds,
                "scheduler": self.scheduler is not None,
            },
        )
        try:
            await self._claim_loop()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
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
            # Through an outage the claim is retried until it works or the service stops.
            claimed = await retrying.call(
                lambda: self.db.claim_steps(self.worker, batch, self.settings.lease_seconds),
                retrying.CLAIM,
                "claim",
                before_retry=self._recover,
                until=self._stopping,
            )
        except (psycopg.Error, OSError) as exc:
            # Refused (not a connection error) or stopping: the next wake-up tries again.
            log.warning("claim failed", extra={"error": retrying.one_line(exc)})
            claimed = []
        else:
            self._db_ok()
            if wake is not None:
                reason, since = wake
                self.metrics.wakeup_latency.labels(reason).observe(time.perf_counter() - since)
        finally:
            # Give the slots and the claim back before the loop looks again.
            self._reserved -= batch
            self._claims.discard(asyncio.current_task())
        for step in claimed:
            self._start(step)
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

    # --- step runners ----------------------------------------------------------------

    def _start(self, step: LeasedStep) -> None:
        runner = StepRunner(step, self.runner_context)
        self.running[step.lease.step_execution_id] = runner
        self.metrics.steps_claimed.inc()
        self.metrics.steps_running.inc()
        task = asyncio.create_task(self._run(runner), name=f"step:{step.lease.step_execution_id}")
        self.step_tasks.add(task)
        task.add_done_callback(self.step_tasks.discard)

    async def _run(self, runner: StepRunner) -> None:
        try:
            await runner.run()
        finally:
            self.running.pop(runner.step.lease.step_execution_id, None)
            self.metrics.steps_running.dec()
            self._slot_free.set()
            # A slot that no handed-off step took is free: look for work now rather than
            # wait for a notification (or, polling only, the next tick).
            if not self._stopping.is_set() and not runner.slot_taken_over:
                self.wake("step_done")

    async def _take_over(self, step: LeasedStep) -> bool:
        """Run a step handed to this worker with the result of the one before it (True);
        one that arrives after stopping began goes back to the queue at once (False)."""
        self.metrics.steps_handed_off.inc()
        if self._stopping.is_set():
            await StepRunner(step, self.runner_context).report(HandedBack())
            return False
        self._start(step)
        return True

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
                    self.worker, [r.step.lease for r in beating], self.settings.lease_seconds
                )
            except (psycopg.Error, OSError) as exc:
                # Not retried at once: the next beat comes well within the lease.
                log.warning("heartbeat failed", extra={"error": retrying.one_line(exc)})
                if retrying.is_connection_error(exc):
                    await self._recover()
                continue
            self._db_ok()
            for runner in beating:
                step_id = runner.step.lease.step_execution_id
                if step_id not in held and self.running.get(step_id) is runner:
                    runner.cancel(LeaseLost())

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
                for runner in list(self.running.values()):
                    runner.cancel(HandedBack())
                await asyncio.wait(pending, timeout=10)

    async def _recover(self) -> None:
        # Pooled connections are not checked on checkout; after a connection error
        # replace the broken idle ones before the retry.
        try:
            await self.db.recover()
        except Exception as exc:  # the retry reports the database's state itself
            log.warning("pool check failed", extra={"error": retrying.one_line(exc)})

    def _db_ok(self) -> None:
        self._last_db_ok = time.monotonic()


async def _keep_running(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """Run a background loop; a bug in it is logged and the loop restarted, because a
    silently dead heartbeat or listener would only show up as lost leases or lag."""
    async for attempt in retrying.loop(retrying.RESTART, name):
        with attempt:
            await run()


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
        statement_timeout_seconds=settings.db_statement_timeout_seconds,
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
