"""All database access of the service and the run commands: one pool, named queries.

The rules (who may run what, ordering, fencing, retries, context) live in SQL functions;
this module only calls them, acting as the service role, the only role allowed to execute
the ``stepsync.*`` functions (how the role is set: :mod:`sync.connections`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sync.connections import Connector
from sync.executors.base import StepRequest

# --- named queries -------------------------------------------------------------------

CLAIM_STEPS = """
select step_execution_id, run_id, lease_token, task_id, user_id, agent_id, step_order,
       step_name, instructions, context, attempt, timeout_seconds, idempotency_key,
       conversation_id, trigger_data
  from stepsync.claim_steps(%(worker)s, %(batch)s, %(lease_seconds)s)
"""
HEARTBEAT_STEPS = """
select held from stepsync.heartbeat_steps(
    %(worker)s, %(ids)s::uuid[], %(tokens)s::bigint[], %(lease_seconds)s
) as held
"""
COMPLETE_STEPS = """
select done.step_execution_id as done_id, done.completed, done.refused, (done.next_step).*
  from stepsync.complete_steps(
      %(ids)s::uuid[], %(tokens)s::bigint[], %(outputs)s::jsonb[], %(worker)s, %(lease_seconds)s
  ) as done
"""
FAIL_STEP = "select stepsync.fail_step(%(id)s, %(token)s, %(error)s, %(retryable)s)"
RELEASE_STEPS = "select stepsync.release_steps(%(worker)s, %(ids)s::uuid[], %(tokens)s::bigint[])"
REAP_EXPIRED_LEASES = "select stepsync.reap_expired_leases(%(grace_seconds)s)"
QUEUE_DEPTH = "select stepsync.queue_depth()"
START_TASK_RUN = "select public.start_task_run(%(task_id)s, %(trigger_type)s, %(trigger_data)s)"
CANCEL_TASK_RUN = "select public.cancel_task_run(%(run_id)s, %(compensate)s)"
RESUME_TASK_RUN = (
    "select public.resume_task_run(%(run_id)s, %(from_step)s::integer, %(start_over)s)"
)
RECENT_RUNS = """
select r.id, r.task_id, t.name as task_name, r.status::text as status,
       r.outcome::text as outcome, r.compensation::text as compensation, r.trigger_type,
       r.created_at, r.started_at, r.completed_at, r.duration_ms, r.error_message,
       r.resumed_from_run_id,
       (select count(*) from public.task_step_executions s
         where s.run_id = r.id and s.kind = 'step') as steps,
       (select count(*) from public.task_step_executions s
         where s.run_id = r.id and s.kind = 'step'
           and s.status in ('completed', 'skipped')) as steps_done,
       r.steps_failed
  from public.agent_task_executions r
  join public.agent_tasks t on t.id = r.task_id
 where %(task_id)s::uuid is null or r.task_id = %(task_id)s::uuid
 order by r.created_at desc
 limit %(limit)s
"""
RUN = """
select r.id, r.task_id, t.name as task_name, r.status::text as status,
       r.outcome::text as outcome, r.compensation::text as compensation, r.trigger_type,
       r.created_at, r.started_at, r.completed_at, r.duration_ms, r.error_message,
       r.resumed_from_run_id, r.steps_failed
  from public.agent_task_executions r
  join public.agent_tasks t on t.id = r.task_id
 where r.id = %(run_id)s
"""
RUN_STEPS = """
select id, step_order, step_name, status::text as status, attempt, max_attempts,
       started_at, completed_at, duration_ms, error_message, output, run_after,
       input_context, skip_reason, kind::text as kind, compensates_step_order, reused_from
  from public.task_step_executions
 where run_id = %(run_id)s
 order by step_order
"""

CLAIM_DUE_SCHEDULES = """
select task_id, user_id, cron_expression, timezone, next_run_at, start_date, end_date
  from stepsync.claim_due_schedules(%(now)s, %(limit)s)
"""
FIRE_SCHEDULES = """
select task_id, fire_at, outcome, run_id, detail
  from stepsync.fire_schedules(
      %(now)s, %(worker)s, %(task_ids)s::uuid[], %(due_ats)s::timestamptz[],
      %(fire_ats)s::timestamptz[], %(next_run_ats)s::timestamptz[], %(missed)s::integer[],
      %(details)s::jsonb[]
  )
"""
OPEN_CHAT_TURN = """
select stepsync.open_chat_turn(
    %(run_id)s, %(step_execution_id)s, %(agent_id)s, %(derived_conversation_id)s,
    %(session_id)s, %(text)s
)
"""
TOUCH_CHAT_SESSION = (
    "select stepsync.touch_chat_session(%(conversation_id)s, %(agent_id)s, %(user_id)s)"
)

RUN_FINISHED_STATUSES = frozenset({"completed", "failed", "cancelled"})
CONNECT_HINT = (
    "check --database-url / STEPSYNC_DATABASE_URL, or unset it to use the embedded database"
)


class DatabaseSetupError(Exception):
    """The service cannot start: database unreachable, wrong role, not migrated, or a
    resource it needs (the metrics port) unavailable. The message says which, the hint
    what to do about it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Lease:
    """What proves this worker still owns a claimed step (the fencing token)."""

    step_execution_id: uuid.UUID
    token: int


@dataclass(frozen=True)
class LeasedStep:
    """A step this worker holds, claimed or handed off: what to run, and the lease that
    proves it is ours (every report about it must show the lease's token)."""

    request: StepRequest
    lease: Lease


FailOutcome = Literal["retrying", "failed", "stale"]


@dataclass(frozen=True)
class Completion:
    """What completing one step did. ``completed`` False: the lease was no longer ours and
    nothing changed, unless ``refused`` says why the database refused the output (over the
    size or nesting limit): the step failed instead. ``next_step``: the run's next step,
    leased to this worker (hand-off)."""

    completed: bool
    next_step: LeasedStep | None = None
    refused: str | None = None


@dataclass(frozen=True)
class DueSchedule:
    """A scheduled task claimed for firing (``stepsync.due_schedule``)."""

    task_id: uuid.UUID
    user_id: uuid.UUID
    cron_expression: str | None
    timezone: str
    next_run_at: datetime | None
    start_date: datetime | None
    end_date: datetime | None


@dataclass(frozen=True)
class FirePlan:
    """What the cron arithmetic says about one claimed task (see ``fire_schedules``)."""

    task_id: uuid.UUID
    due_at: datetime | None
    fire_at: datetime | None
    next_run_at: datetime | None
    missed: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FireDecision:
    """What became of one fire time (a row of ``task_schedule_fires``)."""

    task_id: uuid.UUID
    fire_at: datetime
    outcome: str
    run_id: uuid.UUID | None
    detail: str | None


@dataclass(frozen=True)
class FireBatch:
    """One claim-and-fire transaction: tasks claimed, fire times decided, and tasks whose
    next fire time was only moved (none due now)."""

    claimed: int
    decisions: list[FireDecision]
    advanced: int


def _lease_arrays(leases: list[Lease]) -> dict[str, list]:
    """The ``ids`` and ``tokens`` parameters of the functions that take leases in bulk."""
    return {
        "ids": [lease.step_execution_id for lease in leases],
        "tokens": [lease.token for lease in leases],
    }


def leased_step(row: dict[str, Any]) -> LeasedStep:
    """The one decoding of a leased step, from a claim's row or a hand-off's (same columns)."""
    return LeasedStep(
        request=StepRequest(
            run_id=row["run_id"],
            step_execution_id=row["step_execution_id"],
            task_id=row["task_id"],
            user_id=row["user_id"],
            agent_id=row["agent_id"],
            step_order=row["step_order"],
            step_name=row["step_name"],
            instructions=row["instructions"],
            context=row["context"] if row["context"] is not None else {},
            attempt=row["attempt"],
            timeout_seconds=float(row["timeout_seconds"]),
            idempotency_key=row["idempotency_key"],
            conversation_id=row["conversation_id"],
            trigger_data=row["trigger_data"] or {},
        ),
        lease=Lease(row["step_execution_id"], row["lease_token"]),
    )


class Database:
    """The service's connection pool and every query it runs."""

    def __init__(
        self,
        url: str,
        *,
        role: str = "service_role",
        size: int = 4,
        transaction_pooler: bool = False,
        application_name: str = "stepsync-service",
        session_role: bool = True,
        statement_timeout_seconds: float | None = None,
    ) -> None:
        self.url = url
        self.role = role
        # Behind a transaction-mode pooler every query runs in its own transaction that
        # sets the role locally, and nothing is prepared (see sync.connections).
        self.connector = Connector(
            url,
            role=role,
            transaction_pooler=transaction_pooler,
            application_name=application_name,
            statement_timeout_seconds=statement_timeout_seconds,
        )
        # No check on checkout: it would cost a round trip per query (two per step).
        # A connection that broke while idle fails its first query instead; the
        # service retries after connection errors and calls recover() first.
        # The service's steps set the role once per connection when the connection is
        # direct (no extra statement per query); commands set it per transaction.
        self.session_role = session_role and self.connector.session_role_allowed()
        self.pool = self.connector.async_pool(
            max_size=size, name="stepsync", session_role=self.session_role, row_factory=dict_row
        )

    @classmethod
    def from_connector(cls, connector: Connector, *, size: int = 2) -> Database:
        """A small pool for a command, acting as the connector's role."""
        if connector.role is None:
            raise ValueError("the run engine's functions need a role to act as")
        return cls(
            connector.url,
            role=connector.role,
            size=size,
            transaction_pooler=connector.transaction_pooler,
            application_name=connector.application_name,
            session_role=False,
            statement_timeout_seconds=connector.statement_timeout_seconds,
        )

    async def open(self, timeout: float = 10.0) -> None:
        """Prove one connection works (role included), then open the pool.

        Raises DatabaseSetupError with a message a user can act on.
        """
        try:
            conn = await self.connector.connect_async(connect_timeout=max(1, int(timeout)))
        except psycopg.Error as exc:
            raise DatabaseSetupError(
                f"cannot connect to the database: {str(exc).strip()}", CONNECT_HINT
            ) from None
        async with conn:
            try:
                async with self.connector.acting_async(conn):
                    installed = await (
                        await conn.execute(
                            "select to_regprocedure('stepsync.claim_steps(text,integer,integer)')"
                        )
                    ).fetchone()
            except psycopg.Error as exc:
                raise DatabaseSetupError(
                    f"cannot switch to role {self.role!r} (STEPSYNC_DB_ROLE): {str(exc).strip()}",
                    "the login role must be a member of that role (Supabase's postgres is)",
                ) from None
            if installed[0] is None:
                raise DatabaseSetupError(
                    "the run engine is not installed (stepsync.claim_steps is missing)",
                    "apply the migrations: `stepsync db push` or `supabase db push`",
                )
        await self.pool.open(wait=True, timeout=timeout)

    async def close(self) -> None:
        await self.pool.close()

    async def recover(self) -> None:
        """After a connection error: test the idle connections and replace the broken
        ones (a server restart breaks them all at once), so the retry gets a live one."""
        await self.pool.check()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """One transaction on a pooled connection, acting as the role; commits unless the
        block raises."""
        async with self.pool.connection() as conn:
            if self.session_role:
                async with conn.transaction():
                    yield conn
            else:
                async with self.connector.acting_async(conn):
                    yield conn

    async def _one(self, query: str, params: dict[str, Any] | None = None) -> Any:
        rows = await self._all(query, params)
        return next(iter(rows[0].values())) if rows else None

    async def _all(self, query: str, params: dict[str, Any] | None = None) -> list[dict]:
        async with self.pool.connection() as conn:
            if self.session_role:
                return await (await conn.execute(query, params)).fetchall()
            async with self.connector.acting_async(conn):
                return await (await conn.execute(query, params)).fetchall()

    # --- the run engine --------------------------------------------------------------

    async def claim_steps(self, worker: str, batch: int, lease_seconds: int) -> list[LeasedStep]:
        rows = await self._all(
            CLAIM_STEPS, {"worker": worker, "batch": batch, "lease_seconds": lease_seconds}
        )
        return [leased_step(row) for row in rows]

    async def heartbeat_steps(
        self, worker: str, leases: list[Lease], lease_seconds: int
    ) -> set[uuid.UUID]:
        """Extend the leases; returns the step execution ids this worker still holds."""
        if not leases:
            return set()
        rows = await self._all(
            HEARTBEAT_STEPS,
            {"worker": worker, **_lease_arrays(leases), "lease_seconds": lease_seconds},
        )
        return {row["held"] for row in rows}

    async def complete_steps(
        self,
        results: list[tuple[Lease, Any]],
        *,
        worker: str | None = None,
        lease_seconds: int | None = None,
    ) -> dict[uuid.UUID, Completion]:
        """Complete several steps in one transaction, per step id what it did. With
        ``worker``, each run's plainly due next step is leased to it (hand-off)."""
        rows = await self._all(
            COMPLETE_STEPS,
            {
                **_lease_arrays([lease for lease, _ in results]),
                "outputs": [Jsonb(output) for _, output in results],
                "worker": worker,
                "lease_seconds": lease_seconds,
            },
        )
        return {
            row["done_id"]: Completion(
                row["completed"],
                leased_step(row) if row["step_execution_id"] else None,
                row["refused"],
            )
            for row in rows
        }

    async def fail_step(self, lease: Lease, error: str, *, retryable: bool) -> FailOutcome:
        return await self._one(
            FAIL_STEP,
            {
                "id": lease.step_execution_id,
                "token": lease.token,
                "error": error,
                "retryable": retryable,
            },
        )

    async def release_steps(self, worker: str, leases: list[Lease]) -> int:
        if not leases:
            return 0
        return await self._one(
            RELEASE_STEPS,
            {"worker": worker, **_lease_arrays(leases)},
        )

    async def reap_expired_leases(self, grace_seconds: int = 0) -> int:
        """Reap expired leases, none within ``grace_seconds`` of the database's start."""
        return await self._one(REAP_EXPIRED_LEASES, {"grace_seconds": grace_seconds})

    async def queue_depth(self) -> int:
        return await self._one(QUEUE_DEPTH)

    # --- schedules ----------------------------------------------------------------------

    async def fire_due_schedules(
        self,
        now: datetime,
        limit: int,
        worker: str,
        planner: Callable[[DueSchedule], FirePlan | None],
    ) -> FireBatch:
        """Claim up to ``limit`` due scheduled tasks, plan each (``planner``: the cron
        arithmetic) and fire them, all in one transaction, so a claimed task's fire time is
        decided and its next one recorded before any other worker can take it."""
        async with self.transaction() as conn:
            cursor = await conn.execute(CLAIM_DUE_SCHEDULES, {"now": now, "limit": limit})
            claimed = [DueSchedule(**row) for row in await cursor.fetchall()]
            plans = [p for p in map(planner, claimed) if p is not None]
            if not plans:
                return FireBatch(len(claimed), [], 0)
            cursor = await conn.execute(
                FIRE_SCHEDULES,
                {
                    "now": now,
                    "worker": worker,
                    "task_ids": [p.task_id for p in plans],
                    "due_ats": [p.due_at for p in plans],
                    "fire_ats": [p.fire_at for p in plans],
                    "next_run_ats": [p.next_run_at for p in plans],
                    "missed": [p.missed for p in plans],
                    "details": [Jsonb(p.details) for p in plans],
                },
            )
            decisions = [FireDecision(**row) for row in await cursor.fetchall()]
        decided = {d.task_id for d in decisions}
        advanced = sum(1 for p in plans if p.task_id not in decided and p.next_run_at != p.due_at)
        return FireBatch(len(claimed), decisions, advanced)

    # --- the app's chat tables (agentopia_chat) ------------------------------------------

    async def open_chat_turn(
        self,
        request: StepRequest,
        *,
        derived_conversation_id: uuid.UUID,
        session_id: uuid.UUID,
        text: str,
    ) -> uuid.UUID:
        """Before a step's chat call: the run's conversation (returned), its session
        touched and the prompt posted as the user's message (``stepsync.open_chat_turn``)."""
        return await self._one(
            OPEN_CHAT_TURN,
            {
                "run_id": request.run_id,
                "step_execution_id": request.step_execution_id,
                "agent_id": request.agent_id,
                "derived_conversation_id": derived_conversation_id,
                "session_id": session_id,
                "text": text,
            },
        )

    async def touch_chat_session(
        self, conversation_id: uuid.UUID, agent_id: uuid.UUID, user_id: uuid.UUID
    ) -> bool:
        return await self._one(
            TOUCH_CHAT_SESSION,
            {"conversation_id": conversation_id, "agent_id": agent_id, "user_id": user_id},
        )

    # --- runs (the CLI) --------------------------------------------------------------

    async def start_task_run(
        self, task_id: uuid.UUID, trigger_type: str = "manual", trigger_data: dict | None = None
    ) -> uuid.UUID:
        return await self._one(
            START_TASK_RUN,
            {
                "task_id": task_id,
                "trigger_type": trigger_type,
                "trigger_data": Jsonb(trigger_data or {}),
            },
        )

    async def cancel_task_run(self, run_id: uuid.UUID, *, compensate: bool = False) -> bool:
        return bool(await self._one(CANCEL_TASK_RUN, {"run_id": run_id, "compensate": compensate}))

    async def resume_task_run(
        self, run_id: uuid.UUID, *, from_step: int | None = None, start_over: bool = False
    ) -> uuid.UUID:
        """A new run that reuses the recorded outcomes of ``run_id``'s steps before
        ``from_step`` (default: its first step that did not complete)."""
        return await self._one(
            RESUME_TASK_RUN, {"run_id": run_id, "from_step": from_step, "start_over": start_over}
        )

    async def recent_runs(self, *, task_id: uuid.UUID | None = None, limit: int = 20) -> list:
        return await self._all(RECENT_RUNS, {"task_id": task_id, "limit": limit})

    async def run(self, run_id: uuid.UUID) -> dict | None:
        rows = await self._all(RUN, {"run_id": run_id})
        return rows[0] if rows else None

    async def run_steps(self, run_id: uuid.UUID) -> list[dict]:
        return await self._all(RUN_STEPS, {"run_id": run_id})
