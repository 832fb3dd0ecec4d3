"""``stepsync events emit``: emit a task event as the service (``public.emit_task_event``)."""

from __future__ import annotations

import json

import psycopg
import typer
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sync.commands.common import (
    DatabaseUrlOption,
    connector,
    console,
    database_error,
    fail,
    user_errors,
)

app = typer.Typer(help="Emit task events (event-based tasks).", no_args_is_help=True)

EMIT = "select * from public.emit_task_event(%s, %s, %s)"


@app.command()
def emit(
    event_type: str = typer.Argument(..., help="Event type, e.g. email_received."),
    data: str = typer.Option("{}", "--data", help="The event's data: a JSON object."),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="Emitting again with this key starts nothing again."
    ),
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """Start a run of every active event-based task of EVENT_TYPE whose filters match DATA,
    for the owners in the multi_step_workflows rollout (as the service role: every user's
    tasks)."""
    try:
        event_data = json.loads(data)
    except json.JSONDecodeError as exc:
        raise fail(f"--data is not JSON: {exc}") from None
    with user_errors():
        database = connector(database_url_option, application_name="stepsync events", migrate=True)
    try:
        with database.connect(row_factory=dict_row) as conn, conn.acting():
            rows = conn.execute(EMIT, [event_type, Jsonb(event_data), idempotency_key]).fetchall()
    except (psycopg.errors.InvalidParameterValue, psycopg.errors.InsufficientPrivilege) as exc:
        raise fail(exc.diag.message_primary or str(exc), exc.diag.message_hint) from None
    except psycopg.Error as exc:
        raise database_error(exc) from None
    if not rows:
        console.print(f"no active {event_type} task matches")
        return
    # One line per task (two ids do not fit a table in 80 columns).
    for row in rows:
        line = f"{row['task_id']}  {row['outcome']}"
        if row["run_id"]:
            line += f"  run {row['run_id']}"
        if row["detail"]:
            line += f"  ({row['detail']})"
        console.print(line, highlight=False, soft_wrap=True)
    started = sum(1 for row in rows if row["outcome"] == "started")
    console.print(f"{started} run(s) started, {len(rows)} task(s) matched")
