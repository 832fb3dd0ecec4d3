"""Mistakes a user can make get one error line and a hint, never a traceback."""

from __future__ import annotations

import uuid

import pytest
from typer.testing import CliRunner

from sync.cli import app

runner = CliRunner()
UNREACHABLE = "postgresql://nobody:secret@127.0.0.1:1/none"


def error_and_hint(args: list[str]) -> tuple[str, str]:
    result = runner.invoke(app, args, env={"STEPSYNC_METRICS_PORT": "0"})
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "secret" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    hints = [line for line in result.output.splitlines() if line.startswith("hint:")]
    assert len(errors) == 1 and len(hints) == 1, result.output
    return errors[0], hints[0]


@pytest.mark.parametrize(
    "args",
    [
        ["runs", "--database-url", UNREACHABLE],
        ["db", "status", "--database-url", UNREACHABLE],
        ["serve", "--database-url", UNREACHABLE, "--executor", "demo"],
    ],
)
def test_unreachable_database(args: list[str]) -> None:
    error, hint = error_and_hint(args)
    assert "cannot connect" in error
    assert "STEPSYNC_DATABASE_URL" in hint


def test_database_without_migrations(blank_db_url: str) -> None:
    error, hint = error_and_hint(["serve", "--database-url", blank_db_url, "--executor", "demo"])
    assert "run engine is not installed" in error
    assert "db push" in hint


def test_unknown_task_id(db_url: str) -> None:
    task_id = uuid.uuid4()
    error, hint = error_and_hint(["run", str(task_id), "--database-url", db_url])
    assert f"task {task_id} not found" in error
    assert "agent_tasks.id" in hint
