"""`stepsync backfill legacy-tasks`: the operator's flow, exit codes, bad arguments."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from sync.cli import app
from tests.support import generate_legacy_tasks, legacy_task, make_agent, make_user

runner = CliRunner()


def stepsync(db_url: str, *args: str):
    return runner.invoke(
        app, ["backfill", "legacy-tasks", "--database-url", db_url, *args], env={"COLUMNS": "300"}
    )


@pytest.fixture
def legacy(conn: psycopg.Connection) -> dict[str, uuid.UUID]:
    user_id = make_user(conn)
    agent_id = make_agent(conn, user_id)
    generate_legacy_tasks(conn, user_id, agent_id, 20)
    return {"blank": legacy_task(conn, user_id, agent_id, instructions="   ")}


def test_dry_run_backfill_verify_rollback(
    conn: psycopg.Connection, db_url: str, legacy: dict[str, uuid.UUID]
) -> None:
    dry = stepsync(db_url, "--dry-run", "--batch-size", "6")
    assert dry.exit_code == 3, dry.output
    assert "Dry run: nothing was written" in dry.stdout
    assert "step 1 to create" in dry.stdout and str(legacy["blank"]) in dry.stdout
    assert conn.execute("select count(*) from public.task_steps").fetchone() == (0,)

    done = stepsync(db_url, "--batch-size", "6")
    assert done.exit_code == 3, done.output
    assert "needs attention" in done.stdout
    assert "Tasks left without a step" in done.stdout and str(legacy["blank"]) in done.stdout
    # Not a terminal: plain progress lines on stderr, including the final one.
    assert "backfill: 21/21 tasks (100%)" in done.stderr
    run_id = conn.execute("select id from stepsync.backfill_runs").fetchone()[0]
    assert conn.execute("select count(*) from public.task_steps").fetchone() == (20,)

    verified = stepsync(db_url, "--verify")
    assert verified.exit_code == 0, verified.output
    assert "OK" in verified.stdout

    rolled = stepsync(db_url, "--rollback", str(run_id))
    assert rolled.exit_code == 0, rolled.output
    assert conn.execute("select count(*) from public.task_steps").fetchone() == (0,)

    failed = stepsync(db_url, "--verify")
    assert failed.exit_code == 3
    assert "FAILED" in failed.stdout and "no live step" in failed.stdout


def test_a_clean_run_exits_zero(conn: psycopg.Connection, db_url: str) -> None:
    user_id = make_user(conn)
    generate_legacy_tasks(conn, user_id, make_agent(conn, user_id), 5)
    result = stepsync(db_url)
    assert result.exit_code == 0, result.output
    assert "completed" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--dry-run", "--rollback", str(uuid.uuid4())], 1, "--dry-run and --rollback cannot"),
        (["--verify", "--resume"], 1, "--verify cannot be combined with --resume"),
        (["--batch-size", "0"], 2, "Invalid value for '--batch-size'"),
        (["--pause", "-1"], 2, "Invalid value for '--pause'"),
        (["--lock-timeout", "0"], 2, "Invalid value for '--lock-timeout'"),
        (["--rollback", "not-a-run"], 2, "Invalid value for '--rollback'"),
        (["--rollback", "00000000-0000-0000-0000-000000000001"], 1, "no backfill run"),
        (["--run-id", "00000000-0000-0000-0000-000000000001"], 1, "no backfill run"),
        (["--resume"], 1, "no unfinished backfill run"),
    ],
)
def test_bad_arguments_get_a_clear_message_and_write_nothing(
    conn: psycopg.Connection, db_url: str, args: list[str], code: int, message: str
) -> None:
    result = stepsync(db_url, *args)
    assert result.exit_code == code
    assert message in " ".join(result.stderr.split())
    assert "Traceback" not in result.output
    assert conn.execute("select count(*) from stepsync.backfill_runs").fetchone() == (0,)


def test_a_database_without_the_migrations_is_refused(blank_db_url: str) -> None:
    result = stepsync(blank_db_url)
    assert result.exit_code == 1
    assert "migrations are not applied" in result.stderr


def test_the_script_entry_point_runs_the_same_command(db_url: str):
    script = Path(__file__).parents[1] / "scripts" / "backfill_legacy_tasks.py"
    result = subprocess.run(
        [sys.executable, str(script), "--dry-run", "--database-url", db_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Dry run: nothing was written" in result.stdout
