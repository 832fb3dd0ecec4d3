#!/usr/bin/env python3
"""Benchmark: backfill of generated legacy tasks vs one ``INSERT … SELECT`` of the same rows.

    .venv/bin/python scripts/bench_backfill.py [--tasks 1000000] [--batch-size 5000]

One PostgreSQL server and database for both (``STEPSYNC_DATABASE_URL`` as a superuser, or a
throwaway embedded cluster). Steps:

1. generate N legacy tasks (triggers off, as they exist before the migration);
2. baseline: a single ``INSERT … SELECT`` of the rows the backfill would create into a
   table shaped like ``task_steps`` (same columns, defaults, checks and indexes);
3. the backfill through ``sync.backfill`` with its defaults (batches, checkpoints,
   origin rows, locks), sampling memory at 25 %, 50 % and 100 %: the Python process's
   resident and peak memory, and the backfill backend's private memory
   (``pg_backend_memory_contexts``);
   before that, the same statement into ``public.task_steps`` itself on a copy of the
   database, to show what the table's own foreign key and triggers cost;
4. verify;
5. the baseline again (on a shared machine the faster baseline counts).

Prints a table and a JSON line; the target is a backfill within 2x the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sync import backfill, migrations
from tests.helpers import provision

BENCH_DB = "stepsync_bench_backfill"

GENERATE = """
insert into public.agent_tasks (agent_id, user_id, name, instructions, status)
select
    a.id,
    a.user_id,
    case when n %% 997 = 0 then '' else 'Task ' || n end,
    case
        when n %% 1009 = 0 then '   '
        when n %% 1013 = 0 then 'Multi-step task with 3 steps'
        when n %% 2003 = 0 then repeat('Long instructions. ', 1000)
        else 'Every weekday at 8:00 read the shared inbox, pick the messages about order '
            || n || ', summarise them in three bullet points and post them to the team.'
    end,
    (array['active', 'active', 'active', 'paused', 'completed', 'failed', 'cancelled'])
        [1 + n %% 7]::public.task_status_enum
from generate_series(%(start)s::integer, %(stop)s::integer) as n
inner join public.agents as a on a.name = 'Bench agent ' || (n %% 1000)
"""

BASELINE = """
insert into bench_baseline (task_id, step_order, step_name, instructions, status)
select
    t.id,
    1,
    coalesce(
        nullif(left(btrim(t.name, e' \\t\\r\\n\\f\\v'), 200), ''),
        nullif(btrim(left(regexp_replace(
            btrim(left(t.instructions, 400), e' \\t\\r\\n\\f\\v'), '\\s+', ' ', 'g'), 80)), ''),
        'Step 1'
    ),
    t.instructions,
    (case t.status when 'completed' then 'completed' when 'failed' then 'failed'
        when 'cancelled' then 'cancelled' else 'pending' end)::public.task_step_status
from public.agent_tasks as t
where t.instructions ~ '\\S' and t.instructions !~ '^\\s*Multi-step task with [0-9]+ step'
"""


def python_memory_mb() -> tuple[float, float]:
    """(resident now, peak) of this process in MiB."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    resident = resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return resident, peak


def backend_memory_mb(conn: psycopg.Connection) -> float:
    """Private memory of the backfill's own backend (memory contexts), in MiB."""
    conn.execute("reset role")
    total = conn.execute("select sum(total_bytes) as b from pg_backend_memory_contexts").fetchone()[
        "b"
    ]
    conn.execute("set role service_role")
    return float(total) / 2**20


def prepare(server_url: str, tasks: int) -> str:
    provision.drop_database(server_url, BENCH_DB)
    url = provision.create_database(server_url, BENCH_DB)
    provision.bootstrap_supabase(url)
    migrations.push(url)
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "insert into auth.users (id, email)"
            " select gen_random_uuid(), 'bench' || n || '@example.test'"
            " from generate_series(0, 999) as n"
        )
        conn.execute(
            "insert into public.agents (user_id, name)"
            " select id, 'Bench agent ' || (row_number() over (order by id) - 1) from auth.users"
        )
        conn.execute("set session_replication_role = replica")
        chunk = 250_000
        for start in range(1, tasks + 1, chunk):
            conn.execute(GENERATE, {"start": start, "stop": min(start + chunk - 1, tasks)})
        conn.execute("reset session_replication_role")
        conn.execute("vacuum analyze public.agent_tasks")
        conn.execute("checkpoint")
    print(f"generated {tasks:,} legacy tasks in {time.perf_counter() - started:.1f}s")
    return url


def baseline(url: str) -> tuple[float, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("create table bench_baseline (like public.task_steps including all)")
        started = time.perf_counter()
        rows = conn.execute(BASELINE).rowcount
        elapsed = time.perf_counter() - started
        conn.execute("drop table bench_baseline")
        conn.execute("checkpoint")
    return elapsed, rows


def table_floor(server_url: str) -> float:
    """The same INSERT … SELECT into public.task_steps itself (foreign key, triggers and
    any audit trigger of the schema), on a copy of the database: what one statement
    costs on the real table, without batches."""
    floor_db = BENCH_DB + "_floor"
    provision.drop_database(server_url, floor_db)
    floor_url = provision.create_database(server_url, floor_db, template=BENCH_DB)
    try:
        with psycopg.connect(floor_url, autocommit=True) as conn, conn.transaction():
            conn.execute("select set_config('stepsync.compat_sync', 'off', true)")
            conn.execute("select set_config('stepsync.audit_tag', 'bench', true)")
            started = time.perf_counter()
            conn.execute(
                BASELINE.replace("insert into bench_baseline", "insert into public.task_steps")
            )
            elapsed = time.perf_counter() - started
    finally:
        provision.drop_database(server_url, floor_db)
    return elapsed


def run_backfill(url: str, settings: backfill.Settings, tasks: int) -> dict:
    marks = [tasks // 4, tasks // 2, tasks]
    memory: list[dict] = []
    with backfill.connect(url) as conn:

        def sample(progress: backfill.Progress) -> None:
            while marks and progress.done >= marks[0]:
                resident, peak = python_memory_mb()
                memory.append(
                    {
                        "tasks": marks.pop(0),
                        "python_rss_mb": round(resident, 1),
                        "python_peak_mb": round(peak, 1),
                        "backend_mb": round(backend_memory_mb(conn), 1),
                    }
                )

        started = time.perf_counter()
        run_id = backfill.start_run(conn, settings)
        result = backfill.run(conn, run_id, settings, on_progress=sample)
        elapsed = time.perf_counter() - started
        verify_started = time.perf_counter()
        report = backfill.verify(conn, settings)
        verify_elapsed = time.perf_counter() - verify_started
    return {
        "seconds": elapsed,
        "steps": result.counts["steps_created"],
        "batches": result.batches,
        "memory": memory,
        "verify_seconds": verify_elapsed,
        "verify_ok": report.ok,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=backfill.Settings().batch_size)
    args = parser.parse_args()
    settings = backfill.Settings(batch_size=args.batch_size)

    with tempfile.TemporaryDirectory(prefix="stepsync-bench-") as scratch:
        if os.environ.get("STEPSYNC_DATABASE_URL"):
            server_url, server = os.environ["STEPSYNC_DATABASE_URL"], None
        else:
            server = provision.start_server(Path(scratch) / "data")
            server_url = server.url
        try:
            print(f"PostgreSQL {provision.server_version(server_url)}")
            url = prepare(server_url, args.tasks)
            # The machine may be shared: the baseline runs before and after the backfill
            # and the faster of the two counts (the stricter comparison).
            base_seconds, base_rows = baseline(url)
            print(f"baseline INSERT … SELECT: {base_rows:,} rows in {base_seconds:.1f}s")
            floor_seconds = table_floor(server_url)
            print(f"one INSERT … SELECT into task_steps itself: {floor_seconds:.1f}s")
            result = run_backfill(url, settings, args.tasks)
            print(f"backfill: {result['steps']:,} steps in {result['seconds']:.1f}s")
            again, _ = baseline(url)
            print(f"baseline INSERT … SELECT again: {again:.1f}s")
            base_seconds = min(base_seconds, again)
            provision.drop_database(server_url, BENCH_DB)
        finally:
            if server is not None:
                server.stop()

    ratio = result["seconds"] / base_seconds
    print()
    print(f"| measure (batch size {settings.batch_size}) | value |")
    print("| --- | --- |")
    print(f"| tasks | {args.tasks:,} |")
    print(
        f"| baseline: one INSERT … SELECT | {base_seconds:.1f} s, {base_rows / base_seconds:,.0f} rows/s |"
    )
    print(
        f"| backfill ({result['batches']} batches) | {result['seconds']:.1f} s,"
        f" {result['steps'] / result['seconds']:,.0f} steps/s,"
        f" {args.tasks / result['seconds']:,.0f} tasks/s |"
    )
    print(
        f"| reference: one INSERT … SELECT into task_steps itself (FK, triggers) |"
        f" {floor_seconds:.1f} s |"
    )
    print(f"| backfill / baseline | {ratio:.2f}x (target <= 2x) |")
    print(
        f"| backfill / one statement into task_steps | {result['seconds'] / floor_seconds:.2f}x |"
    )
    print(f"| verify | {result['verify_seconds']:.1f} s, ok={result['verify_ok']} |")
    for mark in result["memory"]:
        print(
            f"| memory at {mark['tasks']:,} tasks | Python RSS {mark['python_rss_mb']} MiB"
            f" (peak {mark['python_peak_mb']} MiB), backend {mark['backend_mb']} MiB |"
        )
    print(
        json.dumps(
            {
                "tasks": args.tasks,
                "batch_size": settings.batch_size,
                "baseline_seconds": round(base_seconds, 2),
                "backfill_seconds": round(result["seconds"], 2),
                "ratio": round(ratio, 2),
                "task_steps_statement_seconds": round(floor_seconds, 2),
                **{k: result[k] for k in ("steps", "batches", "memory", "verify_ok")},
                "verify_seconds": round(result["verify_seconds"], 2),
            }
        )
    )
    return 0 if result["verify_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
