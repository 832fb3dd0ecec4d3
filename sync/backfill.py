"""Legacy single-instruction tasks become single-step workflows: plan, run, verify, roll back.

All the work is done by the set-based SQL functions of
``supabase/schemas/0230_backfill_functions.sql``; this module drives them one batch per
short transaction, with ``lock_timeout`` and ``statement_timeout`` set for that
transaction, retries a batch that lost a lock race, pauses between batches, and reports
progress. Memory stays flat: nothing but counters and a few sample ids is kept between
batches.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sync.connections import Connector, RoleConnection, SessionStateError

APPLICATION_NAME = "stepsync backfill"
# One backfill or rollback at a time per database (a session lock: a killed process
# releases it with its connection; so no backfill through a transaction pooler).
ADVISORY_LOCK_KEY = "stepsync.backfill.legacy_tasks"

# Categories of the run counters, in report order, and whether a non-zero count needs
# someone to look at it.
CATEGORIES: dict[str, tuple[str, bool]] = {
    "steps_created": ("step 1 created", False),
    "already_has_steps": ("already had steps", False),
    "marker_with_steps": ("multi-step marker, steps present", False),
    "marker_without_steps": ("multi-step marker, steps missing (not restorable)", True),
    "blank_instructions": ("empty or whitespace instructions (no step)", True),
    "oversized_instructions": ("instructions over a step's size limit (no step)", True),
    "long_instructions": ("  of which very long instructions (>10,000 chars)", False),
    "unnamed": ("  of which blank task name (name derived)", False),
    "status_paused": ("  of which paused tasks (step pending)", False),
    "status_completed": ("  of which completed tasks (step completed)", False),
    "status_failed": ("  of which failed tasks (step failed)", False),
    "status_cancelled": ("  of which cancelled tasks (step cancelled)", False),
}
# The dry run calls "steps_created" what it would create.
PLAN_KEYS = {"to_create": "steps_created"}

# Errors a batch can meet on a busy database; the batch rolled back, so it is retried.
RETRYABLE = (
    errors.LockNotAvailable,
    errors.DeadlockDetected,
    errors.SerializationFailure,
    errors.ExclusionViolation,
    errors.QueryCanceled,
)


class BackfillError(Exception):
    """A problem the operator must act on (bad run id, a concurrent backfill, ...)."""


@dataclass(frozen=True)
class Settings:
    batch_size: int = 5000
    pause_seconds: float = 0.0
    lock_timeout_ms: int = 2000
    statement_timeout_ms: int = 60000
    attempts: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 100_000:
            raise BackfillError(f"batch size must be between 1 and 100000, got {self.batch_size}")
        if self.pause_seconds < 0:
            raise BackfillError(f"pause must be 0 or more seconds, got {self.pause_seconds}")
        for name in ("lock_timeout_ms", "statement_timeout_ms", "attempts"):
            if getattr(self, name) < 1:
                raise BackfillError(f"{name} must be at least 1, got {getattr(self, name)}")

    def as_json(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "pause_seconds": self.pause_seconds,
            "lock_timeout_ms": self.lock_timeout_ms,
            "statement_timeout_ms": self.statement_timeout_ms,
        }


@dataclass
class Progress:
    """Where a long operation is, for progress displays."""

    done: int
    total: int
    created: int
    batches: int
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def advance(self, done: int, created: int) -> None:
        """One more batch: ``done`` more items seen, ``created`` in all so far."""
        self.done += done
        # The count taken at the start can be passed by tasks inserted since.
        self.total = max(self.total, self.done)
        self.created = created
        self.batches += 1

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[Progress], None]


def _ignore(_: Progress) -> None:
    pass


@dataclass(frozen=True)
class Run:
    id: uuid.UUID
    status: str
    batch_size: int
    last_task_id: uuid.UUID | None
    batches: int
    tasks_scanned: int
    tasks_at_start: int | None
    counts: dict[str, int]
    rolled_back_steps: int
    rollback_kept_steps: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Run:
        return cls(
            id=row["id"],
            status=row["status"],
            batch_size=row["batch_size"],
            last_task_id=row["last_task_id"],
            batches=row["batches"],
            tasks_scanned=row["tasks_scanned"],
            tasks_at_start=row["tasks_at_start"],
            counts={key: row[key] for key in CATEGORIES},
            rolled_back_steps=row["rolled_back_steps"],
            rollback_kept_steps=row["rollback_kept_steps"],
        )

    @property
    def needs_attention(self) -> bool:
        return self.status == "running" or any(
            self.counts[key] for key, (_, attention) in CATEGORIES.items() if attention
        )


@dataclass
class Plan:
    tasks_scanned: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    samples: dict[str, list[uuid.UUID]] = field(default_factory=dict)

    @property
    def needs_attention(self) -> bool:
        return any(self.counts[key] for key, (_, attention) in CATEGORIES.items() if attention)


@dataclass
class VerifyReport:
    tasks_scanned: int = 0
    eligible: int = 0
    verified: int = 0
    tasks_checksum: int = 0
    steps_checksum: int = 0
    exception_count: int = 0
    exceptions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            self.eligible == self.verified
            and self.tasks_checksum == self.steps_checksum
            and not self.exception_count
        )


@dataclass
class RollbackReport:
    run_id: uuid.UUID
    removed: int = 0
    kept: int = 0

    @property
    def needs_attention(self) -> bool:
        return self.kept > 0


def connect(database: Connector | str) -> RoleConnection:
    """A connection whose every transaction acts as the service role (a plain URL: a
    direct connection as ``service_role``), named so operators can spot it."""
    if isinstance(database, str):
        database = Connector(database)
    conn = database.named(APPLICATION_NAME).connect(row_factory=dict_row)
    try:
        with conn.acting():
            pass
    except psycopg.Error as exc:
        conn.close()
        raise BackfillError(
            f"cannot act as {database.role}: {exc.diag.message_primary or exc}"
        ) from None
    return conn


def _one(conn: RoleConnection, query: str, params: list[Any] | None = None) -> dict | None:
    """One statement in its own transaction, as the service role."""
    with conn.acting():
        return conn.execute(query, params).fetchone()


def require_schema(conn: RoleConnection) -> None:
    row = _one(
        conn,
        "select to_regprocedure('stepsync.backfill_legacy_tasks_batch(uuid, integer)') is not null"
        " and to_regprocedure('stepsync.compat_task_inserted()') is not null as ready",
    )
    if not row["ready"]:
        raise BackfillError(
            "the backfill migrations are not applied to this database "
            "(run `stepsync db push` or `supabase db push` first)"
        )


def take_lock(conn: RoleConnection) -> None:
    """Refuse to run beside another backfill or rollback on the same database (or through
    a transaction pooler, which cannot keep the lock's session)."""
    try:
        conn.connector.require_session("the backfill's lock")
    except SessionStateError as exc:
        raise BackfillError(f"{exc}; {exc.hint}") from None
    row = conn.execute(
        "select pg_try_advisory_lock(hashtextextended(%s, 0)) as locked", [ADVISORY_LOCK_KEY]
    ).fetchone()
    if not row["locked"]:
        raise BackfillError("another backfill or rollback is running on this database")


def count_tasks(conn: RoleConnection) -> int:
    return _one(conn, "select count(*) as n from public.agent_tasks")["n"]


def get_run(conn: RoleConnection, run_id: uuid.UUID) -> Run:
    row = _one(conn, "select * from stepsync.backfill_runs where id = %s", [run_id])
    if row is None:
        raise BackfillError(f"no backfill run {run_id}")
    return Run.from_row(row)


def unfinished_run(conn: RoleConnection) -> Run | None:
    row = _one(
        conn,
        "select * from stepsync.backfill_runs where status = 'running'"
        " order by started_at desc limit 1",
    )
    return Run.from_row(row) if row else None


def start_run(conn: RoleConnection, settings: Settings) -> uuid.UUID:
    row = _one(
        conn,
        "select stepsync.backfill_start_run(%s, %s) as id",
        [settings.batch_size, Jsonb(settings.as_json())],
    )
    return row["id"]


def exceptions(conn: RoleConnection, run_id: uuid.UUID, limit: int = 20) -> list[dict]:
    with conn.acting():
        return conn.execute(
            "select task_id, category, detail from stepsync.backfill_exceptions"
            " where backfill_run_id = %s order by category, task_id limit %s",
            [run_id, limit],
        ).fetchall()


def _batch(
    conn: RoleConnection, settings: Settings, query: str, params: list[Any]
) -> dict[str, Any]:
    """One batch in its own transaction, with the timeouts set for that transaction only;
    retried with backoff when it lost a race for a lock (it rolled back, so no harm)."""
    for attempt in range(1, settings.attempts + 1):
        try:
            with conn.acting():
                conn.execute(
                    "select set_config('lock_timeout', %s, true),"
                    " set_config('statement_timeout', %s, true)",
                    [f"{settings.lock_timeout_ms}ms", f"{settings.statement_timeout_ms}ms"],
                )
                return conn.execute(query, params).fetchone()
        except RETRYABLE as exc:
            if attempt == settings.attempts:
                raise BackfillError(
                    f"a batch failed {attempt} times, last: {exc.diag.message_primary}"
                    " (the run can be resumed; consider a smaller --batch-size or a longer"
                    " --lock-timeout)"
                ) from None
            time.sleep(min(0.1 * 2**attempt, 5.0))
    raise AssertionError("unreachable")


def _read_only_batch(
    conn: RoleConnection, settings: Settings, query: str, params: list[Any]
) -> dict[str, Any]:
    """One batch of a scan that writes nothing, in a read-only transaction (so a bug in
    the SQL cannot write either), bounded by the statement timeout."""
    with conn.acting(read_only=True):
        conn.execute(
            "select set_config('statement_timeout', %s, true)",
            [f"{settings.statement_timeout_ms}ms"],
        )
        return conn.execute(query, params).fetchone()


def run(
    conn: RoleConnection,
    run_id: uuid.UUID,
    settings: Settings,
    on_progress: ProgressCallback = _ignore,
) -> Run:
    """Process batches of run ``run_id`` from its checkpoint until no task is left."""
    current = get_run(conn, run_id)
    if current.status != "running":
        raise BackfillError(f"backfill run {run_id} is {current.status}, nothing to resume")
    # Progress (and so the rate and ETA) counts this session's work: the tasks after
    # the checkpoint.
    progress = Progress(
        done=0,
        total=max(count_tasks(conn) - current.tasks_scanned, 0),
        created=current.counts["steps_created"],
        batches=current.batches,
    )
    while True:
        row = _batch(
            conn,
            settings,
            "select * from stepsync.backfill_legacy_tasks_batch(%s, %s)",
            [run_id, settings.batch_size],
        )
        progress.advance(row["tasks_scanned"], progress.created + row["steps_created"])
        on_progress(progress)
        if row["done"]:
            break
        if settings.pause_seconds:
            time.sleep(settings.pause_seconds)
    return get_run(conn, run_id)


def plan(
    conn: RoleConnection,
    settings: Settings,
    samples: int = 5,
    on_progress: ProgressCallback = _ignore,
) -> Plan:
    """What a run would do, by category, with sample task ids; writes nothing (each batch
    runs in a read-only transaction)."""
    result = Plan()
    progress = Progress(done=0, total=count_tasks(conn), created=0, batches=0)
    after = None
    while True:
        row = _read_only_batch(
            conn,
            settings,
            "select * from stepsync.backfill_plan_batch(%s, %s, %s)",
            [after, settings.batch_size, samples],
        )
        result.tasks_scanned += row["tasks_scanned"]
        for key, count in row["counts"].items():
            key = PLAN_KEYS.get(key, key)
            result.counts[key] = result.counts.get(key, 0) + count
        for key, ids in row["samples"].items():
            kept = result.samples.setdefault(PLAN_KEYS.get(key, key), [])
            kept.extend(uuid.UUID(i) for i in ids[: samples - len(kept)])
        progress.advance(row["tasks_scanned"], result.counts["steps_created"])
        on_progress(progress)
        if row["tasks_scanned"] < settings.batch_size:
            return result
        after = row["last_task_id"]


def verify(
    conn: RoleConnection,
    settings: Settings,
    max_exceptions: int = 100,
    on_progress: ProgressCallback = _ignore,
) -> VerifyReport:
    """Check every task whose instructions make a valid step: exactly one live step, at
    order 1, with the same text. Counts, checksums of both sides, and the exceptions."""
    report = VerifyReport()
    progress = Progress(done=0, total=count_tasks(conn), created=0, batches=0)
    after = None
    while True:
        row = _read_only_batch(
            conn,
            settings,
            "select * from stepsync.backfill_verify_batch(%s, %s, %s)",
            [after, settings.batch_size, max_exceptions],
        )
        report.tasks_scanned += row["tasks_scanned"]
        report.eligible += row["eligible"]
        report.verified += row["verified"]
        report.tasks_checksum += int(row["tasks_checksum"])
        report.steps_checksum += int(row["steps_checksum"])
        report.exception_count += row["eligible"] - row["verified"]
        room = max_exceptions - len(report.exceptions)
        report.exceptions.extend(
            {"task_id": uuid.UUID(e["task_id"]), "problem": e["problem"]}
            for e in row["exceptions"][:room]
        )
        progress.advance(row["tasks_scanned"], report.verified)
        on_progress(progress)
        if row["tasks_scanned"] < settings.batch_size:
            return report
        after = row["last_task_id"]


def rollback(
    conn: RoleConnection,
    run_id: uuid.UUID,
    settings: Settings,
    on_progress: ProgressCallback = _ignore,
) -> RollbackReport:
    """Remove the steps run ``run_id`` created, and nothing else. A step whose task has
    other live steps now is kept (and counted): removing it would break that workflow."""
    current = get_run(conn, run_id)
    total = _one(
        conn,
        "select count(*) as n from stepsync.backfill_step_origin where backfill_run_id = %s",
        [run_id],
    )["n"]
    report = RollbackReport(run_id=current.id)
    progress = Progress(done=0, total=total, created=0, batches=0)
    after = None
    while True:
        row = _batch(
            conn,
            settings,
            "select * from stepsync.backfill_rollback_batch(%s, %s, %s)",
            [run_id, after, settings.batch_size],
        )
        report.removed += row["steps_removed"]
        report.kept += row["steps_kept"]
        progress.advance(row["steps_seen"], report.removed)
        on_progress(progress)
        if row["done"]:
            return report
        after = row["last_task_id"]
        if settings.pause_seconds:
            time.sleep(settings.pause_seconds)
