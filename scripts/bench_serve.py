"""Benchmark `stepsync serve` the way users run it (``make bench``; not a test).

One fresh cluster, everything in one run, against a baseline measured on the same
database in the same run (the machine is shared and noisy, so only ratios compare):

- `stepsync serve` is a process of its own, started before the work arrives, with a no-op
  ``python:`` executor (an ``async def`` returning ``{"ok": true}``);
- the engine's tables are analyzed while the queue is empty (autovacuum does the same on
  an idle project); with ``--history``, everything is measured again after loading that
  many finished step executions and the audit rows their runs left, analyzed likewise;
- (a) a burst: ``--runs`` five-step runs started in one transaction (a cron minute, a bulk
  "run all"); steps/s from the commit to the last step's completion, read from the
  database's own timestamps; the first step's start after the commit (ready → started
  after idle);
- (b) a trickle: one run every ``1 / --trickle-rate`` seconds for ``--trickle-seconds``;
  ready → started of each run's first step (p50/p99);
- each at default settings and at a higher concurrency (CONFIGURATIONS), against the raw
  ``FOR UPDATE SKIP LOCKED`` loop of scripts/bench_service.py with 4 connections.

Usage: python scripts/bench_serve.py [--runs 1000] [--history 1000000 (0: none)] [--rounds 3]
Set STEPSYNC_PG_BIN to choose the PostgreSQL binaries (e.g. /usr/lib/postgresql/15/bin).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_service import make_tasks, percentile, raw_throughput

from sync import migrations
from sync.embedded import start_local_cluster
from tests.helpers import provision

ROOT = Path(__file__).resolve().parent.parent
STEPS = 5
CONFIGURATIONS = {
    "default settings": {},
    "concurrency 64, pool 4": {
        "STEPSYNC_CONCURRENCY": "64",
        "STEPSYNC_BATCH_SIZE": "32",
        "STEPSYNC_DB_POOL_SIZE": "4",
    },
}


def load_history(url: str, step_rows: int) -> None:
    """``step_rows`` finished step executions (runs of five steps) and the audit rows
    their runs leave: one for the task's counters and one per step snapshot. Set-based,
    triggers off: set-up only."""
    runs = step_rows // STEPS
    with psycopg.connect(url, autocommit=True) as conn:
        (task_id,) = make_tasks(conn, 1, STEPS)
        with conn.transaction():
            conn.execute("set local session_replication_role = replica")
            conn.execute(
                "insert into public.agent_task_executions (task_id, agent_id, user_id,"
                " status, trigger_type, instructions_used, step_count, steps_completed,"
                " created_at, started_at, completed_at)"
                " select t.id, t.agent_id, t.user_id, 'completed', 'scheduled', 'noop', 5, 5,"
                " now() - g * interval '1 minute', now() - g * interval '1 minute',"
                " now() - g * interval '1 minute'"
                " from public.agent_tasks as t cross join generate_series(1, %s) as g"
                " where t.id = %s",
                [runs, task_id],
            )
            conn.execute(
                "insert into public.task_step_executions (run_id, task_id, user_id, step_id,"
                " step_order, step_name, instructions, agent_id, include_previous_context,"
                " context_mode, on_failure, max_attempts, retry_backoff_seconds,"
                " retry_backoff_max_seconds, timeout_seconds, status, attempt, output,"
                " input_context, started_at, completed_at, run_after, queued_at)"
                " select r.id, r.task_id, r.user_id, s.id, s.step_order, s.step_name,"
                " s.instructions, r.agent_id, true, 'previous', 'stop', 1, 5, 600, 300,"
                " 'completed', 1, '{\"ok\": true}', '{\"previous\": {\"ok\": true}}',"
                " r.started_at, r.completed_at, r.created_at, r.created_at"
                " from public.agent_task_executions as r"
                " join public.task_steps as s on s.task_id = r.task_id and s.deleted_at is null"
                " where r.task_id = %s",
                [task_id],
            )
            conn.execute(
                "insert into public.audit_log (occurred_at, table_schema, table_name,"
                " operation, record_id, task_id, owner_id, actor_role, old_record, new_record)"
                " select r.completed_at, 'public', 'task_steps', 'UPDATE', s.id, s.task_id,"
                " r.user_id, 'service_role', to_jsonb(s), to_jsonb(s)"
                " from public.agent_task_executions as r"
                " join public.task_steps as s on s.task_id = r.task_id and s.deleted_at is null"
                " where r.task_id = %s"
                " union all"
                " select r.completed_at, 'public', 'agent_tasks', 'UPDATE', t.id, t.id,"
                " t.user_id, 'service_role', to_jsonb(t), to_jsonb(t)"
                " from public.agent_task_executions as r"
                " join public.agent_tasks as t on t.id = r.task_id where r.task_id = %s",
                [task_id, task_id],
            )


class Serve:
    """A `stepsync serve` process with a no-op executor."""

    def __init__(self, url: str, environment: dict[str, str], log: Path) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("STEPSYNC_", "SUPABASE_"))
        }
        env.update(
            {
                "STEPSYNC_DATABASE_URL": url,
                "STEPSYNC_EXECUTOR": "python:noop_executor:run",
                "STEPSYNC_METRICS_PORT": "0",
                "STEPSYNC_LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(ROOT / "scripts"),
                **environment,
            }
        )
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sync", "serve"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def wait_until_serving(url: str, timeout: float = 60) -> None:
    """The service is up once its LISTEN connection is (the last thing it opens)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            listening = conn.execute(
                "select count(*) from pg_stat_activity"
                " where application_name like 'stepsync%%' and query ilike 'listen%%'"
            ).fetchone()[0]
            if listening:
                return
            time.sleep(0.2)
    raise RuntimeError("stepsync serve did not start listening within a minute")


COMMITTED = "select extract(epoch from pg_xact_commit_timestamp(%s::xid))"
TRANSACTION = "select pg_current_xact_id()::xid::text"


def burst(url: str, task_ids: list[uuid.UUID]) -> tuple[float, float]:
    """Start one run per task in one transaction; steps/s from its commit to the last
    step's completion, and its commit to the first step's start (seconds), both on the
    database's clock (track_commit_timestamp)."""
    with psycopg.connect(url) as conn:
        conn.execute("set local role service_role")
        run_ids = [
            row[0]
            for row in conn.execute(
                "select public.start_task_run(t, 'scheduled', '{}') from unnest(%s::uuid[]) t",
                [task_ids],
            ).fetchall()
        ]
        (xid,) = conn.execute(TRANSACTION).fetchone()
        conn.commit()
        (committed,) = conn.execute(COMMITTED, [xid]).fetchone()
        while True:
            left, last, first = conn.execute(
                "select count(*) filter (where status in ('pending', 'running')),"
                " extract(epoch from max(completed_at)),"
                " (select extract(epoch from min(s.started_at))"
                "  from public.task_step_executions as s where s.run_id = any(%s))"
                " from public.agent_task_executions where id = any(%s)",
                [run_ids, run_ids],
            ).fetchone()
            conn.commit()
            if left == 0:
                break
            time.sleep(0.05)
    return len(run_ids) * STEPS / float(last - committed), float(first - committed)


def trickle(url: str, task_ids: list[uuid.UUID], rate: float) -> list[float]:
    """One run every 1/rate seconds; each run's commit → its first step's start."""
    started: list[tuple[uuid.UUID, str]] = []
    with psycopg.connect(url) as conn:
        for task_id in task_ids:
            conn.execute("set local role service_role")
            (run_id,) = conn.execute(
                "select public.start_task_run(%s, 'event', '{}')", [task_id]
            ).fetchone()
            (xid,) = conn.execute(TRANSACTION).fetchone()
            conn.commit()
            started.append((run_id, xid))
            time.sleep(1 / rate)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = conn.execute(
                "select s.run_id, extract(epoch from s.started_at - pg_xact_commit_timestamp("
                "  ran.xid::xid)) from unnest(%s::uuid[], %s::text[]) as ran (run_id, xid)"
                " join public.task_step_executions as s on s.run_id = ran.run_id"
                " where s.step_order = 1 and s.started_at is not null",
                [[run_id for run_id, _ in started], [xid for _, xid in started]],
            ).fetchall()
            conn.commit()
            if len(rows) == len(started):
                return [float(latency) for _, latency in rows]
            time.sleep(0.1)
    raise RuntimeError("trickle runs did not all start within a minute")


def measure(url: str, args: argparse.Namespace, scratch: Path, label: str) -> dict[str, dict]:
    """Every configuration, ``--rounds`` times; each line printed as soon as measured."""
    results: dict[str, dict] = {}
    for name, environment in CONFIGURATIONS.items():
        rounds = {"ratio": [], "steps/s": [], "raw": [], "first": [], "trickle": []}
        for round_index in range(args.rounds):
            with psycopg.connect(url, autocommit=True) as conn:
                burst_tasks = make_tasks(conn, args.runs, STEPS)
                trickle_tasks = make_tasks(conn, int(args.trickle_rate * args.trickle_seconds), 1)
            raw = asyncio.run(raw_throughput(url, args.runs, STEPS, 4))
            log = scratch / f"serve-{label}-{len(results)}-{round_index}.log"
            serve = Serve(url, environment, log)
            try:
                wait_until_serving(url)
                time.sleep(args.idle_seconds)  # idle: the service polls, nothing to do
                steps_per_second, first = burst(url, burst_tasks)
                latencies = trickle(url, trickle_tasks, args.trickle_rate)
            finally:
                serve.stop()
            rounds["raw"].append(raw)
            rounds["steps/s"].append(steps_per_second)
            rounds["ratio"].append(steps_per_second / raw)
            rounds["first"].append(first)
            rounds["trickle"].extend(latencies)
        results[name] = rounds
        report(f"{label}, {name}", rounds)
    return results


def report(name: str, rounds: dict) -> None:
    ratios = rounds["ratio"]
    print(
        f"stepsync serve, {name}: burst {statistics.median(rounds['steps/s']):.0f} steps/s"
        f" (raw loop {statistics.median(rounds['raw']):.0f}); ratio median"
        f" {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f};"
        f" first step after idle {statistics.median(rounds['first']) * 1000:.1f} ms;"
        f" trickle ready->started p50 {statistics.median(rounds['trickle']) * 1000:.1f} ms,"
        f" p99 {percentile(rounds['trickle'], 0.99) * 1000:.1f} ms",
        flush=True,
    )


def with_commit_timestamps(server: provision.Server, data_dir: Path) -> provision.Server:
    """The local cluster restarted with track_commit_timestamp on, so that latencies are
    measured from the commit itself, on the database's clock."""
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute("alter system set track_commit_timestamp = on")
    port = int(server.url.rsplit(":", 1)[1].split("/")[0])
    server.stop()
    return start_local_cluster(data_dir, bin_dir=provision.pg_bin_dir(), port=port)


def analyze_while_idle(url: str) -> None:
    """Statistics taken while the queue is empty, as autovacuum takes them on an idle
    project; then autovacuum stays out of the way of the measurement."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("vacuum analyze")
        conn.execute("alter system set autovacuum = off")
        conn.execute("select pg_reload_conf()")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument(
        "--history",
        type=int,
        default=1_000_000,
        help="after the first measurement, load this many finished step rows and measure again",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=6.0)
    parser.add_argument("--trickle-rate", type=float, default=20.0, help="runs per second")
    parser.add_argument("--trickle-seconds", type=float, default=10.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="stepsync-bench-serve-") as scratch_dir:
        scratch = Path(scratch_dir)
        server = provision.start_server(scratch / "data")
        try:
            server = with_commit_timestamps(server, scratch / "data")
            url = provision.create_database(server.url, "bench")
            provision.bootstrap_supabase(url)
            migrations.push(url)
            with psycopg.connect(url, autocommit=True) as conn:
                version = conn.execute("show server_version").fetchone()[0]
            print(
                f"PostgreSQL {version}; bursts of {args.runs} x {STEPS}-step runs,"
                f" {args.rounds} rounds",
                flush=True,
            )
            analyze_while_idle(url)
            empty = measure(url, args, scratch, "no history")
            if args.history:
                load_history(url, args.history)
                analyze_while_idle(url)
                full = measure(url, args, scratch, f"{args.history:,} finished step rows")
                for name in CONFIGURATIONS:
                    before = statistics.median(empty[name]["steps/s"])
                    after = statistics.median(full[name]["steps/s"])
                    print(f"{name}: with history / without = {after / before:.2f}", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
