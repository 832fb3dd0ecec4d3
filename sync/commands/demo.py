"""``stepsync demo``: the whole product on the embedded database, in one command."""

from __future__ import annotations

from sync import migrations
from sync.commands.common import console, database_url, user_errors
from sync.commands.db import print_status
from sync.settings import Settings


def demo() -> None:
    """Start the embedded PostgreSQL, apply the migrations and show the schema status."""
    settings = Settings()
    with user_errors():
        url = database_url(settings.database_url, migrate=True)
        console.print(f"embedded database: {settings.data_dir.resolve()}")
        print_status(migrations.status(url))
