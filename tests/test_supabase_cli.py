"""The real Supabase CLI and `stepsync db` agree on the same database, both ways round."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from sync import migrations

ROOT = Path(__file__).resolve().parent.parent
SUPABASE_CLI = Path(
    os.environ.get("STEPSYNC_SUPABASE_CLI", ROOT / ".tools/node_modules/.bin/supabase")
)


def supabase(*args: str, db_url: str) -> str:
    if not SUPABASE_CLI.exists():
        pytest.fail(f"Supabase CLI not found at {SUPABASE_CLI}: run 'make install'")
    result = subprocess.run(
        [str(SUPABASE_CLI), *args, "--workdir", str(ROOT), "--db-url", f"{db_url}?sslmode=disable"],
        capture_output=True,
        text=True,
        timeout=120,
        input="y\n",
    )
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout + result.stderr


def remote_versions(listing: str) -> list[str]:
    """Versions in the Remote column of `supabase migration list`."""
    rows = re.findall(r"^\s*`?(\d*)`?\s*\|\s*`?(\d*)`?\s*\|", listing, flags=re.M)
    return [remote for _, remote in rows if remote]


def history(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "select version, name, statements from supabase_migrations.schema_migrations"
            " order by version"
        ).fetchall()


def test_cli_push_then_stepsync_agrees(blank_db_url: str) -> None:
    first = supabase("db", "push", "--yes", db_url=blank_db_url)
    assert "Finished supabase db push" in first
    recorded = history(blank_db_url)
    second = supabase("db", "push", "--yes", db_url=blank_db_url)
    assert "up to date" in second
    assert history(blank_db_url) == recorded

    state = migrations.status(blank_db_url)
    assert state.pending == [] and state.unknown == []
    listing = supabase("migration", "list", db_url=blank_db_url)
    assert remote_versions(listing) == state.applied
    assert migrations.push(blank_db_url) == []
    assert history(blank_db_url) == recorded


def test_stepsync_push_then_cli_agrees(blank_db_url: str) -> None:
    migrations.push(blank_db_url)
    ours = history(blank_db_url)
    assert "up to date" in supabase("db", "push", "--yes", db_url=blank_db_url)
    listing = supabase("migration", "list", db_url=blank_db_url)
    assert remote_versions(listing) == [version for version, _, _ in ours]
    assert history(blank_db_url) == ours


def test_recorded_statements_match_the_cli(blank_db_url: str) -> None:
    """Same version, name and statement split as the CLI records for every migration."""
    supabase("db", "push", "--yes", db_url=blank_db_url)
    by_cli = history(blank_db_url)
    with psycopg.connect(blank_db_url, autocommit=True) as conn:
        conn.execute("truncate supabase_migrations.schema_migrations")
        for migration in migrations.local_migrations():
            conn.execute(
                "insert into supabase_migrations.schema_migrations (version, statements, name)"
                " values (%s, %s, %s)",
                [migration.version, migration.statements(), migration.name],
            )
    assert history(blank_db_url) == by_cli
