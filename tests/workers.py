"""Real ``stepsync serve`` processes for the crash, race and shutdown tests.

Also the step function those workers run (``python:tests.workers:scripted_step``). Its
behaviour is chosen by the step's instructions, so a test describes a workflow in data:

- ``noop`` (or anything else): return at once.
- ``hold``: sleep ``STEPSYNC_TEST_HOLD_SECONDS`` (an env var of that worker only, so a
  second worker does not hold the same step), then return.
- ``fail``: a permanent failure; ``flaky`` a retryable one.

Every execution is recorded in ``test_step_log`` (see :func:`create_step_log`) with the
worker's name and its start/end times, and every committed completion in
``test_completion_log`` by a trigger, so tests can check exactly-once commits and that
no step ever ran concurrently with itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from sync.executors.base import PermanentStepError, RetryableStepError, StepRequest
from tests.support import (
    acting_as,
    make_agent,
    make_task,
    make_user,
    replace_steps,
    run_statuses,
)

REPO = Path(__file__).resolve().parent.parent
LOG_URL_ENV = "STEPSYNC_TEST_LOG_URL"
WORKER_NAME_ENV = "STEPSYNC_TEST_WORKER"
HOLD_ENV = "STEPSYNC_TEST_HOLD_SECONDS"
EXECUTIONS_DIR_ENV = "STEPSYNC_TEST_EXECUTIONS_DIR"
STEP_SECONDS_ENV = "STEPSYNC_TEST_STEP_SECONDS"
# What start_worker passes unless told to run with the service's defaults: short leases and
# fast polls, so that tests of recovery take seconds.
TEST_TIMINGS = ("--lease-seconds", "2", "--poll-interval", "0.5")

STEP_LOG_SQL = """
create table public.test_step_log (
    id bigint generated always as identity primary key,
    step_execution_id uuid not null,
    run_id uuid not null,
    step_order int not null,
    attempt int not null,
    worker text not null,
    started_at timestamptz not null default clock_timestamp(),
    finished_at timestamptz
);
create table public.test_completion_log (
    id bigint generated always as identity primary key,
    step_execution_id uuid not null,
    output jsonb,
    logged_at timestamptz not null default clock_timestamp()
);
create function public.test_log_completion() returns trigger language plpgsql as $$
begin
    insert into public.test_completion_log (step_execution_id, output) values (new.id, new.output);
    return null;
end $$;
create trigger test_log_completion after update on public.task_step_executions
for each row when (
    new.status = 'completed'
    and (old.status is distinct from new.status or old.output is distinct from new.output)
) execute function public.test_log_completion();
"""


def create_step_log(conn: psycopg.Connection) -> None:
    """Test instrumentation: the execution log and a completion-recording trigger."""
    conn.execute(STEP_LOG_SQL)


# --- the step function the worker processes run -----------------------------------------

_pools: dict[int, AsyncConnectionPool] = {}


async def _log_pool() -> AsyncConnectionPool:
    loop_id = id(asyncio.get_running_loop())
    pool = _pools.get(loop_id)
    if pool is None:
        pool = AsyncConnectionPool(
            os.environ[LOG_URL_ENV],
            min_size=1,
            max_size=4,
            kwargs={"autocommit": True},
            open=False,
        )
        await pool.open(wait=True)
        _pools[loop_id] = pool
    return pool


async def scripted_step(request: StepRequest) -> dict[str, Any]:
    worker = os.environ.get(WORKER_NAME_ENV, "worker")
    pool = await _log_pool()
    async with pool.connection() as conn:
        log_id = (
            await (
                await conn.execute(
                    "insert into public.test_step_log"
                    " (step_execution_id, run_id, step_order, attempt, worker)"
                    " values (%s, %s, %s, %s, %s) returning id",
                    [
                        request.step_execution_id,
                        request.run_id,
                        request.step_order,
                        request.attempt,
                        worker,
                    ],
                )
            ).fetchone()
        )[0]
    command = request.instructions.strip()
    if command == "hold":
        await asyncio.sleep(float(os.environ.get(HOLD_ENV, "0")))
    async with pool.connection() as conn:
        await conn.execute(
            "update public.test_step_log set finished_at = clock_timestamp() where id = %s",
            [log_id],
        )
    if command == "fail":
        raise PermanentStepError(f"step {request.step_order} fails on purpose")
    if command == "flaky":
        raise RetryableStepError(f"step {request.step_order} is flaky")
    return {"worker": worker, "step": request.step_order, "log_id": log_id}


async def recorded_step(request: StepRequest) -> dict[str, Any]:
    """Sleep ``STEPSYNC_TEST_STEP_SECONDS``, recording each execution in a file of this
    worker's under ``STEPSYNC_TEST_EXECUTIONS_DIR`` rather than in the database, so that
    the record survives a database outage and a killed worker's started executions count."""
    worker = os.environ.get(WORKER_NAME_ENV, "worker")
    record = Path(os.environ[EXECUTIONS_DIR_ENV]) / f"{worker}.jsonl"
    with record.open("a") as executions:
        executions.write(
            json.dumps({"step_execution_id": str(request.step_execution_id), "worker": worker})
            + "\n"
        )
    await asyncio.sleep(float(os.environ.get(STEP_SECONDS_ENV, "0.5")))
    return {"worker": worker, "step": request.step_order}


def recorded_executions(directory: Path) -> dict[str, int]:
    """Executions started per step execution id, by every worker that recorded any."""
    counts: dict[str, int] = {}
    for record in directory.glob("*.jsonl"):
        for line in record.read_text().splitlines():
            step = json.loads(line)["step_execution_id"]
            counts[step] = counts.get(step, 0) + 1
    return counts


def blocking_step(request: StepRequest) -> dict[str, Any]:
    """A plain (thread-run) step function: ``hold`` blocks its thread, uninterruptibly."""
    if request.instructions.strip() == "hold":
        time.sleep(float(os.environ.get(HOLD_ENV, "0")))
    return {"worker": os.environ.get(WORKER_NAME_ENV, "worker"), "step": request.step_order}


# --- runs the process tests set up and check ---------------------------------------------


def setup_task(conn: psycopg.Connection, instructions: list[str], **step) -> uuid.UUID:
    user_id = make_user(conn)
    task_id = make_task(conn, user_id, make_agent(conn, user_id))
    replace_steps(conn, task_id, [{"instructions": text, **step} for text in instructions])
    return task_id


def start_runs(conn: psycopg.Connection, task_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    with acting_as(conn, "service_role"):
        return [
            row[0]
            for row in conn.execute(
                "select public.start_task_run(t) from unnest(%s::uuid[]) as t", [task_ids]
            ).fetchall()
        ]


def all_finished(conn: psycopg.Connection, run_ids: list[uuid.UUID]) -> bool:
    statuses = run_statuses(conn, run_ids)
    return sum(statuses.get(s, 0) for s in ("completed", "failed", "cancelled")) == len(run_ids)


def completions_per_step(conn: psycopg.Connection, run_ids: list[uuid.UUID]) -> dict:
    rows = conn.execute(
        "select s.id, count(c.id) from public.task_step_executions s"
        " left join public.test_completion_log c on c.step_execution_id = s.id"
        " where s.run_id = any(%s) group by s.id",
        [run_ids],
    ).fetchall()
    return dict(rows)


def dangling_leases(conn: psycopg.Connection) -> int:
    return conn.execute(
        "select count(*) from public.task_step_executions"
        " where status = 'running' or lease_owner is not null"
    ).fetchone()[0]


# --- worker processes -------------------------------------------------------------------


class Worker:
    """One ``stepsync serve`` process; its JSON log lines are kept in a file."""

    def __init__(self, name: str, proc: subprocess.Popen, log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    def logs(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                entries.append(json.loads(line))
        return entries

    def wait_for_log(self, predicate: Callable[[dict], bool], timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for entry in self.logs():
                if predicate(entry):
                    return entry
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no such log line within {timeout}s:\n{self.tail()}")

    def wait_ready(self, timeout: float = 30) -> None:
        self.wait_for_log(lambda e: e.get("msg") == "serving", timeout)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_worker(
    db_url: str,
    log_dir: Path,
    name: str,
    *args: str,
    env: dict[str, str] | None = None,
    executor: str = "python:tests.workers:scripted_step",
    default_timings: bool = False,
) -> Worker:
    """Start ``python -m sync serve`` against ``db_url`` with test-friendly defaults:
    short leases, fast polls (unless ``default_timings``), no metrics port. ``args``
    override or add options."""
    log_path = log_dir / f"{name}.log"
    command = [
        sys.executable,
        "-m",
        "sync",
        "serve",
        "--database-url",
        db_url,
        "--executor",
        executor,
        "--worker-id",
        name,
        "--metrics-port",
        "0",
        *(() if default_timings else TEST_TIMINGS),
        *args,
    ]
    full_env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        LOG_URL_ENV: db_url,
        WORKER_NAME_ENV: name,
        "STEPSYNC_LOG_FORMAT": "json",
        **({} if default_timings else {"STEPSYNC_HEARTBEAT_INTERVAL_SECONDS": "0.5"}),
        **(env or {}),
    }
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            command, cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
        )
    return Worker(name, proc, log_path)


@contextlib.contextmanager
def workers(db_url: str, log_dir: Path, count: int, *args: str, **kwargs: Any) -> Iterator[list]:
    started = [start_worker(db_url, log_dir, f"w{i}", *args, **kwargs) for i in range(count)]
    try:
        for worker in started:
            worker.wait_ready()
        yield started
    finally:
        for worker in started:
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait()


def wait_until(check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (a condition, not a sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# --- an in-process service ------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(db_url: str, function: Callable[[StepRequest], Any], **overrides: Any):
    """A real StepService (pool, LISTEN, poll timer) running ``function`` as its executor."""
    from sync.executors.python import PythonExecutor
    from sync.service import build_service
    from sync.settings import Settings

    settings = Settings(
        **{
            "database_url": db_url,
            "metrics_port": 0,
            "poll_interval_seconds": 0.5,
            "lease_seconds": 5,
            "worker_id": "in-process",
            **overrides,
        }
    )
    service = build_service(settings, db_url, executor=PythonExecutor(function))
    task = asyncio.create_task(service.run())
    started = asyncio.create_task(service.started.wait())
    await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started.cancel()
        task.result()  # raises the start-up error
    try:
        yield service
    finally:
        service.stop()
        await task


async def _wait_for_row(
    db_url: str,
    query: str,
    params: list[Any],
    done: Callable[[dict[str, Any] | None], bool],
    timeout: float,
    what: str,
) -> dict[str, Any]:
    """Poll ``query`` (without blocking the loop) until ``done`` holds for its row."""
    async with await psycopg.AsyncConnection.connect(
        db_url, autocommit=True, row_factory=dict_row
    ) as conn:
        deadline = time.monotonic() + timeout
        while True:
            row = await (await conn.execute(query, params)).fetchone()
            if done(row):
                return row
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} after {timeout}s (last seen: {row})")
            await asyncio.sleep(0.05)


async def wait_for_run(db_url: str, run_id: Any, timeout: float = 30) -> dict[str, Any]:
    """Wait until the run has finished; return its row."""
    return await _wait_for_row(
        db_url,
        "select * from public.agent_task_executions where id = %s",
        [run_id],
        lambda row: row["status"] in ("completed", "failed", "cancelled"),
        timeout,
        f"run {run_id} not finished",
    )


async def wait_for_step(
    db_url: str,
    run_id: Any,
    step_order: int,
    statuses: tuple[str, ...],
    timeout: float = 30,
    where: Callable[[dict[str, Any]], bool] = lambda row: True,
) -> dict[str, Any]:
    """Wait until the step is in one of ``statuses`` (and ``where`` holds); return its row."""
    return await _wait_for_row(
        db_url,
        "select * from public.task_step_executions where run_id = %s and step_order = %s",
        [run_id, step_order],
        lambda row: row is not None and row["status"] in statuses and where(row),
        timeout,
        f"step {step_order} not in {statuses}",
    )
