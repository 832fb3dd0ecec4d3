"""`stepsync db push/status`: order, history table, atomic failure, clear errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from sync import migrations


def test_push_applies_every_migration_once_and_records_it(blank_db_url: str) -> None:
    local = migrations.local_migrations()
    applied = migrations.push(blank_db_url)
    assert [m.version for m in applied] == [m.version for m in local]
    assert migrations.push(blank_db_url) == []
    state = migrations.status(blank_db_url)
    assert state.pending == [] and state.unknown == []
    with psycopg.connect(blank_db_url) as conn:
        rows = conn.execute(
            "select version, name, statements from supabase_migrations.schema_migrations"
            " order by version"
        ).fetchall()
    assert [(v, n) for v, n, _ in rows] == [(m.version, m.name) for m in local]
    assert all(statements for _, _, statements in rows)


def test_status_lists_pending_before_push(blank_db_url: str) -> None:
    state = migrations.status(blank_db_url)
    assert state.applied == []
    assert [m.version for m in state.pending] == [m.version for m in migrations.local_migrations()]


def test_failed_migration_leaves_nothing_behind(blank_db_url: str, tmp_path: Path) -> None:
    (tmp_path / "20990101000000_good.sql").write_text("create table public.good (id int);\n")
    (tmp_path / "20990101000001_bad.sql").write_text(
        "create table public.half_done (id int);\n"
        "insert into public.half_done values (1);\n"
        "select 1 / 0;\n"
    )
    with pytest.raises(migrations.MigrationError) as raised:
        migrations.push(blank_db_url, tmp_path)
    message = str(raised.value)
    assert "20990101000001_bad.sql" in message and "division by zero" in message
    with psycopg.connect(blank_db_url) as conn:
        assert conn.execute("select to_regclass('public.good')").fetchone()[0] is not None
        assert conn.execute("select to_regclass('public.half_done')").fetchone()[0] is None
        versions = migrations.applied_versions(conn)
    assert versions == ["20990101000000"]


def test_badly_named_migration_is_refused(tmp_path: Path) -> None:
    (tmp_path / "add_things.sql").write_text("select 1;")
    with pytest.raises(migrations.MigrationError, match=re.escape("<timestamp>_<name>.sql")):
        migrations.local_migrations(tmp_path)


def test_unreachable_database_is_one_clear_line() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sync",
            "db",
            "push",
            "--database-url",
            "postgresql://nobody:secret@127.0.0.1:1/none",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot connect to postgresql://nobody:***@127.0.0.1:1/none" in result.stderr
    assert "secret" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("select 1; select 2;", ["select 1", "select 2"]),
        ("select ';'; select 2", ["select ';'", "select 2"]),
        ('select 1 as ";"', ['select 1 as ";"']),
        ("-- a; comment\nselect 1;", ["-- a; comment\nselect 1"]),
        ("/* a; /* nested; */ b */ select 1;", ["/* a; /* nested; */ b */ select 1"]),
        (
            "create function f() returns int language sql as $body$ select 1; $body$; select 2;",
            ["create function f() returns int language sql as $body$ select 1; $body$", "select 2"],
        ),
        ("select 'it''s; fine';", ["select 'it''s; fine'"]),
        ("-- only a comment\n;\n", []),
    ],
)
def test_split_statements(script: str, expected: list[str]) -> None:
    assert migrations.split_statements(script) == expected


def test_push_up_to_a_version_stops_there(blank_db_url: str) -> None:
    first, *rest = migrations.local_migrations()
    applied = migrations.push(blank_db_url, up_to=first.version)
    assert [m.version for m in applied] == [first.version]
    assert [m.version for m in migrations.status(blank_db_url).pending] == [m.version for m in rest]
