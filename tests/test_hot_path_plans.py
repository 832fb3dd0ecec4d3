"""Every statement on the run engine's hot path reads rows in proportion to its batch, not
to the tables, whatever the statistics say (a plan check, never a timing).

The service starts before the work arrives: its first calls are planned, and their plans
kept for the connection's life, while the tables are nearly empty. Then a burst of 5,000
queued steps arrives on top of 200,000 finished step rows of history. auto_explain reports
the plan of every statement the engine functions run, with actual row counts; each must
stay keyed (no sequential scan of an engine table, at most ``ROWS_PER_STATEMENT`` rows
read by any statement) under each state of the statistics.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.run_engine_support import make_workflow
from tests.support import triggers_off

BATCH = 10
# A keyed statement of a batch of 10 reads tens of rows (the claim index, each step's
# earlier steps, its run); a scan of one of the tables reads 5,000 to 225,000.
ROWS_PER_STATEMENT = 20 * BATCH
HISTORY_RUNS = 40_000  # × 5 steps = 200,000 finished step rows
BURST_RUNS = 5_000
ENGINE_TABLES = {"task_step_executions", "agent_task_executions", "agent_tasks", "task_steps"}
STATISTICS = ["never analyzed", "analyzed while empty", "analyzed full"]


def plan_nodes(plan: dict) -> Iterator[dict]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def rows_read(node: dict) -> int:
    """Rows a scan node looked at: returned plus filtered out, over all its loops."""
    looked_at = (
        node.get("Actual Rows", 0)
        + node.get("Rows Removed by Filter", 0)
        + node.get("Rows Removed by Index Recheck", 0)
    )
    return looked_at * node.get("Actual Loops", 1)


class Explained:
    """Collects auto_explain's JSON plans, sent to this connection as notices."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.plans: list[dict] = []
        conn.add_notice_handler(self._collect)
        conn.execute("reset role")
        conn.execute("load 'auto_explain'")
        for name, value in {
            "log_min_duration": "0",
            "log_analyze": "on",
            "log_timing": "off",
            "log_nested_statements": "on",
            "log_format": "json",
            "log_level": "notice",
        }.items():
            conn.execute(f"set auto_explain.{name} = '{value}'")
        conn.execute("set role service_role")

    def _collect(self, diagnostic: psycopg.errors.Diagnostic) -> None:
        message = diagnostic.message_primary or ""
        if "{" in message:
            self.plans.append(json.loads(message[message.index("{") :]))

    def problems(self, operation: Callable[[], object]) -> list[str]:
        """Run ``operation``; every way one of its statements reads more than it should."""
        self.plans.clear()
        operation()
        assert self.plans, "auto_explain reported no statement"
        found = []
        for plan in self.plans:
            query = " ".join(plan["Query Text"].split())[:100]
            for node in plan_nodes(plan["Plan"]):
                relation = node.get("Relation Name")
                if node["Node Type"] == "Seq Scan" and relation in ENGINE_TABLES:
                    found.append(f"sequential scan of {relation} in: {query}")
                if relation and rows_read(node) > ROWS_PER_STATEMENT:
                    found.append(f"{rows_read(node)} rows of {relation} read in: {query}")
        return found


def load_history_and_burst(conn: psycopg.Connection, task_id: uuid.UUID) -> None:
    """200,000 finished step rows (set-based, triggers off: set-up only), then a burst of
    5,000 runs started through the engine in one transaction."""
    with triggers_off(conn):
        conn.execute(
            "insert into public.agent_task_executions (task_id, agent_id, user_id, status,"
            " trigger_type, instructions_used, step_count, steps_completed, created_at,"
            " started_at, completed_at)"
            " select t.id, t.agent_id, t.user_id, 'completed', 'manual', 'x', 5, 5,"
            " now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'"
            " from public.agent_tasks as t cross join generate_series(1, %s)"
            " where t.id = %s",
            [HISTORY_RUNS, task_id],
        )
        conn.execute(
            "insert into public.task_step_executions (run_id, task_id, user_id, step_id,"
            " step_order, step_name, instructions, agent_id, include_previous_context,"
            " context_mode, on_failure, max_attempts, retry_backoff_seconds,"
            " retry_backoff_max_seconds, timeout_seconds, status, attempt, output,"
            " started_at, completed_at, run_after, queued_at)"
            " select r.id, r.task_id, r.user_id, s.id, s.step_order, s.step_name,"
            " s.instructions, r.agent_id, s.include_previous_context, s.context_mode,"
            " s.on_failure, s.max_attempts, s.retry_backoff_seconds,"
            " s.retry_backoff_max_seconds, s.timeout_seconds, 'completed', 1, '{}',"
            " r.started_at, r.completed_at, r.created_at, r.created_at"
            " from public.agent_task_executions as r"
            " join public.task_steps as s on s.task_id = r.task_id and s.deleted_at is null"
            " where r.task_id = %s and r.created_at < now() - interval '1 hour'",
            [task_id],
        )
    with conn.transaction():
        conn.execute("set local role service_role")
        conn.execute(
            "select public.start_task_run(%s, 'manual', '{}') from generate_series(1, %s)",
            [task_id, BURST_RUNS],
        )


class Engine:
    """The engine's hot functions, called as the service calls them."""

    def __init__(self, conn: psycopg.Connection, task_id: uuid.UUID) -> None:
        self.conn = conn
        self.task_id = task_id

    def start(self) -> uuid.UUID:
        return self.conn.execute(
            "select public.start_task_run(%s, 'manual', '{}') as id", [self.task_id]
        ).fetchone()["id"]

    def claim(self, batch: int = BATCH) -> list[dict]:
        return self.conn.execute(
            "select * from stepsync.claim_steps('worker-1', %s, 60)", [batch]
        ).fetchall()

    def complete(self, steps: list[dict], worker: str | None = "worker-1") -> list[dict]:
        """complete_steps; with ``worker`` the next steps come back handed off."""
        rows = self.conn.execute(
            "select (done.next_step).*"
            " from stepsync.complete_steps(%s::uuid[], %s::bigint[], %s::jsonb[], %s, 60)"
            " as done",
            [
                [s["step_execution_id"] for s in steps],
                [s["lease_token"] for s in steps],
                [Jsonb({"ok": True}) for _ in steps],
                worker,
            ],
        ).fetchall()
        return [row for row in rows if row["step_execution_id"] is not None]

    def leases(self, steps: list[dict]) -> list[list]:
        return [[s["step_execution_id"] for s in steps], [s["lease_token"] for s in steps]]

    def heartbeat(self, steps: list[dict]) -> None:
        self.conn.execute(
            "select stepsync.heartbeat_steps('worker-1', %s::uuid[], %s::bigint[], 60)",
            self.leases(steps),
        )

    def release(self, steps: list[dict]) -> None:
        self.conn.execute(
            "select stepsync.release_steps('worker-1', %s::uuid[], %s::bigint[])",
            self.leases(steps),
        )

    def fail(self, step: dict, retryable: bool) -> None:
        self.conn.execute(
            "select stepsync.fail_step(%s, %s, 'boom', %s)",
            [step["step_execution_id"], step["lease_token"], retryable],
        )

    def reap(self) -> None:
        self.conn.execute("select stepsync.reap_expired_leases()")

    def cancel(self, run_id: uuid.UUID) -> None:
        self.conn.execute("select public.cancel_task_run(%s)", [run_id])

    def run_to_the_end(self) -> None:
        """Warm-up: start runs and take each through all its steps, as a service does."""
        self.start()
        self.start()
        steps = self.claim()
        while steps:
            steps = self.complete(steps) + self.claim()


@pytest.mark.parametrize("statistics", STATISTICS)
def test_hot_statements_read_in_proportion_to_the_batch(
    conn: psycopg.Connection, db_url: str, statistics: str
) -> None:
    _, task_id, _ = make_workflow(conn, [{} for _ in range(5)])
    if statistics == "analyzed while empty":
        conn.execute("vacuum analyze")
    service = psycopg.connect(db_url, autocommit=True, row_factory=dict_row)
    service.execute("set role service_role")
    engine = Engine(service, task_id)
    # The service has been up since before the work: every hot function has run (and its
    # plans are kept) while the tables were small.
    for _ in range(6):
        engine.run_to_the_end()
    load_history_and_burst(conn, task_id)
    if statistics == "analyzed full":
        conn.execute("analyze")
    explained = Explained(service)

    claimed: list[dict] = []
    handed: list[dict] = []
    problems = {
        "claim": explained.problems(lambda: claimed.extend(engine.claim())),
        "complete and hand off": explained.problems(
            lambda: handed.extend(engine.complete(claimed))
        ),
        "heartbeat": explained.problems(lambda: engine.heartbeat(handed)),
        "fail, retry": explained.problems(lambda: engine.fail(handed[0], retryable=True)),
        "fail, run stops": explained.problems(lambda: engine.fail(handed[1], retryable=False)),
        "release": explained.problems(lambda: engine.release(handed[2:4])),
        "complete, queue next": explained.problems(lambda: engine.complete(handed[4:], None)),
        "start": explained.problems(engine.start),
    }
    # A step whose worker vanished (set-up writes go through the superuser connection).
    expired = engine.claim(1)[0]
    conn.execute(
        "update public.task_step_executions set lease_expires_at = now() - interval '1 s'"
        " where id = %s",
        [expired["step_execution_id"]],
    )
    problems["reap"] = explained.problems(engine.reap)
    # A run taken to its end: its first step made the first in the claim order (due and
    # first in line), each next handed off.
    run_id = engine.start()
    conn.execute(
        "update public.task_step_executions set run_after = now() - interval '1 day',"
        " fair_at = now() - interval '1 day' where run_id = %s and status = 'queued'",
        [run_id],
    )
    steps = engine.claim(1)
    for _ in range(4):
        steps = engine.complete(steps)
    problems["complete, run finishes"] = explained.problems(lambda: engine.complete(steps))
    cancelled = engine.start()
    problems["cancel"] = explained.problems(lambda: engine.cancel(cancelled))

    assert len(claimed) == BATCH and len(handed) == BATCH
    assert steps[0]["run_id"] == run_id
    assert (
        conn.execute(
            "select status::text from public.agent_task_executions where id = %s", [run_id]
        ).fetchone()[0]
        == "completed"
    )
    assert {name: found for name, found in problems.items() if found} == {}
    service.close()
