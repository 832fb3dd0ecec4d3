"""Which database a command talks to: the configured URL, or the embedded default."""

from __future__ import annotations

from pathlib import Path

from sync import embedded, migrations
from sync.settings import ConnectionSettings
from sync.supabase_compat import bootstrap_supabase

EMBEDDED_DATABASE = "stepsync"


def resolve_database_url(settings: ConnectionSettings, *, migrate: bool = False) -> str:
    """The configured URL; else start the embedded server and return its app database.

    The embedded database is bootstrapped for Supabase compatibility and, with
    ``migrate``, brought up to date, so every command works on a fresh machine.
    """
    if settings.database_url:
        return settings.database_url
    return embedded_database_url(settings.data_dir, migrate=migrate)


def embedded_database_url(data_dir: Path, *, migrate: bool = False) -> str:
    server = embedded.start_local_cluster(data_dir / "pgdata", persistent=True)
    if not embedded.database_exists(server.url, EMBEDDED_DATABASE):
        embedded.create_database(server.url, EMBEDDED_DATABASE)
    url = server.database_url(EMBEDDED_DATABASE)
    bootstrap_supabase(url)
    if migrate:
        migrations.push(url)
    return url
