"""``stepsync backfill``: move legacy single-instruction tasks to single-step workflows."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from sync import backfill
from sync.commands.common import (
    DatabaseUrlOption,
    connector,
    console,
    database_error,
    err_console,
    fail,
    user_errors,
)
from sync.connections import RoleConnection

app = typer.Typer(help="Backfill legacy data into the multi-step schema.", no_args_is_help=True)

# Exit code when the work finished but something needs a person (tasks left without a
# step, verify exceptions, rollback kept steps, an unfinished run).
NEEDS_ATTENTION = 3
PLAIN_PROGRESS_EVERY_SECONDS = 5.0

RollbackOption = typer.Option(
    None,
    "--rollback",
    metavar="RUN_ID",
    help="Remove the steps this backfill run created, and nothing else.",
)
RunIdOption = typer.Option(
    None, "--run-id", help="Continue this unfinished run from its checkpoint."
)


@app.command("legacy-tasks")
def legacy_tasks(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Report what would change, by category; write nothing."
    ),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Only verify: every eligible task has exactly one live step 1 with its text.",
    ),
    rollback: uuid.UUID | None = RollbackOption,
    resume: bool = typer.Option(
        False, "--resume", help="Continue the latest unfinished run from its checkpoint."
    ),
    run_id: uuid.UUID | None = RunIdOption,
    batch_size: int = typer.Option(
        5000, "--batch-size", min=1, max=100_000, help="Tasks per batch transaction."
    ),
    pause: float = typer.Option(
        0.0, "--pause", min=0.0, help="Seconds to wait between batches (load shedding)."
    ),
    lock_timeout: int = typer.Option(
        2000, "--lock-timeout", min=1, help="lock_timeout of each batch, in milliseconds."
    ),
    statement_timeout: int = typer.Option(
        60000,
        "--statement-timeout",
        min=1,
        help="statement_timeout of each batch, in milliseconds.",
    ),
    samples: int = typer.Option(
        5, "--samples", min=0, max=1000, help="Task ids shown per category (dry run)."
    ),
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """Give every legacy task without a live step its step 1, in gentle batches.

    Exit codes: 0 all done and clean, 1 error, 2 bad arguments, 3 finished but something
    needs attention (tasks listed without a step, verify exceptions, kept steps).
    """
    modes = [name for name, on in (("--dry-run", dry_run), ("--verify", verify)) if on]
    if rollback is not None:
        modes.append("--rollback")
    if len(modes) > 1:
        raise fail(f"{' and '.join(modes)} cannot be combined", "run them one after the other")
    if modes and (resume or run_id is not None):
        raise fail(f"{modes[0]} cannot be combined with --resume/--run-id")
    with user_errors(), backfill_errors():
        settings = backfill.Settings(
            batch_size=batch_size,
            pause_seconds=pause,
            lock_timeout_ms=lock_timeout,
            statement_timeout_ms=statement_timeout,
        )
        database = connector(
            database_url_option, application_name=backfill.APPLICATION_NAME, migrate=True
        )
        with backfill.connect(database) as conn:
            backfill.require_schema(conn)
            if dry_run:
                attention = do_plan(conn, settings, samples)
            elif verify:
                attention = do_verify(conn, settings)
            elif rollback is not None:
                attention = do_rollback(conn, rollback, settings)
            else:
                attention = do_backfill(conn, settings, resume=resume, run_id=run_id)
    if attention:
        raise typer.Exit(code=NEEDS_ATTENTION)


@contextmanager
def backfill_errors() -> Iterator[None]:
    try:
        yield
    except backfill.BackfillError as exc:
        raise fail(str(exc)) from None
    except psycopg.OperationalError as exc:
        raise database_error(exc) from None
    except KeyboardInterrupt:
        err_console.print("interrupted: the batch in flight rolled back; resume with --resume")
        raise typer.Exit(code=130) from None


def do_backfill(
    conn: RoleConnection, settings: backfill.Settings, *, resume: bool, run_id: uuid.UUID | None
) -> bool:
    backfill.take_lock(conn)
    unfinished = backfill.unfinished_run(conn)
    if run_id is not None:
        target = backfill.get_run(conn, run_id).id
    elif resume:
        if unfinished is None:
            raise backfill.BackfillError("there is no unfinished backfill run to resume")
        target = unfinished.id
    elif unfinished is not None:
        raise backfill.BackfillError(
            f"backfill run {unfinished.id} is unfinished "
            f"({unfinished.tasks_scanned} tasks done): continue it with --resume"
        )
    else:
        target = backfill.start_run(conn, settings)
    err_console.print(f"backfill run {target}", highlight=False)
    with progress_reporter("backfill", "tasks") as report:
        result = backfill.run(conn, target, settings, on_progress=report)
    print_run(result)
    listed = backfill.exceptions(conn, target)
    if listed:
        table = Table(title="Tasks left without a step")
        table.add_column("task_id", no_wrap=True, min_width=36)
        table.add_column("category", no_wrap=True)
        for row in listed:
            table.add_row(str(row["task_id"]), row["category"])
        console.print(table)
        for category, detail in sorted({(r["category"], r["detail"]) for r in listed}):
            console.print(f"{category}: {detail}", highlight=False)
        missing = result.counts["blank_instructions"] + result.counts["marker_without_steps"]
        if missing > len(listed):
            console.print(
                f"{missing - len(listed)} more: select * from stepsync.backfill_exceptions"
                f" where backfill_run_id = '{target}'",
                highlight=False,
            )
    console.print(f"next: stepsync backfill legacy-tasks --verify (rollback: --rollback {target})")
    return result.needs_attention


def do_plan(conn: RoleConnection, settings: backfill.Settings, samples: int) -> bool:
    with progress_reporter("dry run", "tasks") as report:
        result = backfill.plan(conn, settings, samples=samples, on_progress=report)
    table = Table("category", "tasks", title="Dry run: nothing was written")
    table.add_column("sample task ids", no_wrap=True, min_width=36)
    table.add_row("tasks examined", str(result.tasks_scanned), "")
    for key, (label, _) in backfill.CATEGORIES.items():
        label = "step 1 to create" if key == "steps_created" else label
        ids = "\n".join(str(i) for i in result.samples.get(key, []))
        table.add_row(label, str(result.counts.get(key, 0)), ids)
    console.print(table)
    return result.needs_attention


def do_verify(conn: RoleConnection, settings: backfill.Settings) -> bool:
    with progress_reporter("verify", "tasks") as report:
        result = backfill.verify(conn, settings, on_progress=report)
    table = Table("check", "value", title="Verify")
    table.add_row("tasks examined", str(result.tasks_scanned))
    table.add_row("eligible tasks (instructions make a valid step)", str(result.eligible))
    table.add_row("with exactly one live step 1, same text", str(result.verified))
    table.add_row("checksum of task instructions", str(result.tasks_checksum))
    table.add_row("checksum of step 1 instructions", str(result.steps_checksum))
    table.add_row("exceptions", str(result.exception_count))
    table.add_row("result", "OK" if result.ok else "FAILED")
    console.print(table)
    if result.exceptions:
        listed = Table(title="Exceptions")
        listed.add_column("task_id", no_wrap=True, min_width=36)
        listed.add_column("problem")
        for row in result.exceptions:
            listed.add_row(str(row["task_id"]), row["problem"])
        console.print(listed)
        if result.exception_count > len(result.exceptions):
            console.print(f"... and {result.exception_count - len(result.exceptions)} more")
    return not result.ok


def do_rollback(conn: RoleConnection, run_id: uuid.UUID, settings: backfill.Settings) -> bool:
    backfill.take_lock(conn)
    with progress_reporter("rollback", "steps") as report:
        result = backfill.rollback(conn, run_id, settings, on_progress=report)
    table = Table("rollback", "steps", title=f"Rollback of backfill run {run_id}")
    table.add_row("removed", str(result.removed))
    table.add_row("kept (their task has other live steps now)", str(result.kept))
    console.print(table)
    return result.needs_attention


def print_run(result: backfill.Run) -> None:
    table = Table("category", "tasks", title=f"Backfill run {result.id}: {result.status}")
    table.add_row("tasks examined", str(result.tasks_scanned))
    for key, (label, attention) in backfill.CATEGORIES.items():
        count = result.counts[key]
        mark = " [bold yellow](needs attention)[/]" if attention and count else ""
        table.add_row(label + mark, str(count))
    table.add_row("batches", str(result.batches))
    console.print(table)


@contextmanager
def progress_reporter(label: str, unit: str) -> Iterator[backfill.ProgressCallback]:
    """A rich progress bar (rows/s, ETA) on a terminal; plain periodic lines otherwise."""
    if err_console.is_terminal:
        columns = (
            TextColumn(f"[bold]{label}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]:>9,.0f} " + unit + "/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err_console, transient=False) as bar:
            task = bar.add_task(label, total=None, rate=0.0)

            def update(progress: backfill.Progress) -> None:
                bar.update(task, completed=progress.done, total=progress.total, rate=progress.rate)

            yield update
        return

    last_printed = 0.0
    latest: list[backfill.Progress] = []

    def print_line(progress: backfill.Progress) -> None:
        remaining = progress.total - progress.done
        eta = f"{remaining / progress.rate:.0f}s" if progress.rate else "?"
        percent = 100 * progress.done / progress.total if progress.total else 100
        err_console.print(
            f"{label}: {progress.done}/{progress.total} {unit} ({percent:.0f}%),"
            f" {progress.rate:,.0f} {unit}/s, ETA {eta}",
            highlight=False,
        )

    def line(progress: backfill.Progress) -> None:
        nonlocal last_printed
        latest[:] = [progress]
        now = time.monotonic()
        if now - last_printed >= PLAIN_PROGRESS_EVERY_SECONDS:
            last_printed = now
            print_line(progress)
            latest.clear()

    yield line
    if latest:
        print_line(latest[0])
