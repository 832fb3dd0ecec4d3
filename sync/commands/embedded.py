"""``stepsync embedded``: the local PostgreSQL used when no database URL is configured."""

from __future__ import annotations

import typer

from sync import embedded
from sync.commands.common import connection_settings, console, user_errors
from sync.database import embedded_database_url

app = typer.Typer(help="Start, stop or locate the embedded PostgreSQL (kept in STEPSYNC_DATA_DIR).")


@app.command()
def start() -> None:
    """Start the embedded server, migrate its database and print its URL."""
    settings = connection_settings(None)
    with user_errors():
        url = embedded_database_url(settings.data_dir, migrate=True)
    console.print(f"embedded database running: {url}")
    console.print(f"data directory: {settings.data_dir.resolve()}")


@app.command()
def stop() -> None:
    """Stop the embedded server if it is running."""
    settings = connection_settings(None)
    with user_errors():
        stopped = embedded.stop_local_cluster(settings.data_dir / "pgdata")
    console.print("embedded database stopped" if stopped else "embedded database was not running")
