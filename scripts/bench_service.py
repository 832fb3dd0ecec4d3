"""Benchmark the sync service on one fresh database (``make bench``; not a test).

1. Throughput: steps/s of the real service with a no-op executor, against a raw
   ``FOR UPDATE SKIP LOCKED`` claim/complete loop on a plain table of the same shape,
   both with the same number of connections and the same workload (runs of sequential
   steps). Prints the median of the rounds' ratios (each round measures all three within
   seconds, so a ratio is not skewed by the machine's speed drifting). Also the engine's
   claim/complete functions called in that same tight loop (each claimed batch completed
   in one call, as the service does), which splits the gap into SQL state machine and
   service.
2. ready → started latency over LISTEN: a run's commit to its first step entering the
   executor, with polling effectively off (p50/p99).
3. step N done → step N+1 started: the executor returning for one step to the next
   step of the same run entering it (p50/p99).

Usage: python scripts/bench_service.py [--runs 1000] [--steps 5] [--connections 4] [--rounds 7]
       [--migrations DIR]   (another set of migrations, e.g. an earlier commit's, to
                             compare before/after on the same machine)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers

from sync import migrations
from sync.executors.base import StepRequest
from sync.executors.python import PythonExecutor
from sync.service import build_service
from sync.settings import Settings
from sync.wakeups.postgres import PostgresWakeups
from tests.helpers import provision

RAW_TABLE = """
create table if not exists public.bench_raw_steps (
    id uuid primary key default gen_random_uuid(),
    run_id uuid not null,
    step_order int not null,
    status text not null default 'pending',
    attempt int not null default 0,
    run_after timestamptz,
    lease_owner text,
    lease_expires_at timestamptz,
    lease_token bigint,
    input_context jsonb,
    output jsonb,
    started_at timestamptz,
    completed_at timestamptz,
    unique (run_id, step_order)
);
create index if not exists bench_raw_steps_claim_idx
    on public.bench_raw_steps (run_after, id) where status = 'queued';
create sequence if not exists public.bench_raw_token;
"""
RAW_CLAIM = """
with picked as (
    select id from public.bench_raw_steps
     where status = 'queued' and run_after <= now()
     order by run_after, id
     limit %(batch)s
     for update skip locked
)
update public.bench_raw_steps s
   set status = 'running', attempt = s.attempt + 1, lease_owner = %(worker)s,
       lease_expires_at = now() + interval '30 seconds',
       lease_token = nextval('public.bench_raw_token'), started_at = now(),
       input_context = '{}'::jsonb
  from picked where s.id = picked.id
returning s.id, s.run_id, s.step_order, s.lease_token
"""
RAW_COMPLETE = """
with done as (
    update public.bench_raw_steps
       set status = 'completed', output = %(output)s, completed_at = now(),
           lease_owner = null, lease_expires_at = null
     where id = %(id)s and lease_token = %(token)s and status = 'running'
    returning run_id, step_order
)
update public.bench_raw_steps s
   set status = 'queued', run_after = now()
  from done where s.run_id = done.run_id and s.step_order = done.step_order + 1
"""


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def make_tasks(conn: psycopg.Connection, runs: int, steps: int) -> list[uuid.UUID]:
    user_id = uuid.uuid4()
    conn.execute(
        "insert into auth.users (id, email) values (%s, %s)",
        [user_id, f"{user_id.hex[:8]}@bench.test"],
    )
    agent_id = conn.execute(
        "insert into public.agents (user_id, name) values (%s, 'bench') returning id", [user_id]
    ).fetchone()[0]
    task_ids = [
        row[0]
        for row in conn.execute(
            "insert into public.agent_tasks (agent_id, user_id, name, instructions)"
            " select %s, %s, 'bench ' || i, 'noop' from generate_series(1, %s) i returning id",
            [agent_id, user_id, runs],
        ).fetchall()
    ]
    conn.execute(
        "update public.task_steps set deleted_at = now() where task_id = any(%s)", [task_ids]
    )
    conn.execute(
        "insert into public.task_steps (task_id, step_order, step_name, instructions,"
        " include_previous_context)"
        " select t, o, 'step ' || o, 'noop', true from unnest(%s::uuid[]) t,"
        " generate_series(1, %s) o",
        [task_ids, steps],
    )
    return task_ids


def start_runs(conn: psycopg.Connection, task_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    with conn.transaction():
        conn.execute("set local role service_role")
        return [
            r[0]
            for r in conn.execute(
                "select public.start_task_run(t) from unnest(%s::uuid[]) t", [task_ids]
            ).fetchall()
        ]


def settings(url: str, connections: int, **overrides) -> Settings:
    # Enough steps in flight that claims and result writes keep all the pool's
    # connections busy; with 32 steps and claims of 16, at most two statements were active
    # at any moment and the database sat idle a fifth of the time.
    return Settings(
        **{
            "database_url": url,
            "metrics_port": 0,
            "concurrency": 256,
            "batch_size": 32,
            "db_pool_size": connections,
            "poll_interval_seconds": 60,
            "worker_id": "bench",
            "log_level": "WARNING",
            **overrides,
        }
    )


# --- 1. throughput ---------------------------------------------------------------------


async def service_throughput(url: str, runs: int, steps: int, connections: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        run_ids = start_runs(conn, make_tasks(conn, runs, steps))

    total = runs * steps
    executed = 0
    all_executed = asyncio.Event()

    async def noop(request: StepRequest) -> dict:
        # Counting in-process keeps the database free of progress queries while it works.
        nonlocal executed
        executed += 1
        if executed >= total:
            all_executed.set()
        return {"ok": True}

    service = build_service(settings(url, connections), url, executor=PythonExecutor(noop))
    started = time.perf_counter()
    task = asyncio.create_task(service.run())
    await all_executed.wait()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as watcher:
        while True:  # the last completions are being committed
            left = (
                await (
                    await watcher.execute(
                        "select count(*) from public.agent_task_executions"
                        " where id = any(%s) and status not in ('completed', 'failed')",
                        [run_ids],
                    )
                ).fetchone()
            )[0]
            if left == 0:
                break
            await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    service.stop()
    await task
    return runs * steps / elapsed


async def raw_throughput(url: str, runs: int, steps: int, connections: int) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RAW_TABLE)
        conn.execute(
            "insert into public.bench_raw_steps (run_id, step_order, status, run_after)"
            " select r, o, case when o = 1 then 'queued' else 'pending' end,"
            " case when o = 1 then now() end"
            " from (select gen_random_uuid() r from generate_series(1, %s)) runs,"
            " generate_series(1, %s) o",
            [runs, steps],
        )
    total = runs * steps
    done = 0

    async def loop(index: int) -> None:
        nonlocal done
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            while done < total:
                claimed = await (
                    await conn.execute(RAW_CLAIM, {"batch": 16, "worker": f"raw{index}"})
                ).fetchall()
                if not claimed:
                    await asyncio.sleep(0.001)
                    continue
                for step_id, _, _, token in claimed:
                    await conn.execute(
                        RAW_COMPLETE,
                        {"id": step_id, "token": token, "output": '{"ok": true}'},
                    )
                    done += 1

    started = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(connections)))
    return total / (time.perf_counter() - started)


async def engine_direct_throughput(url: str, runs: int, steps: int, connections: int) -> float:
    """The engine's own functions in the same tight loop, called the way the service calls
    them (a claimed batch completed in one ``complete_steps``): separates the cost of the
    SQL state machine from the cost of the service around it."""
    with psycopg.connect(url, autocommit=True) as conn:
        start_runs(conn, make_tasks(conn, runs, steps))
    total = runs * steps
    done = 0

    async def loop(index: int) -> None:
        nonlocal done
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("set role service_role")
            while done < total:
                claimed = await (
                    await conn.execute(
                        "select step_execution_id, lease_token"
                        " from stepsync.claim_steps(%s, 16, 30)",
                        [f"direct{index}"],
                    )
                ).fetchall()
                if not claimed:
                    await asyncio.sleep(0.001)
                    continue
                await conn.execute(
                    "select * from stepsync.complete_steps(%s::uuid[], %s::bigint[], %s::jsonb[])",
                    [
                        [step_id for step_id, _ in claimed],
                        [token for _, token in claimed],
                        ['{"ok": true}'] * len(claimed),
                    ],
                )
                done += len(claimed)

    started = time.perf_counter()
    await asyncio.gather(*(loop(i) for i in range(connections)))
    return total / (time.perf_counter() - started)


# --- 2. and 3. latencies ---------------------------------------------------------------


async def latencies(url: str, samples: int, chain_runs: int, chain_steps: int):
    entered: dict[tuple[uuid.UUID, int], float] = {}
    returned: dict[tuple[uuid.UUID, int], float] = {}
    arrival = asyncio.Event()

    async def timed(request: StepRequest) -> dict:
        entered[(request.run_id, request.step_order)] = time.perf_counter()
        arrival.set()
        returned[(request.run_id, request.step_order)] = time.perf_counter()
        return {"ok": True}

    with psycopg.connect(url, autocommit=True) as conn:
        single = make_tasks(conn, samples, 1)
        chained = make_tasks(conn, chain_runs, chain_steps)

    service = build_service(settings(url, 4), url, executor=PythonExecutor(timed))
    task = asyncio.create_task(service.run())
    await service.started.wait()
    listener = next(s for s in service.wakeup_sources if isinstance(s, PostgresWakeups))
    await asyncio.wait_for(listener.connected.wait(), 30)

    ready_to_started: list[float] = []
    async with await psycopg.AsyncConnection.connect(url) as driver:
        for task_id in single:
            arrival.clear()
            await driver.execute("set local role service_role")
            run_id = (
                await (
                    await driver.execute("select public.start_task_run(%s)", [task_id])
                ).fetchone()
            )[0]
            # The step became ready inside this transaction: it is claimable, and its
            # notification delivered, from the commit on.
            committing = time.perf_counter()
            await driver.commit()
            await asyncio.wait_for(arrival.wait(), 10)
            ready_to_started.append(entered[(run_id, 1)] - committing)

        chained_runs = []
        for task_id in chained:
            await driver.execute("set local role service_role")
            chained_runs.append(
                (
                    await (
                        await driver.execute("select public.start_task_run(%s)", [task_id])
                    ).fetchone()
                )[0]
            )
            await driver.commit()
            while (chained_runs[-1], chain_steps) not in entered:
                await asyncio.sleep(0.01)
    service.stop()
    await task

    handoffs = [
        entered[(run_id, order + 1)] - returned[(run_id, order)]
        for run_id in chained_runs
        for order in range(1, chain_steps)
    ]
    return ready_to_started, handoffs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--migrations", type=Path, default=migrations.MIGRATIONS_DIR)
    args = parser.parse_args()
    logging.getLogger("sync").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="stepsync-bench-") as scratch:
        server = provision.start_server(Path(scratch) / "data", fast=True)
        try:
            url = provision.create_database(server.url, "bench")
            provision.bootstrap_supabase(url)
            migrations.push(url, args.migrations)
            # Alternating rounds, each on fresh work. The machine may be busy with other
            # things during any of them and its speed drifts over a run, so each ratio is
            # taken within a round (seconds apart) and the median of those is reported.
            measured: dict[str, list[float]] = {"raw": [], "direct": [], "service": []}
            workload = (url, args.runs, args.steps, args.connections)
            for _ in range(args.rounds):
                measured["raw"].append(await raw_throughput(*workload))
                measured["direct"].append(await engine_direct_throughput(*workload))
                measured["service"].append(await service_throughput(*workload))
            raw, direct, service = (statistics.median(measured[k]) for k in measured)
            ratios = {
                name: [
                    a / b for a, b in zip(measured[numerator], measured[denominator], strict=True)
                ]
                for name, numerator, denominator in (
                    ("service/raw", "service", "raw"),
                    ("engine/raw", "direct", "raw"),
                    ("service/engine", "service", "direct"),
                )
            }
            ready, handoffs = await latencies(url, args.latency_samples, 20, 10)
        finally:
            server.stop()

    ms = 1000
    print(
        f"workload: {args.runs} runs x {args.steps} steps, {args.connections} connections, "
        f"median of {args.rounds} rounds"
    )
    print(f"raw SKIP LOCKED claim/complete loop: {raw:8.0f} steps/s")
    print(f"engine functions in the same loop:   {direct:8.0f} steps/s (batch completions)")
    print(f"stepsync service, no-op executor:    {service:8.0f} steps/s")
    for name, note in (
        ("service/raw", "target >= 0.5"),
        ("engine/raw", "the SQL state machine"),
        ("service/engine", "the service's own overhead"),
    ):
        each = ratios[name]
        print(
            f"ratio {name}: {statistics.median(each):.2f} ({note}; median of the rounds' ratios,"
            f" range {min(each):.2f}-{max(each):.2f})"
        )
    print(
        f"ready -> started via LISTEN ({len(ready)} runs): "
        f"p50 {statistics.median(ready) * ms:.2f} ms, p99 {percentile(ready, 0.99) * ms:.2f} ms"
        " (target p50 <= 5 ms)"
    )
    print(
        f"step N done -> step N+1 started ({len(handoffs)} hand-offs): "
        f"p50 {statistics.median(handoffs) * ms:.2f} ms, "
        f"p99 {percentile(handoffs, 0.99) * ms:.2f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
