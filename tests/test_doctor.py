"""``stepsync doctor`` against real databases and the Supabase stand-ins."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sync.cli import app
from sync.doctor import check_pooler, run_checks
from sync.settings import Settings
from tests.realtime_support import SupabaseStandIns

KEY = "service-role-key-for-tests"


@pytest.fixture
def env(monkeypatch):
    for name in ("DATABASE_URL", "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "LISTEN", "EXECUTOR"):
        monkeypatch.delenv(f"STEPSYNC_{name}", raising=False)
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir("/")  # no .env file

    def configure(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"STEPSYNC_{name.upper()}", value)

    return configure


def verdicts(checks) -> dict[str, str]:
    return {check.name: check.verdict for check in checks}


def test_healthy_configuration_passes_every_check(db_url, env):
    with SupabaseStandIns(db_url, KEY, deployed={"chat"}) as supabase:
        env(
            database_url=db_url,
            supabase_url=supabase.url,
            supabase_service_role_key=KEY,
            listen="postgres,realtime",
            executor="agentopia_chat",
        )
        result = CliRunner().invoke(app, ["doctor"])
        checks = run_checks(Settings())

    assert verdicts(checks) == {
        "database": "ok",
        "migrations": "ok",
        "pooler": "ok",
        "realtime": "ok",
        "executor": "ok",
    }
    assert result.exit_code == 0, result.output
    assert "subscribed to PostgreSQL" in result.output
    assert "none pending" in result.output
    assert result.output.rstrip().endswith("ready")
    assert KEY not in result.output


def test_broken_configuration_names_each_problem_and_its_fix(blank_db_url, env):
    with SupabaseStandIns(blank_db_url, KEY, deployed=set()) as supabase:
        env(
            database_url=blank_db_url,
            supabase_url=supabase.url,
            supabase_service_role_key="anon-key-by-mistake",
            listen="realtime",
            executor="agentopia_chat",
        )
        result = CliRunner().invoke(app, ["doctor"])
        checks = run_checks(Settings())

    assert verdicts(checks) == {
        "database": "ok",
        "migrations": "fail",
        "pooler": "ok",
        "realtime": "fail",
        "executor": "fail",
    }
    assert result.exit_code == 1
    out = result.output
    assert "pending" in out and "run `stepsync db push`" in out
    assert "handshake refused with HTTP 401" in out
    assert "is not this project's service-role key" in out
    assert "404, not deployed" in out and "supabase functions deploy chat" in out
    assert "3 check(s) failed: migrations, realtime, executor" in out
    assert "anon-key-by-mistake" not in out


def test_unreachable_database_behind_the_transaction_pooler(env):
    env(database_url="postgresql://postgres.ref:s3cret@127.0.0.1:6543/postgres", listen="postgres")

    result = CliRunner().invoke(app, ["doctor"])

    assert result.exit_code == 1
    assert "cannot connect to postgresql://postgres.ref:***@127.0.0.1:6543" in result.output
    assert "s3cret" not in result.output
    assert "LISTEN cannot work" in result.output
    assert "--listen realtime" in result.output and "--poll-only" in result.output


@pytest.mark.parametrize(
    ("port", "listen", "verdict"),
    [
        (6543, ["postgres"], "warn"),
        (6543, ["postgres", "realtime"], "warn"),
        (6543, ["realtime"], "ok"),
        (5432, ["postgres"], "ok"),
    ],
)
def test_pooler_mode_warns_only_when_listen_would_be_lost(port, listen, verdict):
    check = check_pooler(f"postgresql://u:p@db.example.test:{port}/postgres", listen)

    assert check.verdict == verdict


def test_missing_supabase_settings_fail_only_when_realtime_is_asked_for(db_url, env):
    env(database_url=db_url, listen="realtime", executor="python:tests.workers:scripted_step")

    result = CliRunner().invoke(app, ["doctor"])

    assert result.exit_code == 1
    assert "STEPSYNC_SUPABASE_URL and STEPSYNC_SUPABASE_SERVICE_ROLE_KEY not set" in result.output

    result = CliRunner().invoke(app, ["doctor", "--listen", "postgres"])

    assert result.exit_code == 0, result.output


def test_doctor_checks_listen_modes_as_serve_does(env):
    result = CliRunner().invoke(app, ["doctor", "--listen", "postgres", "--listen", "kafka"])

    assert result.exit_code == 1
    assert "STEPSYNC_LISTEN: unknown listen mode(s) kafka" in result.output


def test_a_database_url_without_an_executor_fails_as_serve_would(db_url, env):
    env(database_url=db_url, listen="postgres")

    result = CliRunner().invoke(app, ["doctor"])
    checks = run_checks(Settings())

    assert verdicts(checks)["executor"] == "fail"
    assert result.exit_code == 1
    assert "STEPSYNC_EXECUTOR is not set: `serve` refuses to start" in result.output
    assert "1 check(s) failed: executor" in result.output
