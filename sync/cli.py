"""The ``stepsync`` command line."""

from __future__ import annotations

import typer

from sync.commands import backfill, config, db, demo, embedded, flags

app = typer.Typer(
    help="stepsync: multi-step workflows for Supabase agent tasks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(db.app, name="db")
app.add_typer(embedded.app, name="embedded")
app.add_typer(backfill.app, name="backfill")
app.add_typer(flags.app, name="flags")
app.command(name="demo")(demo.demo)
app.command(name="config")(config.config)
