"""The demo: an app as it is today, upgraded to stepsync and run, in about ten seconds.

1. apply the legacy baseline only and load the app's data the way the app writes it;
2. apply the stepsync migrations (the in-place upgrade a live project gets);
3. save one task as a 4-step workflow through `save_task_steps`, as the UI does;
4. backfill the legacy tasks into single-step workflows, then verify the backfill;
5. start the service with the demo executor, run the workflow and one legacy task,
   and show each step live: status, timing and the context it received.

Everything runs in this process against one database; nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

from rich.console import Console, Group
from rich.json import JSON
from rich.live import Live
from rich.table import Table

from sync import backfill, demo_data, migrations
from sync.connections import Connector
from sync.db import Database
from sync.service import build_service
from sync.settings import Settings

BASELINE_VERSION = "20261126000100"  # the app's schema before stepsync
FINISHED = ("completed", "failed", "cancelled")


@dataclass(frozen=True)
class DemoOutcome:
    backfill_run: uuid.UUID
    backfill_verified: bool
    run_statuses: dict[uuid.UUID, str]  # run id -> final status

    @property
    def ok(self) -> bool:
        return self.backfill_verified and all(s == "completed" for s in self.run_statuses.values())


def prepare(url: str, console: Console) -> uuid.UUID:
    """Steps 1–4: legacy app, upgrade, one saved workflow, backfill. Returns the backfill run."""
    console.rule("1. the app as it is today")
    migrations.push(url, up_to=BASELINE_VERSION)
    with Connector(url, role=None, application_name="stepsync demo").connect() as conn:
        demo_data.load_legacy_data(conn)
        count = conn.execute("select count(*) from public.agent_tasks").fetchone()[0]
    console.print(f"{len(demo_data.USERS)} users, {count} single-instruction tasks")

    console.rule("2. upgrade: stepsync migrations")
    applied = migrations.push(url)
    console.print(f"{len(applied)} migrations applied")

    console.rule("3. carol saves a 4-step workflow (save_task_steps, as the UI)")
    with Connector(url, role=None, application_name="stepsync demo").connect() as conn:
        demo_data.save_workflow(conn)
        steps = conn.execute(
            "select step_order, step_name, context_mode::text, include_previous_context"
            " from public.task_steps where task_id = %s and deleted_at is null"
            " order by step_order",
            [demo_data.WORKFLOW_TASK[0]],
        ).fetchall()
    table = Table("#", "step", "context")
    for order, name, mode, include in steps:
        table.add_row(str(order), name, mode if include else "own context_data only")
    console.print(table)

    console.rule("4. backfill legacy tasks into single-step workflows")
    settings = backfill.Settings(batch_size=1000)
    with backfill.connect(url) as conn:
        run_id = backfill.start_run(conn, settings)
        result = backfill.run(conn, run_id, settings)
        report = backfill.verify(conn, settings)
    counts = Table("category", "tasks")
    for key, value in result.counts.items():
        if value:
            counts.add_row(backfill.CATEGORIES[key][0], str(value))
    console.print(counts)
    console.print(
        f"verify: {report.verified}/{report.eligible} eligible tasks have their step 1"
        f" ({'ok' if report.ok else 'NOT OK'})"
    )
    return run_id


async def run_workflows(url: str, console: Console) -> dict[uuid.UUID, str]:
    """Step 5: the service runs the workflow and one legacy task; show them live."""
    settings = Settings(
        database_url=url,
        executor="demo",
        metrics_port=0,
        poll_interval_seconds=1.0,
        log_level="WARNING",
    )
    service = build_service(settings, url)
    serving = asyncio.create_task(service.run())
    db = Database(
        url,
        role=settings.db_role,
        size=2,
        transaction_pooler=settings.db_transaction_pooler,
        statement_timeout_seconds=settings.db_statement_timeout_seconds,
    )
    await db.open()
    try:
        data = demo_data.demo_data()
        statuses = {}
        for task_id in (data.workflow_task, data.legacy_task):
            run_id = await db.start_task_run(task_id, "manual", {"source": "demo"})
            statuses[run_id] = await follow(db, run_id, console)
        await show_contexts(db, next(iter(statuses)), console)
        return statuses
    finally:
        await db.close()
        service.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


async def follow(db: Database, run_id: uuid.UUID, console: Console) -> str:
    """Redraw the run's steps until it finishes (the display the UI would show)."""
    run = await db.run(run_id)
    console.rule(f"5. the service runs “{run['task_name']}”")
    with Live(console=console, auto_refresh=False) as live:
        while True:
            run, steps = await db.run(run_id), await db.run_steps(run_id)
            live.update(render(run, steps), refresh=True)
            if run["status"] in FINISHED:
                break
            await asyncio.sleep(0.1)
    console.print()
    return run["status"]


def render(run: dict, steps: list[dict]) -> Group:
    table = Table("#", "step", "status", "attempt", "duration", "output")
    table.columns[-1].no_wrap = True
    table.columns[-1].overflow = "ellipsis"
    for step in steps:
        output = (step["output"] or {}).get("text", "") if isinstance(step["output"], dict) else ""
        table.add_row(
            str(step["step_order"]),
            step["step_name"],
            step["status"],
            str(step["attempt"]),
            f"{step['duration_ms']} ms" if step["duration_ms"] is not None else "",
            output[:60],
        )
    return Group(f"run {run['id']}: [bold]{run['status']}[/]", table)


async def show_contexts(db: Database, run_id: uuid.UUID, console: Console) -> None:
    console.rule("the context each step of the workflow received")
    for step in await db.run_steps(run_id):
        console.print(f"[bold]step {step['step_order']}: {step['step_name']}[/]")
        console.print(JSON.from_data(step["input_context"], default=str))


def summary(outcome: DemoOutcome, console: Console) -> None:
    console.rule("summary")
    table = Table("run", "status")
    for run_id, status in outcome.run_statuses.items():
        table.add_row(str(run_id), status)
    console.print(table)
    console.print(f"backfill {outcome.backfill_run}: verified={outcome.backfill_verified}")


def run_demo(url: str, console: Console) -> DemoOutcome:
    backfill_run = prepare(url, console)
    statuses = asyncio.run(run_workflows(url, console))
    with backfill.connect(url) as conn:
        verified = backfill.verify(conn, backfill.Settings()).ok
    outcome = DemoOutcome(backfill_run, verified, statuses)
    summary(outcome, console)
    return outcome
