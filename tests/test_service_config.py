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
    result = serve(
        "--database-url", db_url, "--executor", "demo", env={"STEPSYNC_DB_ROLE": "no_such_role"}
    )
    assert result.exit_code == 1
    assert "cannot switch to role 'no_such_role' (STEPSYNC_DB_ROLE)" in result.output


def test_a_database_without_the_run_engine_is_named(blank_db_url):
    result = serve("--database-url", blank_db_url, "--executor", "demo")
    assert result.exit_code == 1
    assert "run engine is not installed" in result.output
    assert "stepsync db push" in result.output


def test_an_unreachable_database_is_named():
    result = serve("--database-url", "postgresql://nobody@127.0.0.1:1/none", "--executor", "demo")
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
            ["serve", "--database-url", db_url, "--executor", "demo", "--metrics-port", str(port)],
            env={"STEPSYNC_METRICS_HOST": "127.0.0.1"},
        )
    assert result.exit_code == 1
    assert f"cannot serve metrics on 127.0.0.1:{port} (STEPSYNC_METRICS_PORT)" in result.output


# --- the executor: chosen on purpose wherever outputs are real ---------------------------


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_database_url_without_an_executor_is_refused_before_connecting(how):
    url = "postgresql://nobody@127.0.0.1:1/none"  # nothing listens: connecting would fail
    if how == "option":
        result = serve("--database-url", url)
    else:
        result = serve(env={"STEPSYNC_DATABASE_URL": url})
    assert result.exit_code == 1
    assert "no executor configured: set STEPSYNC_EXECUTOR or pass --executor" in result.output
    assert "--executor demo to use it here" in result.output
    assert "cannot connect" not in result.output  # refused up front, not after trying
    assert "Traceback" not in result.output


def test_the_demo_executor_is_the_default_only_on_the_embedded_database():
    from sync.executors import ExecutorSettingError, executor_from_setting
    from sync.executors.demo import DemoExecutor

    embedded = Settings(database_url=None)
    assert embedded.executor is None
    assert isinstance(executor_from_setting(embedded.executor, embedded), DemoExecutor)
    real = Settings(database_url="postgresql://u@db.example.test:5432/postgres")
    with pytest.raises(ExecutorSettingError, match="STEPSYNC_EXECUTOR"):
        executor_from_setting(real.executor, real)
    assert isinstance(executor_from_setting("demo", real), DemoExecutor)


def test_an_explicit_demo_executor_serves_a_real_database(db_url, tmp_path):
    from tests.workers import start_worker

    worker = start_worker(db_url, tmp_path, "demo", executor="demo")
    try:
        serving = worker.wait_for_log(lambda e: e.get("msg") == "serving")
    finally:
        code = worker.stop()
    assert serving["executor"] == "demo"
    assert code == 0, worker.tail()
