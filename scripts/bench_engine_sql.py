"""SQL-level cost of the run engine, on one database and one connection (no service).

Prints, for N runs of M steps (each step passing full context on):
  start_task_run per second,
  steps per second through claim_steps + complete_step (batch 1 and batch 10),
  the same claim/complete loop on a bare table (FOR UPDATE SKIP LOCKED, no context,
  no triggers) as the floor the engine is measured against.

Usage: .venv/bin/python scripts/bench_engine_sql.py [runs] [steps] [--migrations DIR]
       [--profile]
(default 400 5; DIR: another set of migrations, e.g. an earlier commit's, to compare
before/after on the same machine; --profile: track_functions = all during the batch-1
loop, then each function's time per step). Runs on an embedded PostgreSQL in a
temporary directory.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers

from sync import migrations
from tests.helpers import provision

RAW_TABLE = """
create table bench_jobs (
    id bigserial primary key,
    status text not null default 'queued',
    run_after timestamptz not null default now(),
    lease_token bigint,
    output jsonb
);
create index on bench_jobs (run_after, id) where status = 'queued';
create sequence bench_tokens;
"""
RAW_CLAIM = """
with c as (
    select id from bench_jobs where status = 'queued' and run_after <= now()
    order by run_after, id limit %s for update skip locked
)
update bench_jobs as j set status = 'running', lease_token = nextval('bench_tokens')
from c where j.id = c.id returning j.id, j.lease_token
"""
RAW_COMPLETE = (
    "update bench_jobs set status = 'completed', output = %s"
    " where id = %s and lease_token = %s and status = 'running'"
)


def timed(label: str, count: int, action) -> float:
    started = time.perf_counter()
    action()
    elapsed = time.perf_counter() - started
    rate = count / elapsed
    print(f"{label:<48} {count:>6} in {elapsed:6.2f} s  {rate:8.0f}/s")
    return rate


def setup_tasks(conn: psycopg.Connection, tasks: int, steps: int) -> list[uuid.UUID]:
    """``tasks`` tasks of one user, each with ``steps`` live steps passing context on."""
    user_id = uuid.uuid4()
    conn.execute("insert into auth.users (id, email) values (%s, 'bench@example.test')", [user_id])
    agent_id = conn.execute(
        "insert into public.agents (user_id, name) values (%s, 'bench') returning id", [user_id]
    ).fetchone()[0]
    task_ids = [
        row[0]
        for row in conn.execute(
            "insert into public.agent_tasks (agent_id, user_id, name, instructions)"
            " select %s, %s, 'bench ' || n, 'noop' from generate_series(1, %s) as n"
            " returning id",
            [agent_id, user_id, tasks],
        ).fetchall()
    ]
    # A task created the legacy way may already have its step 1.
    conn.execute(
        "update public.task_steps set deleted_at = now() where task_id = any(%s)", [task_ids]
    )
    conn.execute(
        "insert into public.task_steps (task_id, step_order, step_name, instructions,"
        " include_previous_context)"
        " select t, n, 'step ' || n, 'noop', true from unnest(%s::uuid[]) as t,"
        " generate_series(1, %s) as n",
        [task_ids, steps],
    )
    return task_ids


def engine_loop(conn: psycopg.Connection, batch: int, spent: dict[str, float]) -> int:
    """Claims and completes until nothing is left; adds the seconds spent in claim and in
    complete transactions (round trips and commit included) to ``spent``."""
    done = 0
    while True:
        started = time.perf_counter()
        with conn.transaction():
            claimed = conn.execute(
                "select step_execution_id, lease_token from stepsync.claim_steps('bench', %s, 60)",
                [batch],
            ).fetchall()
        spent["claim"] += time.perf_counter() - started
        if not claimed:
            return done
        for step_id, token in claimed:
            started = time.perf_counter()
            with conn.transaction():
                conn.execute(
                    "select stepsync.complete_step(%s, %s, '{\"ok\": true}')", [step_id, token]
                )
            spent["complete"] += time.perf_counter() - started
            done += 1


def raw_loop(conn: psycopg.Connection, batch: int) -> int:
    done = 0
    while True:
        with conn.transaction():
            claimed = conn.execute(RAW_CLAIM, [batch]).fetchall()
        if not claimed:
            return done
        for job_id, token in claimed:
            with conn.transaction():
                conn.execute(RAW_COMPLETE, ['{"ok": true}', job_id, token])
            done += 1


def print_profile(conn: psycopg.Connection, steps_done: int) -> None:
    """Each function's total and own time per step, from pg_stat_user_functions."""
    conn.execute("select pg_stat_force_next_flush()")
    conn.execute("select 1")  # a new transaction reads the flushed statistics
    print(f"    {'function':<34} {'calls':>6} {'total ms/step':>14} {'self ms/step':>13}")
    for name, calls, total_ms, self_ms in conn.execute(
        "select schemaname || '.' || funcname, calls, total_time / %s, self_time / %s"
        " from pg_stat_user_functions where total_time / %s >= 0.005"
        " order by total_time desc",
        [steps_done, steps_done, steps_done],
    ):
        print(f"    {name:<34} {calls:>6} {total_ms:>14.3f} {self_ms:>13.3f}")


def bench(url: str, runs: int, steps: int, profile: bool) -> None:
    total = runs * steps
    with psycopg.connect(url, autocommit=True) as conn:
        tasks = setup_tasks(conn, 2 * runs, steps)
        conn.execute(RAW_TABLE)
        if profile:
            conn.execute("set track_functions = 'all'")
        conn.execute("set role service_role")

        def start(batch_tasks: list[uuid.UUID]) -> None:
            for task_id in batch_tasks:
                conn.execute("select public.start_task_run(%s)", [task_id])

        print(
            f"PostgreSQL {provision.server_version(url)}, one connection, {runs} runs of"
            f" {steps} no-op steps (full context), one transaction per claim and per completion"
        )
        timed("start_task_run", runs, lambda: start(tasks[:runs]))
        if profile:
            conn.execute("reset role")
            # The loops only: flush what start_task_run counted, then reset.
            conn.execute("select pg_stat_force_next_flush()")
            conn.execute("select 1")
            conn.execute("select pg_stat_reset()")
            conn.execute("set role service_role")
        for batch, batch_tasks in ((1, None), (10, tasks[runs:])):
            if batch_tasks:
                start(batch_tasks)
            spent = {"claim": 0.0, "complete": 0.0}
            timed(
                f"engine: claim_steps(batch {batch}) + complete_step",
                total,
                lambda b=batch, s=spent: engine_loop(conn, b, s),
            )
            print(
                f"    per step: claim transaction {spent['claim'] / total * 1000:.2f} ms,"
                f" complete transaction {spent['complete'] / total * 1000:.2f} ms"
            )
            conn.execute("reset role")
            if profile and batch == 1:
                print_profile(conn, total)
                conn.execute("set track_functions = 'none'")
            conn.execute(
                "insert into bench_jobs (status) select 'queued' from generate_series(1, %s)",
                [total],
            )
            timed(
                f"bare table: SKIP LOCKED claim (batch {batch}) + update",
                total,
                lambda b=batch: raw_loop(conn, b),
            )
            conn.execute("set role service_role")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=int, nargs="?", default=400)
    parser.add_argument("steps", type=int, nargs="?", default=5)
    parser.add_argument("--migrations", type=Path, default=migrations.MIGRATIONS_DIR)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    runs, steps = args.runs, args.steps
    with tempfile.TemporaryDirectory() as scratch:
        server = provision.start_server(Path(scratch) / "data", fast=True)
        name = f"stepsync_bench_{uuid.uuid4().hex[:8]}"
        url = provision.create_database(server.url, name)
        try:
            provision.bootstrap_supabase(url)
            migrations.push(url, args.migrations)
            bench(url, runs, steps, args.profile)
        finally:
            provision.drop_database(server.url, name)
            server.stop()


if __name__ == "__main__":
    main()
