"""``stepsync serve`` refuses bad configuration up front, naming the setting."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sync.cli import app
from sync.settings import Settings

runner = CliRunner()


def serve(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, ["serve", *args], env={"STEPSYNC_METRICS_PORT": "0", **(env or {})})


@pytest.mark.parametrize(
    ("env", "args", "named"),
    [
        ({"STEPSYNC_CONCURRENCY": "0"}, [], "STEPSYNC_CONCURRENCY: Input should be greater than"),
        ({"STEPSYNC_LEASE_SECONDS": "soon"}, [], "STEPSYNC_LEASE_SECONDS: Input should be a valid"),
        (
            {"STEPSYNC_LEASE_SECONDS": "6", "STEPSYNC_HEARTBEAT_INTERVAL_SECONDS": "6"},
            [],
            "STEPSYNC_HEARTBEAT_INTERVAL_SECONDS (6) must be shorter than STEPSYNC_LEASE_SECONDS",
        ),
        (
            {"STEPSYNC_LISTEN": "postgres,kafka"},
            [],
            "STEPSYNC_LISTEN: unknown listen mode(s) kafka",
        ),
        ({"STEPSYNC_POLL_INTERVAL_SECONDS": "-1"}, [], "STEPSYNC_POLL_INTERVAL_SECONDS"),
        ({"STEPSYNC_DB_ROLE": "x; drop table y"}, [], "STEPSYNC_DB_ROLE: 'x; drop table y' is not"),
        ({"STEPSYNC_LOG_FORMAT": "xml"}, [], "STEPSYNC_LOG_FORMAT"),
        ({}, ["--batch-size", "0"], "STEPSYNC_BATCH_SIZE"),
        ({}, ["--executor", "smtp://mail"], "STEPSYNC_EXECUTOR: unknown executor 'smtp://mail'"),
        ({}, ["--executor", "python:nowhere.at_all:run"], "cannot import module 'nowhere.at_all'"),
        ({}, ["--poll-only", "--listen", "postgres"], "--poll-only and --listen contradict"),
        ({}, ["--listen", "kafka"], "STEPSYNC_LISTEN: unknown listen mode(s) kafka"),
    ],
)
def test_bad_settings_stop_serve_with_a_message_naming_them(env, args, named):
    result = serve(*args, env=env)
    assert result.exit_code == 1
    assert named in result.output
    assert "Traceback" not in result.output


def test_a_role_the_service_cannot_switch_to_is_named(db_url):
    result = serve("--database-url", db_url, env={"STEPSYNC_DB_ROLE": "no_such_role"})
    assert result.exit_code == 1
    assert "cannot switch to role 'no_such_role' (STEPSYNC_DB_ROLE)" in result.output


def test_a_database_without_the_run_engine_is_named(blank_db_url):
    result = serve("--database-url", blank_db_url)
    assert result.exit_code == 1
    assert "run engine is not installed" in result.output
    assert "stepsync db push" in result.output


def test_an_unreachable_database_is_named():
    result = serve("--database-url", "postgresql://nobody@127.0.0.1:1/none")
    assert result.exit_code == 1
    assert "cannot connect to the database" in result.output


def test_defaults_derive_the_heartbeat_and_pool_from_other_settings(monkeypatch):
    monkeypatch.setenv("STEPSYNC_LEASE_SECONDS", "12")
    monkeypatch.setenv("STEPSYNC_CONCURRENCY", "7")
    monkeypatch.setenv("STEPSYNC_LISTEN", "")
    settings = Settings()
    assert settings.heartbeat_interval_seconds == 4
    assert settings.pool_size == 7 + settings.claimers + 1
    assert settings.listen == []


@pytest.mark.parametrize(
    "given", ["postgres,realtime", ["postgres", "realtime"], ["postgres,realtime", "postgres"]]
)
def test_listen_takes_a_comma_list_repeated_values_or_both(given):
    assert Settings(listen=given).listen == ["postgres", "realtime"]


def test_a_transaction_pooler_cannot_listen():
    result = serve(env={"STEPSYNC_DB_TRANSACTION_POOLER": "true", "STEPSYNC_LISTEN": "postgres"})
    assert result.exit_code == 1
    assert "LISTEN does not work through a transaction pooler" in result.output


def test_a_metrics_port_in_use_is_named(db_url):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(
            app,
            ["serve", "--database-url", db_url, "--metrics-port", str(port)],
            env={"STEPSYNC_METRICS_HOST": "127.0.0.1"},
        )
    assert result.exit_code == 1
    assert f"cannot serve metrics on 127.0.0.1:{port} (STEPSYNC_METRICS_PORT)" in result.output
