"""``stepsync demo``: the whole product on the embedded database, in one command."""

from __future__ import annotations

from sync import demo as demo_flow
from sync import embedded
from sync.commands.common import (
    DatabaseUrlOption,
    connection_settings,
    console,
    fail,
    user_errors,
)
from sync.settings import ConnectionSettings
from sync.supabase_compat import bootstrap_supabase

DEMO_DATABASE = "stepsync_demo"


def demo(database_url_option: str | None = DatabaseUrlOption) -> None:
    """Upgrade a small legacy app to stepsync and run its workflows, live.

    Without --database-url (STEPSYNC_DATABASE_URL) it uses a fresh `stepsync_demo` database on the
    embedded PostgreSQL (started for the demo and stopped after it, unless it was
    already running). With it, the demo writes its data set into that database.
    """
    settings = connection_settings(database_url_option)
    with user_errors():
        if settings.database_url:
            outcome = demo_flow.run_demo(settings.database_url, console)
        else:
            outcome = _on_embedded(settings)
    if not outcome.ok:
        raise fail("the demo did not complete every run", "see the summary above")


def _on_embedded(settings: ConnectionSettings) -> demo_flow.DemoOutcome:
    data_dir = settings.data_dir / "pgdata"
    was_running = embedded.local_cluster_running(data_dir)
    server = embedded.start_local_cluster(data_dir, persistent=True)
    console.print(f"embedded PostgreSQL {server.version} in {data_dir.resolve()}")
    try:
        embedded.drop_database(server.url, DEMO_DATABASE)
        url = embedded.create_database(server.url, DEMO_DATABASE)
        bootstrap_supabase(url)
        return demo_flow.run_demo(url, console)
    finally:
        if not was_running:
            embedded.stop_local_cluster(data_dir)
