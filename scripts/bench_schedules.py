"""Benchmark the scheduler: many tasks due in the same minute, two `stepsync serve`
processes (``make bench``; not a test).

One fresh cluster; ``--tasks`` single-step scheduled tasks of 100 users, all due at the
same moment a few seconds ahead, while two `stepsync serve` processes run (a no-op
``python:`` executor, everything else at its defaults: the scheduler ticks every second
and fires 50 tasks per transaction). Measured from the database's own timestamps:

- seconds from the due time until every run has started (its run row exists), and until
  every run has finished;
- against a baseline in the same run, with the same two processes serving: as many runs
  started by one ``select start_task_run(...)`` over all of them (a bulk "run all"), from
  its start until every run has started (the statement's end) and has finished.

Then it checks that every task ran exactly once and that each fire time is recorded once.

Usage: python scripts/bench_schedules.py [--tasks 10000] [--rounds 1]
Set STEPSYNC_PG_BIN to choose the PostgreSQL binaries (e.g. /usr/lib/postgresql/15/bin).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import Serve, analyze_while_idle, wait_until_serving

from sync import migrations
from tests.helpers import provision

USERS = 100
LEAD_SECONDS = 8  # the due time is this far ahead of the moment the tasks are set due


def make_tasks(conn: psycopg.Connection, count: int, label: str) -> list:
    """``count`` single-step tasks (step 1 from the instructions, as the app makes them),
    spread over USERS users; none due yet."""
    users = conn.execute(
        "insert into auth.users (id, email) select gen_random_uuid(),"
        " %s || n || '@bench.test' from generate_series(1, %s) as n returning id",
        [label, USERS],
    ).fetchall()
    agents = conn.execute(
        "insert into public.agents (user_id, name) select u, 'Agent'"
        " from unnest(%s::uuid[]) as u returning id, user_id",
        [[u for (u,) in users]],
    ).fetchall()
    return [
        row[0]
        for row in conn.execute(
            "insert into public.agent_tasks (agent_id, user_id, name, instructions, task_type,"
            " cron_expression, timezone)"
            " select (%(agents)s::uuid[])[1 + n %% %(users)s], (%(owners)s::uuid[])[1 + n %% %(users)s],"
            " %(label)s || n, 'Do thing ' || n, 'scheduled', '0 0 1 1 *', 'Europe/Paris'"
            " from generate_series(1, %(count)s) as n returning id",
            {
                "agents": [a for a, _ in agents],
                "owners": [u for _, u in agents],
                "users": USERS,
                "label": label,
                "count": count,
            },
        ).fetchall()
    ]


def wait_for_runs(conn: psycopg.Connection, task_ids: list, timeout: float = 600) -> tuple:
    """Until every task has a finished run: (last run created, last run completed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs, open_runs, created, completed = conn.execute(
            "select count(*), count(*) filter (where status in ('pending', 'running')),"
            " max(created_at), max(completed_at)"
            " from public.agent_task_executions where task_id = any(%s)",
            [task_ids],
        ).fetchone()
        if runs >= len(task_ids) and open_runs == 0:
            return created, completed
        time.sleep(0.2)
    raise RuntimeError(f"runs did not all finish within {timeout:g}s")


def scheduled_round(url: str, task_ids: list) -> dict:
    with psycopg.connect(url, autocommit=True) as conn:
        due = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=LEAD_SECONDS)
        conn.execute(
            "update public.agent_tasks set next_run_at = %s where id = any(%s)", [due, task_ids]
        )
        set_at = datetime.now(UTC)
        if set_at >= due:
            raise RuntimeError("setting the due time took longer than the lead; raise LEAD_SECONDS")
        created, completed = wait_for_runs(conn, task_ids)
        first = conn.execute(
            "select min(created_at) from public.agent_task_executions where task_id = any(%s)",
            [task_ids],
        ).fetchone()[0]
        runs, tasks, fires = conn.execute(
            "select count(*), count(distinct r.task_id),"
            " (select count(*) from public.task_schedule_fires as f"
            "  where f.task_id = any(%s) and f.fire_at = %s and f.outcome = 'started')"
            " from public.agent_task_executions as r where r.task_id = any(%s)",
            [task_ids, due, task_ids],
        ).fetchone()
    if not runs == tasks == fires == len(task_ids):
        raise RuntimeError(f"{runs} runs of {tasks} tasks, {fires} fire records")
    return {
        "first": (first - due).total_seconds(),
        "started": (created - due).total_seconds(),
        "finished": (completed - due).total_seconds(),
    }


def direct_round(url: str, task_ids: list) -> dict:
    with psycopg.connect(url) as conn:
        began = conn.execute("select clock_timestamp()").fetchone()[0]
        conn.execute("set local role service_role")
        conn.execute(
            "select public.start_task_run(t, 'manual', '{}') from unnest(%s::uuid[]) as t",
            [task_ids],
        )
        conn.commit()
        committed = datetime.now(UTC)
        _, completed = wait_for_runs(conn, task_ids)
    return {
        "started": (committed - began).total_seconds(),
        "finished": (completed - began).total_seconds(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="stepsync-bench-schedules-") as scratch_dir:
        scratch = Path(scratch_dir)
        server = provision.start_server(scratch / "data")
        try:
            url = provision.create_database(server.url, "bench")
            provision.bootstrap_supabase(url)
            migrations.push(url)
            with psycopg.connect(url, autocommit=True) as conn:
                version = conn.execute("show server_version").fetchone()[0]
            print(
                f"PostgreSQL {version}; {args.tasks:,} single-step tasks due at once,"
                f" {args.processes} stepsync serve processes",
                flush=True,
            )
            for round_index in range(args.rounds):
                with psycopg.connect(url, autocommit=True) as conn:
                    scheduled = make_tasks(conn, args.tasks, f"s{round_index}-")
                    direct = make_tasks(conn, args.tasks, f"d{round_index}-")
                analyze_while_idle(url)
                serves = [
                    Serve(url, {"STEPSYNC_WORKER_ID": f"bench-{i}"}, scratch / f"serve-{i}.log")
                    for i in range(args.processes)
                ]
                try:
                    wait_until_serving(url)
                    time.sleep(2)
                    fired = scheduled_round(url, scheduled)
                    base = direct_round(url, direct)
                finally:
                    for serve in serves:
                        serve.stop()
                print(
                    f"round {round_index + 1}: scheduled: first run {fired['first']:.2f} s after"
                    f" the due time, all {args.tasks:,} started {fired['started']:.2f} s,"
                    f" all finished {fired['finished']:.2f} s; baseline (one start_task_run"
                    f" statement over as many tasks): all started {base['started']:.2f} s,"
                    f" all finished {base['finished']:.2f} s; ratio started"
                    f" {fired['started'] / base['started']:.2f}, finished"
                    f" {fired['finished'] / base['finished']:.2f}",
                    flush=True,
                )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
