"""Wake-up latency: inserting a run row (autocommit) → the service's wake callback.

Compares PostgreSQL LISTEN with Supabase Realtime (supabase-py's client against the
Realtime stand-in of the test suite, which turns committed rows into postgres_changes
frames). The Realtime figure is the client-side path only (stand-in, websocket, client,
dispatch); a hosted project adds its network round trip and the Realtime server's WAL
polling. Usage: python scripts/bench_realtime_wakeup.py [changes]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sync import migrations
from sync.wakeups.postgres import PostgresWakeups
from sync.wakeups.realtime import RealtimeWakeups
from tests.helpers import provision
from tests.standins.realtime_server import RealtimeStandIn
from tests.support import make_agent, make_task, make_user

KEY = "bench-service-role-key"


async def measure(source, url: str, task_id, agent_id, changes: int) -> list[float]:
    arrived: asyncio.Queue[float] = asyncio.Queue()
    ready = asyncio.Event()

    def wake(reason: str) -> None:
        # A run inserted as cancelled is announced by both sources: "run_cancelled" from
        # LISTEN (it ignores other run changes), "run_created" from Realtime.
        if reason == "sweep":
            ready.set()
        elif reason in ("run_created", "run_cancelled"):
            arrived.put_nowait(time.perf_counter())

    runner = asyncio.create_task(source.run(wake))
    await asyncio.wait_for(ready.wait(), 10)
    latencies = []
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for _ in range(changes):
            # From sending the (autocommit) insert: the notification can arrive before the
            # insert's own reply has been processed, so "after commit" is not observable.
            sent = time.perf_counter()
            await conn.execute(
                "insert into public.agent_task_executions"
                " (task_id, agent_id, instructions_used, status)"
                " values (%s, %s, 'bench', 'cancelled')",
                [task_id, agent_id],
            )
            latencies.append(await asyncio.wait_for(arrived.get(), 10) - sent)
    runner.cancel()
    return latencies


def report(name: str, latencies: list[float]) -> None:
    ms = sorted(x * 1000 for x in latencies)
    p95 = ms[int(len(ms) * 0.95) - 1]
    print(f"{name:<10} n={len(ms)}  p50={statistics.median(ms):.2f} ms  p95={p95:.2f} ms")


async def main(changes: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = provision.start_server(Path(tmp) / "data", fast=True)
        try:
            url = provision.create_database(server.url, "bench")
            provision.bootstrap_supabase(url)
            migrations.push(url)
            with psycopg.connect(url, autocommit=True) as conn:
                user = make_user(conn)
                agent = make_agent(conn, user)
                task = make_task(conn, user, agent)
            report("postgres", await measure(PostgresWakeups(url), url, task, agent, changes))
            async with RealtimeStandIn(url, KEY) as realtime:
                source = RealtimeWakeups(realtime.url, KEY)
                report("realtime", await measure(source, url, task, agent, changes))
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
