"""The scheduler: starts scheduled tasks' runs at their fire times (inside ``stepsync serve``).

Every ``schedule_interval_seconds`` it takes the due tasks of users in the
``multi_step_workflows`` rollout, a batch at a time, each batch in one transaction:

1. ``stepsync.claim_due_schedules(now)`` locks due tasks (``FOR UPDATE SKIP LOCKED``, so
   any number of processes share the work and never hold one task twice);
2. here, the cron arithmetic (:mod:`sync.cron`): the fire time due, the missed ones, the
   next one;
3. ``stepsync.fire_schedules`` applies the rules (limits, end date, a run still running,
   a fire time the legacy executor ran), starts the runs, records each decision and moves
   ``next_run_at`` on, before the transaction commits.

"now" is a parameter all the way down (the ``clock``), so tests move time instead of
waiting for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from sync import cron
from sync.db import Database, DueSchedule, FireDecision, FirePlan
from sync.metrics import Metrics
from sync.retrying import one_line
from sync.wakeups.base import Wake

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


def plan(task: DueSchedule, now: datetime) -> FirePlan | None:
    """What to do with one claimed task at ``now`` (None: nothing can be done with it)."""
    schedule = None
    if task.cron_expression is not None:
        try:
            schedule = cron.parse(task.cron_expression, task.timezone)
        except cron.CronError as exc:
            if task.next_run_at is None:
                return None  # nothing to compute a first fire time from
            # A row older than the write checks: its recorded fire time still runs, once,
            # as the legacy executor would have done (and then had no next one).
            log.warning(
                "unreadable schedule: running the recorded fire time, no next one",
                extra={"task_id": str(task.task_id), "error": str(exc)},
            )
    fire = cron.due(schedule, task.next_run_at, now, task.start_date)
    details: dict[str, Any] = {"timezone": task.timezone}
    if task.cron_expression is not None:
        details["cron_expression"] = task.cron_expression
    if fire.fire_at is not None and schedule is not None:
        details["fire_at_local"] = schedule.local(fire.fire_at).isoformat()
    if fire.missed:
        details["first_missed_at"] = fire.first_missed_at.isoformat()
        if fire.missed_at_least:
            details["missed_fire_times_at_least"] = True
    return FirePlan(
        task_id=task.task_id,
        due_at=task.next_run_at,
        fire_at=fire.fire_at,
        next_run_at=fire.next_run_at,
        missed=fire.missed,
        details=details,
    )


@dataclass
class TickResult:
    """What one tick did: the fire times decided, and how many tasks only had their next
    fire time set (a first one, or the first after their start_date)."""

    decisions: list[FireDecision]
    advanced: int = 0

    @property
    def started(self) -> int:
        return sum(1 for d in self.decisions if d.outcome == "started")


class Scheduler:
    name = "scheduler"

    def __init__(
        self,
        db: Database,
        interval_seconds: float,
        *,
        batch_size: int,
        worker: str,
        metrics: Metrics,
        clock: Callable[[], datetime] = utc_now,
        db_ok: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.interval_seconds = interval_seconds
        self.batch_size = batch_size
        self.worker = worker
        self.metrics = metrics
        self.clock = clock
        self.db_ok = db_ok
        self._unplannable: set[tuple] = set()  # reported once per process

    async def run(self, wake: Wake) -> None:
        while True:
            await self.tick(wake)
            await asyncio.sleep(self.interval_seconds)

    async def tick(self, wake: Wake | None = None, *, now: datetime | None = None) -> TickResult:
        """Fire everything due at ``now`` (default: the clock), batch after batch."""
        now = now or self.clock()
        result = TickResult([])
        try:
            while True:
                batch = await self.db.fire_due_schedules(
                    now, self.batch_size, self.worker, lambda task: self._plan(task, now)
                )
                result.decisions += batch.decisions
                result.advanced += batch.advanced
                # A full batch that changed nothing holds only tasks nothing can be done
                # with: the next tick looks again.
                if batch.claimed < self.batch_size or not (batch.decisions or batch.advanced):
                    break
        except (psycopg.Error, OSError) as exc:
            # The next tick is the retry: nothing was fired in the failed transaction.
            log.warning("firing schedules failed", extra={"error": one_line(exc)})
            return result
        self.db_ok()
        self._account(result)
        if result.started and wake is not None:
            wake("scheduled")
        return result

    def _plan(self, task: DueSchedule, now: datetime) -> FirePlan | None:
        decided = plan(task, now)
        if decided is None:
            key = (task.task_id, task.cron_expression, task.timezone)
            if key not in self._unplannable:
                self._unplannable.add(key)
                log.warning(
                    "scheduled task has an unreadable schedule; it is not run",
                    extra={
                        "task_id": str(task.task_id),
                        "cron_expression": task.cron_expression,
                        "timezone": task.timezone,
                    },
                )
        return decided

    def _account(self, result: TickResult) -> None:
        for decision in result.decisions:
            self.metrics.schedule_fires.labels(decision.outcome).inc()
            fields = {
                "task_id": str(decision.task_id),
                "fire_at": decision.fire_at.isoformat(),
                "outcome": decision.outcome,
            }
            if decision.run_id is not None:
                fields["run_id"] = str(decision.run_id)
            if decision.detail:
                fields["detail"] = decision.detail
            # A skipped or refused fire time is worth a look; the others are routine.
            level = logging.WARNING if decision.outcome in ("skipped", "refused") else logging.INFO
            log.log(level, "fire time decided", extra=fields)
