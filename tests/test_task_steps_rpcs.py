"""The UI's RPCs, called as PostgREST calls them: save_task_steps, reorder_task_steps,
validate_task_steps; the 50-step limit; bad input rejected with an error naming the item
and field, and nothing written."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.fixtures.task_world import build_world
from tests.support import acting_as, make_agent, make_task, make_user, replace_steps


def snapshot(conn: psycopg.Connection, task_id) -> tuple:
    """Everything about the task's steps and the audit log, to prove nothing was written."""
    return conn.execute(
        "select (select md5(string_agg(s::text, ',' order by s.id)) from public.task_steps as s"
        "  where s.task_id = %s), (select count(*) from public.audit_log)",
        [task_id],
    ).fetchone()


def save(conn, user_id, task_id, steps) -> list[tuple]:
    with acting_as(conn, "authenticated", user_id) as c:
        return c.execute(
            "select id, step_order, step_name, instructions, context_mode::text, skip_if::text,"
            " max_attempts from public.save_task_steps(%s, %s)",
            [task_id, Jsonb(steps)],
        ).fetchall()


def test_save_creates_updates_reorders_and_deletes_in_one_call(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    s1, s2, s3 = w.steps
    rows = save(
        conn,
        w.owner,
        w.task,
        [
            {"id": str(s3), "step_name": "Summarise", "max_attempts": 3},
            {
                "instructions": "Draft a reply",
                "context_mode": "selective",
                "context_paths": ["$.steps[0].output"],
                "skip_if": '$.steps[0].status == "failed"',
            },
            {"id": str(s1)},
        ],
    )
    new_id = rows[1][0]
    assert rows == [
        (s3, 1, "Summarise", "Do part 3", "previous", None, 3),
        (
            new_id,
            2,
            "Step 2",
            "Draft a reply",
            "selective",
            '($."steps"[0]."status" == "failed")',
            1,
        ),
        (s1, 3, "Step 1", "Do part 1", "previous", None, 1),
    ]
    s2_row = conn.execute(
        "select deleted_at is not null, deleted_by from public.task_steps where id = %s", [s2]
    ).fetchone()
    assert s2_row == (True, w.owner)


def test_save_accepts_rows_as_the_ui_read_them(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    with acting_as(conn, "authenticated", w.owner) as c:
        listed = c.execute(
            "select coalesce(jsonb_agg(to_jsonb(s) order by step_order), '[]')"
            " from public.task_steps as s where task_id = %s",
            [w.task],
        ).fetchone()[0]
    listed[0]["instructions"] = "Edited inline"
    rows = save(conn, w.owner, w.task, listed[::-1])
    assert [r[0] for r in rows] == w.steps[::-1]
    assert rows[2][3] == "Edited inline"


def test_save_replaces_all_steps_with_new_ones(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    rows = save(conn, w.owner, w.task, [{"instructions": "one"}, {"instructions": "two"}])
    assert [(r[1], r[3]) for r in rows] == [(1, "one"), (2, "two")]
    assert not {r[0] for r in rows} & set(w.steps)


def test_save_with_fifty_steps_and_not_fifty_one(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    rows = save(conn, w.owner, w.task, [{"instructions": f"part {i}"} for i in range(50)])
    assert [r[1] for r in rows] == list(range(1, 51))
    before = snapshot(conn, w.task)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"at most 50 steps \(got 51\)"):
        save(conn, w.owner, w.task, [{"instructions": f"part {i}"} for i in range(51)])
    assert snapshot(conn, w.task) == before


def test_a_51st_step_cannot_be_inserted_directly(conn: psycopg.Connection) -> None:
    owner = make_user(conn)
    task = make_task(conn, owner, make_agent(conn, owner))
    replace_steps(conn, task, [{}] * 50)
    with (
        pytest.raises(psycopg.errors.CheckViolation, match="at most 50 steps"),
        acting_as(conn, "authenticated", owner) as c,
    ):
        c.execute(
            "insert into public.task_steps (task_id, step_order, step_name, instructions)"
            " values (%s, 51, 'One too many', 'x')",
            [task],
        )
    with (
        pytest.raises(psycopg.errors.ExclusionViolation, match="task_steps_live_order_unique"),
        acting_as(conn, "authenticated", owner) as c,
    ):
        c.execute(
            "insert into public.task_steps (task_id, step_order, step_name, instructions)"
            " values (%s, 7, 'Duplicate position', 'x')",
            [task],
        )


BAD_INPUT = [
    ("not an array", {"instructions": "x"}, r"steps: must be a JSON array"),
    ("empty", [], r"steps: a task needs at least one step"),
    ("item not an object", [{"instructions": "a"}, "b"], r"steps\[1\]: must be a JSON object"),
    (
        "blank instructions",
        [{"instructions": "ok"}, {"instructions": "   "}],
        r"steps\[1\]\.instructions: must not be blank",
    ),
    ("missing instructions", [{"step_name": "No text"}], r"steps\[0\]\.instructions: required"),
    (
        "long name",
        [{"instructions": "x", "step_name": "n" * 201}],
        r"steps\[0\]\.step_name: must have 1 to 200",
    ),
    (
        "bad skip_if",
        [{"instructions": "x", "skip_if": "$.a ==="}],
        r"steps\[0\]\.skip_if: not a valid jsonpath",
    ),
    (
        "bad context path",
        [{"instructions": "x", "context_mode": "selective", "context_paths": ["$.ok", "$[?"]}],
        r"steps\[0\]\.context_paths\[1\]: not a valid jsonpath",
    ),
    (
        "selective without paths",
        [{"instructions": "x", "context_mode": "selective"}],
        r"steps\[0\]\.context_paths: at least one path",
    ),
    (
        "custom without template",
        [{"instructions": "x", "context_mode": "custom"}],
        r"steps\[0\]\.context_template: required",
    ),
    (
        "unknown mode",
        [{"instructions": "x", "context_mode": "everything"}],
        r"steps\[0\]\.context_mode: must be one of full, previous",
    ),
    (
        "attempts out of range",
        [{"instructions": "x", "max_attempts": 21}],
        r"steps\[0\]\.max_attempts: must be a whole number between 1 and 20",
    ),
    (
        "fractional timeout",
        [{"instructions": "x", "timeout_seconds": 1.5}],
        r"steps\[0\]\.timeout_seconds: must be a whole number",
    ),
    (
        "backoff max below base",
        [{"instructions": "x", "retry_backoff_seconds": 60, "retry_backoff_max_seconds": 10}],
        r"steps\[0\]\.retry_backoff_max_seconds",
    ),
    (
        "context_data not an object",
        [{"instructions": "x", "context_data": [1]}],
        r"steps\[0\]\.context_data: must be a JSON object",
    ),
    (
        "unknown field",
        [{"instructions": "x", "priority": 1}],
        r"steps\[0\]\.priority: unknown field",
    ),
    ("bad id", [{"id": "step-1", "instructions": "x"}], r"steps\[0\]\.id: not a step id"),
    (
        "foreign task id",
        [{"instructions": "x", "task_id": "00000000-0000-0000-0000-000000000000"}],
        r"steps\[0\]\.task_id: must be",
    ),
]


@pytest.mark.parametrize(
    ("steps", "message"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input_is_rejected_naming_item_and_field(
    conn: psycopg.Connection, steps, message: str
) -> None:
    w = build_world(conn)
    before = snapshot(conn, w.task)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        save(conn, w.owner, w.task, steps)
    assert snapshot(conn, w.task) == before


def test_error_in_a_late_item_writes_nothing_of_the_earlier_ones(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    before = snapshot(conn, w.task)
    steps = [{"id": str(w.steps[1]), "step_name": "Changed"}, {"instructions": "new"}]
    steps += [{"instructions": "bad", "skip_if": "not a path ("}]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"steps\[2\]\.skip_if"):
        save(conn, w.owner, w.task, steps)
    assert snapshot(conn, w.task) == before


def test_step_ids_must_be_live_steps_of_this_task_listed_once(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    other_task = make_task(conn, w.owner, w.agent)
    (foreign_step,) = replace_steps(conn, other_task, [{}])
    before = snapshot(conn, w.task)
    cases = [
        (
            [{"id": str(w.steps[0])}, {"id": str(w.steps[0])}],
            r"steps\[1\]\.id: step .* is listed twice",
        ),
        ([{"id": str(foreign_step)}], r"steps\[0\]\.id: .* is not a live step of task"),
        ([{"id": str(w.deleted_step)}], r"steps\[0\]\.id: .* is not a live step of task"),
    ]
    for steps, message in cases:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
            save(conn, w.owner, w.task, steps)
    assert snapshot(conn, w.task) == before


def test_agent_override_must_belong_to_the_task_owner(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    before = snapshot(conn, w.task)
    with pytest.raises(
        psycopg.errors.InvalidParameterValue,
        match=r"steps\[0\]\.agent_id: agent .* does not belong",
    ):
        save(conn, w.owner, w.task, [{"instructions": "x", "agent_id": str(w.other_agent)}])
    with (
        pytest.raises(psycopg.errors.CheckViolation, match=r"agent_id: agent .* does not belong"),
        acting_as(conn, "authenticated", w.owner) as c,
    ):
        c.execute(
            "update public.task_steps set agent_id = %s where id = %s",
            [w.other_agent, w.steps[0]],
        )
    # The service is held to it too.
    with (
        pytest.raises(psycopg.errors.CheckViolation, match=r"agent_id: agent .* does not belong"),
        acting_as(conn, "service_role") as c,
    ):
        c.execute(
            "update public.task_steps set agent_id = %s where id = %s",
            [w.other_agent, w.steps[0]],
        )
    assert snapshot(conn, w.task) == before
    own_agent = make_agent(conn, w.owner, "Researcher")
    rows = save(conn, w.owner, w.task, [{"instructions": "x", "agent_id": str(own_agent)}])
    assert len(rows) == 1


def test_a_step_cannot_move_to_another_task(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    second = make_task(conn, w.owner, w.agent)
    with (
        pytest.raises(psycopg.errors.CheckViolation, match="task_id: a step cannot move"),
        acting_as(conn, "authenticated", w.owner) as c,
    ):
        c.execute("update public.task_steps set task_id = %s where id = %s", [second, w.steps[0]])


def test_invalid_jsonpath_written_directly_is_refused(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    with (
        pytest.raises(psycopg.errors.SyntaxError, match="jsonpath"),
        acting_as(conn, "authenticated", w.owner) as c,
    ):
        c.execute(
            "update public.task_steps set skip_if = %s where id = %s", ["$.a ===", w.steps[0]]
        )


def test_reorder_in_one_statement(conn: psycopg.Connection) -> None:
    """A rotation succeeds while the order constraint is checked per statement (not
    deferred), which only a single UPDATE can do."""
    w = build_world(conn)
    s1, s2, s3 = w.steps
    with acting_as(conn, "authenticated", w.owner) as c:
        rows = c.execute(
            "select id, step_order from public.reorder_task_steps(%s, %s)", [w.task, [s2, s3, s1]]
        ).fetchall()
    assert rows == [(s2, 1), (s3, 2), (s1, 3)]
    updates = conn.execute(
        "select count(distinct transaction_id), count(*) from public.audit_log"
        " where operation = 'UPDATE' and record_id = any(%s)",
        [[s1, s2, s3]],
    ).fetchone()
    assert updates == (1, 3)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ("missing", "must list exactly the live steps"),
        ("extra", "must list exactly the live steps"),
        ("repeated", "is listed twice"),
        ("null", "without nulls"),
    ],
)
def test_reorder_must_list_exactly_the_live_steps(
    conn: psycopg.Connection, ids: str, message: str
) -> None:
    w = build_world(conn)
    s1, s2, s3 = w.steps
    step_ids = {
        "missing": [s2, s1],
        "extra": [s2, s1, s3, w.deleted_step],
        "repeated": [s1, s2, s3, s1],
        "null": [s1, None, s3],
    }[ids]
    before = snapshot(conn, w.task)
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue, match=message),
        acting_as(conn, "authenticated", w.owner) as c,
    ):
        c.execute("select public.reorder_task_steps(%s, %s::uuid[])", [w.task, step_ids])
    assert snapshot(conn, w.task) == before


def problems(conn, user_id, task_id) -> list[tuple]:
    with acting_as(conn, "authenticated", user_id) as c:
        found = c.execute("select public.validate_task_steps(%s)", [task_id]).fetchone()[0]
    assert all(set(p) == {"code", "message", "step_id", "step_order", "field"} for p in found)
    return [(p["code"], p["step_order"], p["field"]) for p in found]


def test_validate_valid_task_and_task_without_steps(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    assert problems(conn, w.owner, w.task) == []
    conn.execute("update public.task_steps set deleted_at = now() where task_id = %s", [w.task])
    assert problems(conn, w.owner, w.task) == [("no_steps", None, None)]


def test_validate_reports_gaps_and_foreign_or_inactive_agents(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    idle = make_agent(conn, w.owner, "Idle")
    conn.execute("update public.agents set active = false where id = %s", [idle])
    conn.execute("update public.task_steps set agent_id = %s where id = %s", [idle, w.steps[0]])
    mine = make_agent(conn, w.owner, "Mine")
    conn.execute("update public.task_steps set agent_id = %s where id = %s", [mine, w.steps[1]])
    # The agent changes hands after it was chosen: the step now points at a foreign agent.
    conn.execute("update public.agents set user_id = %s where id = %s", [w.other, mine])
    conn.execute("update public.task_steps set step_order = 5 where id = %s", [w.steps[2]])
    assert problems(conn, w.owner, w.task) == [
        ("inactive_agent", 1, "agent_id"),
        ("foreign_agent", 2, "agent_id"),
        ("step_order_gap", 5, "step_order"),
    ]


def test_validate_reports_rows_that_slipped_past_missing_constraints(
    conn: psycopg.Connection,
) -> None:
    """A database whose constraints were dropped by hand still gets every problem named."""
    w = build_world(conn)
    for constraint in (
        "task_steps_instructions_not_blank",
        "task_steps_step_name_length",
        "task_steps_custom_needs_template",
        "task_steps_selective_needs_paths",
        "task_steps_backoff_range",
        "task_steps_live_order_unique",
    ):
        conn.execute(f"alter table public.task_steps drop constraint {constraint}")
    s1, s2, s3 = w.steps
    conn.execute(
        "update public.task_steps set instructions = ' ', step_name = '' where id = %s", [s1]
    )
    conn.execute(
        "update public.task_steps set context_mode = 'custom', step_order = 3,"
        " retry_backoff_seconds = 100, retry_backoff_max_seconds = 10 where id = %s",
        [s2],
    )
    conn.execute("update public.task_steps set context_mode = 'selective' where id = %s", [s3])
    assert problems(conn, w.owner, w.task) == [
        ("blank_instructions", 1, "instructions"),
        ("blank_step_name", 1, "step_name"),
        ("custom_without_template", 3, "context_template"),
        ("duplicate_step_order", 3, "step_order"),
        ("duplicate_step_order", 3, "step_order"),
        ("invalid_retry_backoff", 3, "retry_backoff_max_seconds"),
        ("selective_without_paths", 3, "context_paths"),
    ]


def test_validate_a_task_that_is_not_yours(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    with pytest.raises(psycopg.errors.NoDataFound, match="not found"):
        problems(conn, w.other, w.task)


def test_rest_insert_without_a_position_appends(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    with acting_as(conn, "authenticated", w.owner) as c:
        added = c.execute(
            "insert into public.task_steps (task_id, step_name, instructions)"
            " values (%s, 'Fourth', 'x'), (%s, 'Fifth', 'y') returning step_name, step_order",
            [w.task, w.task],
        ).fetchall()
    assert added == [("Fourth", 4), ("Fifth", 5)]


def test_concurrent_edits_of_one_task_take_turns(conn: psycopg.Connection, db_url: str) -> None:
    """save_task_steps locks the task row: a second editor waits instead of interleaving."""
    w = build_world(conn)
    with (
        psycopg.connect(db_url, autocommit=True) as second,
        acting_as(conn, "authenticated", w.owner) as c,
    ):
        c.execute(
            "select public.save_task_steps(%s, %s)",
            [w.task, Jsonb([{"id": str(w.steps[0])}, {"instructions": "from the first"}])],
        )
        with (
            pytest.raises(psycopg.errors.LockNotAvailable),
            acting_as(second, "authenticated", w.owner) as c2,
        ):
            c2.execute("set local lock_timeout = '50ms'")
            c2.execute("select public.reorder_task_steps(%s, %s)", [w.task, list(w.steps[::-1])])
    rows = conn.execute(
        "select instructions from public.task_steps"
        " where task_id = %s and deleted_at is null order by step_order",
        [w.task],
    ).fetchall()
    assert rows == [("Do part 1",), ("from the first",)]
