"""``stepsync db``: apply and inspect the migrations (``supabase/migrations``, shipped in the
package)."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from sync import migrations
from sync.commands.common import DatabaseUrlOption, connector, console, user_errors

app = typer.Typer(help="Apply and inspect the SQL migrations (compatible with `supabase db push`).")


@app.command()
def push(database_url_option: str | None = DatabaseUrlOption) -> None:
    """Apply pending migrations in order, each in its own transaction."""
    with user_errors():
        database = connector(database_url_option, application_name="stepsync migrations")
        applied = migrations.push(
            database,
            on_apply=lambda m: console.print(f"applying {m.file_name} ..."),
            on_warning=lambda text: console.print(f"[yellow]warning:[/yellow] {escape(text)}"),
        )
    console.print(f"{len(applied)} migration(s) applied." if applied else "Database is up to date.")


@app.command()
def status(database_url_option: str | None = DatabaseUrlOption) -> None:
    """List applied and pending migrations."""
    with user_errors():
        database = connector(database_url_option, application_name="stepsync migrations")
        result = migrations.status(database)
    print_status(result)


def print_status(result: migrations.Status) -> None:
    table = Table("version", "name", "state")
    pending = {m.version for m in result.pending}
    for migration in migrations.local_migrations():
        state = "pending" if migration.version in pending else "applied"
        table.add_row(migration.version, migration.name, state)
    for version in result.unknown:
        table.add_row(version, "?", "applied, no local file")
    console.print(table)
    console.print(f"{len(result.applied)} applied, {len(result.pending)} pending")
