"""`stepsync flags` and the deny-list in stepsync.flag_enabled_for."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from typer.testing import CliRunner

from sync.cli import app
from tests.support import acting_as, as_service, make_user

runner = CliRunner()


def flags(db_url: str, *args: str):
    return runner.invoke(app, ["flags", *args, "--database-url", db_url], env={"COLUMNS": "300"})


def enabled_for(conn: psycopg.Connection, flag: str, user_id: uuid.UUID) -> bool:
    return conn.execute("select stepsync.flag_enabled_for(%s, %s)", [flag, user_id]).fetchone()[0]


def flag_row(conn: psycopg.Connection, name: str) -> tuple:
    return conn.execute(
        "select enabled, rollout_percent, allow_list, deny_list from stepsync.feature_flags"
        " where name = %s",
        [name],
    ).fetchone()


def test_list_and_show(db_url: str) -> None:
    listed = flags(db_url, "list")
    assert listed.exit_code == 0, listed.output
    assert "multi_step_workflows" in listed.stdout and "legacy_task_compat" in listed.stdout
    shown = flags(db_url, "show", "multi_step_workflows")
    assert shown.exit_code == 0
    assert "100%" in shown.stdout and "enabled" in shown.stdout


def test_gradual_rollout_from_the_command_line(conn: psycopg.Connection, db_url: str) -> None:
    users = [make_user(conn) for _ in range(40)]
    flag = "multi_step_workflows"

    assert flags(db_url, "set-percent", flag, "0").exit_code == 0
    assert not any(enabled_for(conn, flag, u) for u in users)

    assert flags(db_url, "allow", flag, str(users[0]), str(users[1])).exit_code == 0
    assert [enabled_for(conn, flag, u) for u in users[:3]] == [True, True, False]

    assert flags(db_url, "set-percent", flag, "50").exit_code == 0
    half = {u for u in users if enabled_for(conn, flag, u)}
    assert 0 < len(half) < len(users)
    # The same users stay in as the percentage grows.
    assert flags(db_url, "set-percent", flag, "80").exit_code == 0
    more = {u for u in users if enabled_for(conn, flag, u)}
    assert half <= more

    # Deny wins over the allow-list and the percentage; allow takes a user back.
    assert flags(db_url, "deny", flag, str(users[0])).exit_code == 0
    assert not enabled_for(conn, flag, users[0])
    _, percent, allow_list, deny_list = flag_row(conn, flag)
    assert (percent, allow_list, deny_list) == (80, [users[1]], [users[0]])
    assert flags(db_url, "deny", flag, str(users[0]), "--remove").exit_code == 0
    assert flag_row(conn, flag)[3] == []

    shown = flags(db_url, "show", flag, "--user", str(users[1]))
    assert f"is ON for user {users[1]}" in shown.stdout

    assert flags(db_url, "disable", flag).exit_code == 0
    assert not any(enabled_for(conn, flag, u) for u in users)
    assert flags(db_url, "enable", flag).exit_code == 0
    assert enabled_for(conn, flag, users[1])


def test_allow_is_idempotent(conn: psycopg.Connection, db_url: str) -> None:
    user = make_user(conn)
    for _ in range(2):
        assert flags(db_url, "allow", "multi_step_workflows", str(user)).exit_code == 0
    assert flag_row(conn, "multi_step_workflows")[2] == [user]
    assert flags(db_url, "allow", "multi_step_workflows", str(user), "--remove").exit_code == 0
    assert flag_row(conn, "multi_step_workflows")[2] == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["enable", "no_such_flag"], 1, "no flag named 'no_such_flag'"),
        (["set-percent", "multi_step_workflows", "101"], 2, "Invalid value for 'percent'"),
        (["set-percent", "multi_step_workflows", "half"], 2, "Invalid value for 'percent'"),
        (["allow", "multi_step_workflows", "bob"], 2, "'users': Input should be a valid UUID"),
        (["show", "multi_step_workflows", "--user", "x"], 2, "Invalid value for '--user'"),
    ],
)
def test_bad_arguments_are_refused_and_change_nothing(
    conn: psycopg.Connection, db_url: str, args: list[str], code: int, message: str
) -> None:
    before = flag_row(conn, "multi_step_workflows")
    result = flags(db_url, *args)
    assert result.exit_code == code
    assert message in " ".join(result.stderr.split())
    assert flag_row(conn, "multi_step_workflows") == before


def test_a_user_cannot_read_or_change_flags(conn: psycopg.Connection) -> None:
    user = make_user(conn)
    other = make_user(conn)
    with acting_as(conn, "authenticated", user):
        assert conn.execute(
            "select stepsync.flag_enabled_for('multi_step_workflows', %s)", [user]
        ).fetchone() == (True,)
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        acting_as(conn, "authenticated", user),
    ):
        conn.execute("select stepsync.flag_enabled_for('multi_step_workflows', %s)", [other])
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        acting_as(conn, "authenticated", user),
    ):
        conn.execute("update stepsync.feature_flags set enabled = false")


FLAG_FUNCTIONS = [
    ("select stepsync.set_feature_flag(%s, true, 10)", []),
    ("select stepsync.allow_flag_users(%s, %s)", [[uuid.uuid4()]]),
    ("select stepsync.deny_flag_users(%s, %s)", [[uuid.uuid4()]]),
    ("select stepsync.remove_flag_users(%s, 'allow', %s)", [[uuid.uuid4()]]),
]


@pytest.mark.parametrize(("call", "rest"), FLAG_FUNCTIONS)
def test_flag_functions_refuse_an_unknown_flag_naming_the_known_ones(
    conn: psycopg.Connection, call: str, rest: list
) -> None:
    with pytest.raises(psycopg.errors.NoDataFound) as refused, as_service(conn):
        conn.execute(call, ["no_such_flag", *rest])
    assert refused.value.diag.message_primary == "no flag named 'no_such_flag'"
    assert refused.value.diag.message_hint == (
        "known flags: legacy_task_compat, multi_step_workflows"
    )


@pytest.mark.parametrize(
    ("call", "params", "message"),
    [
        (
            "select stepsync.set_feature_flag(%s, null, %s)",
            [101],
            "rollout percent must be between 0 and 100, got 101",
        ),
        (
            "select stepsync.set_feature_flag(%s, null, %s)",
            [-1],
            "rollout percent must be between 0 and 100, got -1",
        ),
        ("select stepsync.allow_flag_users(%s, %s::uuid[])", [[]], "no user ids given"),
        ("select stepsync.deny_flag_users(%s, %s::uuid[])", [None], "no user ids given"),
        ("select stepsync.allow_flag_users(%s, array[null]::uuid[])", [], "a user id is null"),
        (
            "select stepsync.remove_flag_users(%s, 'both', %s)",
            [[uuid.uuid4()]],
            "p_list must be 'allow' or 'deny', got 'both'",
        ),
        (
            "select stepsync.remove_flag_users(%s, null, %s)",
            [[uuid.uuid4()]],
            "p_list must be 'allow' or 'deny', got null",
        ),
    ],
)
def test_flag_functions_refuse_bad_input_and_change_nothing(
    conn: psycopg.Connection, call: str, params: list, message: str
) -> None:
    before = conn.execute(
        "select * from stepsync.feature_flags where name = 'multi_step_workflows'"
    ).fetchone()
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused, as_service(conn):
        conn.execute(call, ["multi_step_workflows", *params])
    assert refused.value.diag.message_primary == message
    after = conn.execute(
        "select * from stepsync.feature_flags where name = 'multi_step_workflows'"
    ).fetchone()
    assert after == before


def test_set_feature_flag_changes_only_what_it_is_given(conn: psycopg.Connection) -> None:
    with as_service(conn):
        conn.execute("select stepsync.set_feature_flag('multi_step_workflows', null, 30)")
    assert flag_row(conn, "multi_step_workflows")[:2] == (True, 30)
    with as_service(conn):
        row = conn.execute(
            "select enabled, rollout_percent"
            " from stepsync.set_feature_flag('multi_step_workflows', false)"
        ).fetchone()
    assert row == (False, 30)
    assert flag_row(conn, "multi_step_workflows")[:2] == (False, 30)


@pytest.mark.parametrize("role", ["anon", "authenticated"])
@pytest.mark.parametrize(
    "call",
    [
        "select stepsync.set_feature_flag('multi_step_workflows', false, 0)",
        "select stepsync.allow_flag_users('multi_step_workflows', array[gen_random_uuid()])",
        "select stepsync.deny_flag_users('multi_step_workflows', array[gen_random_uuid()])",
        "select stepsync.remove_flag_users('multi_step_workflows', 'deny',"
        " array[gen_random_uuid()])",
    ],
)
def test_only_the_service_role_may_change_flags_through_the_functions(
    conn: psycopg.Connection, role: str, call: str
) -> None:
    user = make_user(conn)
    before = flag_row(conn, "multi_step_workflows")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, role, user):
        conn.execute(call)
    assert flag_row(conn, "multi_step_workflows") == before
