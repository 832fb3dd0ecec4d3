"""``stepsync run`` / ``resume`` / ``runs`` / ``show`` / ``cancel``: start or resume a run,
follow it live, inspect history, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import psycopg
import typer
from rich.console import Group
from rich.json import JSON
from rich.live import Live
from rich.table import Column, Table
from rich.text import Text

from sync.commands.common import (
    DatabaseUrlOption,
    connector,
    console,
    fail,
    user_errors,
)
from sync.connections import Connector
from sync.db import RUN_FINISHED_STATUSES, Database, DatabaseSetupError
from sync.wakeups.postgres import RUN_CHANGED, STEP_READY

T = TypeVar("T")

APPLICATION_NAME = "stepsync-cli"
REDRAW_SECONDS = 0.5

OUTCOME_STYLE = {
    "succeeded": "green",
    "partial": "bold yellow",
    "failed": "bold red",
    "cancelled": "magenta",
}

STATUS_STYLE = {
    "pending": "dim",
    "queued": "cyan",
    "running": "bold yellow",
    "completed": "green",
    "failed": "bold red",
    "skipped": "dim",
    "cancelled": "magenta",
}


def register(app: typer.Typer) -> None:
    app.command(name="run")(run)
    app.command(name="resume")(resume)
    app.command(name="runs")(runs)
    app.command(name="show")(show)
    app.command(name="cancel")(cancel)


def run(
    task_id: str = typer.Argument(..., help="The agent task to run."),
    wait: bool = typer.Option(False, "--wait", help="Follow the run live until it ends."),
    trigger_data: str = typer.Option("{}", help="JSON object passed to the run."),
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """Start a run of a task (start_task_run); with --wait, show its steps live."""
    task = _uuid(task_id, "task id")
    try:
        data = json.loads(trigger_data)
    except json.JSONDecodeError as exc:
        raise fail(f"--trigger-data is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise fail("--trigger-data must be a JSON object")
    with user_errors():
        database = connector(database_url_option, application_name=APPLICATION_NAME, migrate=True)

    async def start(db: Database) -> uuid.UUID:
        try:
            return await db.start_task_run(task, "manual", data)
        except psycopg.Error as exc:
            raise fail(
                f"cannot start a run of task {task}: {_pg_message(exc)}",
                "task ids are agent_tasks.id; `stepsync runs` lists recent runs",
            ) from None

    status = asyncio.run(
        _with_db(database, lambda db: _start_and_follow(db, database, start, "started", wait))
    )
    if status in ("failed", "cancelled"):
        raise typer.Exit(code=1)


def resume(
    run_id: str = typer.Argument(..., help="The ended run to resume."),
    from_step: int | None = typer.Option(
        None,
        "--from",
        help="First step to run again; the steps before it keep their recorded outcomes "
        "(default: the first step that did not complete).",
        show_default=False,
    ),
    start_over: bool = typer.Option(
        False, "--start-over", help="Run every step again (when the steps changed shape)."
    ),
    wait: bool = typer.Option(False, "--wait", help="Follow the new run live until it ends."),
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """Resume an ended run (resume_task_run): a new run of its task with the current steps
    that reuses the outcomes of the steps before --from instead of running them again."""
    run_uuid = _uuid(run_id, "run id")
    with user_errors():
        database = connector(database_url_option, application_name=APPLICATION_NAME, migrate=True)

    async def start(db: Database) -> uuid.UUID:
        try:
            return await db.resume_task_run(run_uuid, from_step=from_step, start_over=start_over)
        except psycopg.Error as exc:
            raise fail(f"cannot resume run {run_uuid}: {_pg_message(exc)}", _pg_hint(exc)) from None

    status = asyncio.run(
        _with_db(
            database,
            lambda db: _start_and_follow(db, database, start, f"resumes run {run_uuid}", wait),
        )
    )
    if status in ("failed", "cancelled"):
        raise typer.Exit(code=1)


def runs(
    task: str | None = typer.Option(None, "--task", help="Only runs of this task."),
    limit: int = typer.Option(20, min=1, max=1000, help="How many runs."),
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """List recent runs, newest first."""
    task_id = _uuid(task, "task id") if task else None
    with user_errors():
        database = connector(database_url_option, application_name=APPLICATION_NAME, migrate=True)

    async def fetch(db: Database) -> list[dict]:
        return await db.recent_runs(task_id=task_id, limit=limit)

    rows = asyncio.run(_with_db(database, fetch))
    table = Table("task", "status", "outcome", "trigger", "created", "steps", "duration")
    table.columns.insert(0, Column("run", no_wrap=True, min_width=36))
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["task_name"],
            _status(row["status"]),
            _outcome(row),
            row["trigger_type"] or "",
            _time(row["created_at"]),
            f"{row['steps_done']}/{row['steps']}",
            _ms(row["duration_ms"]),
        )
    console.print(table)


def show(
    run_id: str = typer.Argument(..., help="The run to show."),
    context: bool = typer.Option(
        False, "--context", help="Also print the input context and output of each step."
    ),
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """A run's status and each step's status, attempts, timing and error."""
    run_uuid = _uuid(run_id, "run id")
    with user_errors():
        database = connector(database_url_option, application_name=APPLICATION_NAME, migrate=True)

    async def fetch(db: Database) -> tuple[dict | None, list[dict]]:
        return await db.run(run_uuid), await db.run_steps(run_uuid)

    run_row, steps = asyncio.run(_with_db(database, fetch))
    if run_row is None:
        raise fail(f"no run {run_uuid}")
    console.print(_render(run_row, steps))
    if context:
        for step in steps:
            console.rule(f"step {step['step_order']}: {step['step_name']}")
            if step["skip_reason"]:
                console.print(f"skipped: {step['skip_reason']}", highlight=False)
            console.print("input context:")
            console.print(JSON.from_data(step["input_context"], default=str))
            console.print("output:")
            console.print(JSON.from_data(step["output"], default=str))
    if run_row["status"] in ("failed", "cancelled"):
        raise typer.Exit(code=1)


def cancel(
    run_id: str = typer.Argument(..., help="The run to cancel."),
    compensate: bool = typer.Option(
        False,
        "--compensate",
        help="Undo the completed steps first (their compensate_instructions, newest first).",
    ),
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """Cancel a pending or running run: its running step is stopped, nothing runs after."""
    run_uuid = _uuid(run_id, "run id")
    with user_errors():
        database = connector(database_url_option, application_name=APPLICATION_NAME, migrate=True)

    async def go(db: Database) -> bool:
        try:
            return await db.cancel_task_run(run_uuid, compensate=compensate)
        except psycopg.Error as exc:
            raise fail(f"cannot cancel run {run_uuid}: {_pg_message(exc)}") from None

    if asyncio.run(_with_db(database, go)):
        console.print(f"run {run_uuid} cancelled")
    else:
        already = "already finished, or compensating?" if compensate else "already finished?"
        raise fail(f"run {run_uuid} was not cancelled ({already})")


# --- following a run --------------------------------------------------------------------


async def _start_and_follow(
    db: Database,
    database: Connector,
    start: Callable[[Database], Awaitable[uuid.UUID]],
    started: str,
    wait: bool,
) -> str:
    run_id = await start(db)
    console.print(f"run {run_id} {started}")
    if not wait:
        return "running"
    if not database.listen_allowed:
        return await _follow(db, run_id, None)
    listener = await database.named(f"{APPLICATION_NAME} listen").connect_async()
    async with listener:
        await listener.execute(f"listen {RUN_CHANGED}")
        await listener.execute(f"listen {STEP_READY}")
        return await _follow(db, run_id, listener)


async def _follow(db: Database, run_id: uuid.UUID, listener: psycopg.AsyncConnection | None) -> str:
    """Redraw on every notification about work or runs (without ``listener``, behind a
    transaction pooler, on the clock only), and at least twice a second."""
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while True:
            run_row, steps = await db.run(run_id), await db.run_steps(run_id)
            if run_row is None:
                raise fail(f"run {run_id} disappeared")
            live.update(_render(run_row, steps), refresh=True)
            if run_row["status"] in RUN_FINISHED_STATUSES:
                live.console.print()
                return run_row["status"]
            if listener is None:
                await asyncio.sleep(REDRAW_SECONDS)
                continue
            with contextlib.suppress(TimeoutError):
                async for _ in listener.notifies(timeout=REDRAW_SECONDS, stop_after=1):
                    pass


def _render(run_row: dict, steps: list[dict]) -> Group:
    header = Text.assemble(
        ("run ", "bold"),
        str(run_row["id"]),
        "  task ",
        (run_row["task_name"], "bold"),
        "  ",
        _status(run_row["status"]),
        "  " if run_row["outcome"] or run_row["compensation"] else "",
        _outcome(run_row),
        f"  {_ms(run_row['duration_ms'])}" if run_row["duration_ms"] is not None else "",
    )
    parts: list[Any] = [header]
    if run_row["resumed_from_run_id"]:
        parts.append(Text(f"resumes run {run_row['resumed_from_run_id']}", style="dim"))
    table = Table("#", "step", "status", "attempt", "started", "duration", "error / output")
    for step in steps:
        detail = step["error_message"] or _short(step["output"])
        if step["status"] == "queued" and step["attempt"] and step["run_after"]:
            detail = f"retry after {_time(step['run_after'])}; {detail}"
        if step["reused_from"]:
            detail = f"reused from the resumed run; {detail}"
        position = str(step["step_order"])
        if step["kind"] == "compensation":
            position = f"{position} (undoes {step['compensates_step_order']})"
        table.add_row(
            position,
            step["step_name"],
            _status(step["status"]),
            f"{step['attempt']}/{step['max_attempts']}",
            _time(step["started_at"]),
            _ms(step["duration_ms"]),
            detail,
        )
    parts.append(table)
    if run_row["error_message"]:
        parts.append(Text(f"error: {run_row['error_message']}", style="red"))
    return Group(*parts)


# --- parsing and formatting ----------------------------------------------------------------


async def _with_db(database: Connector, work: Callable[[Database], Awaitable[T]]) -> T:
    """Open a small pool, do ``work`` with it, close it; setup problems become one line."""
    db = Database.from_connector(database, size=2)
    try:
        await db.open()
        return await work(db)
    except DatabaseSetupError as exc:
        raise fail(str(exc), exc.hint) from None
    finally:
        await db.close()


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise fail(f"{value!r} is not a valid {what} (expected a UUID)") from None


def _pg_message(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or str(exc).strip()
    return f"{text} ({diag.message_detail})" if diag.message_detail else text


def _pg_hint(exc: psycopg.Error) -> str | None:
    return exc.diag.message_hint


def _status(status: str | None) -> Text:
    return Text(status or "", style=STATUS_STYLE.get(status or "", ""))


def _outcome(run_row: dict) -> Text:
    """How a run turned out, beyond its status: ``partial (2 steps failed)``, and where
    its compensation stands (``compensation completed``)."""
    outcome = run_row["outcome"]
    text = Text(outcome or "", style=OUTCOME_STYLE.get(outcome or "", ""))
    if outcome == "partial":
        failed = run_row["steps_failed"]
        text.append(f" ({failed} step{'s' if failed != 1 else ''} failed)")
    if run_row["compensation"]:
        text.append(", " if outcome else "")
        text.append(f"compensation {run_row['compensation']}")
    return text


def _time(value: datetime | None) -> str:
    return value.astimezone().strftime("%H:%M:%S") if value else ""


def _ms(value: int | float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def _short(output: Any, limit: int = 60) -> str:
    if output is None:
        return ""
    text = json.dumps(output, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
