"""The ``stepsync`` command line: one module per command group in ``sync/commands``."""

from __future__ import annotations

import typer

from sync.commands import (
    backfill,
    config,
    db,
    demo,
    doctor,
    embedded,
    events,
    flags,
    runs,
    schedules,
    serve,
)

app = typer.Typer(
    help="stepsync: multi-step workflows for Supabase agent tasks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command(name="serve")(serve.serve)
runs.register(app)
app.command(name="demo")(demo.demo)
app.command(name="doctor")(doctor.doctor)
app.command(name="config")(config.config)
app.add_typer(db.app, name="db")
app.add_typer(backfill.app, name="backfill")
app.add_typer(flags.app, name="flags")
app.add_typer(events.app, name="events")
app.command(name="schedules")(schedules.schedules)
app.add_typer(embedded.app, name="embedded")
