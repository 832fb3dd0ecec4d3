"""Runs survive the infrastructure, at the service's default settings: four real `stepsync
serve` processes work through 60 three-step runs while workers are SIGKILLed and replaced
and PostgreSQL is stopped and started again mid-run.

What must hold: every run completes (none lost, none failed because a worker died or the
database went away), every step's result is committed exactly once (a trigger records
each commit), and every line any worker wrote is a JSON log line. Re-executions (a killed
worker's step run again elsewhere) are expected and counted, not forbidden.

The test has a cluster of its own: it stops and starts it.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from sync import migrations
from sync.embedded import start_local_cluster, stop_local_cluster
from tests.helpers import provision
from tests.support import run_statuses
from tests.workers import (
    EXECUTIONS_DIR_ENV,
    STEP_SECONDS_ENV,
    Worker,
    all_finished,
    completions_per_step,
    create_step_log,
    recorded_executions,
    setup_task,
    start_runs,
    start_worker,
    wait_until,
)

pytestmark = pytest.mark.slow

RUNS = 60
STEPS = 3
WORKERS = 4
KILLS = 4
OUTAGE_SECONDS = 3.0
# Long enough that every kill and the outage land on steps in flight.
STEP_SECONDS = 3.0


class Cluster:
    """A throwaway cluster that can be stopped and started on the same port."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.bin_dir = provision.pg_bin_dir()
        self.server = start_local_cluster(data_dir, bin_dir=self.bin_dir, fast=True)
        self.port = int(self.server.url.rsplit(":", 1)[1].split("/")[0])

    def stop(self) -> None:
        stop_local_cluster(self.data_dir, bin_dir=self.bin_dir)

    def start(self) -> None:
        start_local_cluster(self.data_dir, bin_dir=self.bin_dir, fast=True, port=self.port)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "pgdata")
    try:
        yield cluster
    finally:
        cluster.stop()


def test_kills_and_a_database_restart_lose_fail_and_double_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    url = provision.create_database(cluster.server.url, "chaos")
    provision.bootstrap_supabase(url)
    migrations.push(url)
    executions = tmp_path / "executions"
    executions.mkdir()
    with psycopg.connect(url, autocommit=True) as conn:
        create_step_log(conn)
        run_ids = start_runs(conn, [setup_task(conn, ["work"] * STEPS) for _ in range(RUNS)])

    env = {EXECUTIONS_DIR_ENV: str(executions), STEP_SECONDS_ENV: str(STEP_SECONDS)}
    started: list[Worker] = []

    def start(name: str) -> Worker:
        worker = start_worker(
            url,
            tmp_path,
            name,
            executor="python:tests.workers:recorded_step",
            default_timings=True,
            env=env,
        )
        started.append(worker)
        return worker

    chance = random.Random(15)
    live = [start(f"w{i}") for i in range(WORKERS)]
    try:
        for worker in live:
            worker.wait_ready()
        # Chaos: a worker killed and replaced every ~3 s, the database down once.
        # A worker started while the database is down refuses to start (one error line,
        # exit 1) and its supervisor starts it again later; so replacements start after
        # the outage here, as a supervisor's restart delay would have it.
        for kill in range(KILLS):
            time.sleep(3)
            doomed = live.pop(chance.randrange(len(live)))
            doomed.signal(9)
            doomed.proc.wait()
            if kill == 1:
                cluster.stop()
                time.sleep(OUTAGE_SECONDS)
                cluster.start()
            live.append(start(f"w{WORKERS + kill}"))
        last_event = time.monotonic()
        with psycopg.connect(url, autocommit=True) as conn:
            wait_until(lambda: all_finished(conn, run_ids), timeout=240, what="every run")
            recovered_in = time.monotonic() - last_event
            statuses = run_statuses(conn, run_ids)
            commits = completions_per_step(conn, run_ids)
    finally:
        for worker in started:
            worker.stop()

    runs_executed = recorded_executions(executions)
    re_executions = sum(runs_executed.values()) - len(commits)
    print(
        f"\nruns {RUNS} x {STEPS} steps, {WORKERS} workers, kills {KILLS}, one restart of"
        f" {OUTAGE_SECONDS:g} s: {statuses}; re-executions {re_executions};"
        f" finished {recovered_in:.1f} s after the last kill"
    )
    assert statuses == {"completed": RUNS}
    assert sorted(set(commits.values())) == [1], "each step's result committed exactly once"
    assert len(commits) == RUNS * STEPS
    plain = [
        (worker.name, line)
        for worker in started
        for line in worker.log_path.read_text().splitlines()
        if not _is_json_object(line)
    ]
    assert plain == []


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False
