"""Validating and previewing steps that are not saved, called as PostgREST calls them:
validate_steps (the problems of a list, with the codes of validate_task_steps, writing
nothing) and preview_task_run of a draft or of an unsaved list (inputs built by the
function execution uses)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.fixtures.task_world import ACTORS, attempt, build_world, role_and_user
from tests.run_engine_support import claim_one, complete, make_workflow, start_run
from tests.support import acting_as, make_agent


def everything(conn: psycopg.Connection) -> tuple:
    """A fingerprint of every table an RPC here could write."""
    return conn.execute(
        "select (select md5(coalesce(string_agg(s::text, ',' order by s.id), ''))"
        "  from public.task_steps as s),"
        " (select count(*) from public.task_step_drafts),"
        " (select count(*) from public.agent_task_executions),"
        " (select count(*) from public.audit_log)"
    ).fetchone()


def validate(conn, user_id, task_id, steps) -> list[tuple]:
    with acting_as(conn, "authenticated", user_id) as c:
        found = c.execute("select public.validate_steps(%s, %s)", [task_id, Jsonb(steps)])
        problems = found.fetchone()[0]
    assert all(set(p) == {"code", "message", "step_id", "step_order", "field"} for p in problems)
    return [(p["code"], p["step_order"], p["field"]) for p in problems]


def validate_saved(conn, user_id, task_id) -> list[tuple]:
    with acting_as(conn, "authenticated", user_id) as c:
        problems = c.execute("select public.validate_task_steps(%s)", [task_id]).fetchone()[0]
    return [(p["code"], p["step_order"], p["field"]) for p in problems]


def test_a_valid_list_has_no_problems_saved_or_not(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    steps = [
        {"id": str(w.steps[2]), "max_attempts": 3},
        {"instructions": "New", "context_mode": "custom", "context_template": "{{previous}}"},
    ]
    before = everything(conn)
    assert validate(conn, w.owner, w.task, steps) == []
    assert everything(conn) == before
    with acting_as(conn, "authenticated", w.owner) as c:
        c.execute("select public.save_task_steps(%s, %s)", [w.task, Jsonb(steps)])
    assert validate_saved(conn, w.owner, w.task) == []


def test_every_problem_of_an_unsaved_list_is_reported_and_nothing_written(
    conn: psycopg.Connection,
) -> None:
    w = build_world(conn)
    idle = make_agent(conn, w.owner, "Idle")
    conn.execute("update public.agents set active = false where id = %s", [idle])
    s1, s2, _ = w.steps
    steps = [
        {"id": str(s1), "instructions": " ", "step_name": ""},
        {"context_mode": "custom"},  # new, and no instructions yet
        {"instructions": "x", "context_mode": "selective", "agent_id": str(w.other_agent)},
        {
            "id": str(s2),
            "agent_id": str(idle),
            "retry_backoff_seconds": 100,
            "retry_backoff_max_seconds": 10,
        },
        {"id": str(s1)},
        {"id": str(w.deleted_step), "step_name": "x" * 201},
    ]
    before = everything(conn)
    assert validate(conn, w.owner, w.task, steps) == [
        ("blank_instructions", 1, "instructions"),
        ("blank_step_name", 1, "step_name"),
        ("blank_instructions", 2, "instructions"),
        ("custom_without_template", 2, "context_template"),
        ("foreign_agent", 3, "agent_id"),
        ("selective_without_paths", 3, "context_paths"),
        ("inactive_agent", 4, "agent_id"),
        ("invalid_retry_backoff", 4, "retry_backoff_max_seconds"),
        ("duplicate_step", 5, "id"),
        # Not a live step: read like a new one, so its instructions are missing too.
        ("blank_instructions", 6, "instructions"),
        ("step_name_too_long", 6, "step_name"),
        ("unknown_step", 6, "id"),
    ]
    assert everything(conn) == before


def test_the_rules_are_the_same_for_saved_and_unsaved_steps(conn: psycopg.Connection) -> None:
    """A problem the live steps can have (here an agent that became inactive after it was
    chosen) is reported with the same code, message and field either way."""
    w = build_world(conn)
    idle = make_agent(conn, w.owner, "Soon idle")
    conn.execute("update public.task_steps set agent_id = %s where id = %s", [idle, w.steps[1]])
    conn.execute("update public.agents set active = false where id = %s", [idle])
    listed = [{"id": str(s)} for s in w.steps]
    with acting_as(conn, "authenticated", w.owner) as c:
        saved = c.execute("select public.validate_task_steps(%s)", [w.task]).fetchone()[0]
        unsaved = c.execute(
            "select public.validate_steps(%s, %s)", [w.task, Jsonb(listed)]
        ).fetchone()[0]
    assert saved == unsaved
    assert [p["code"] for p in saved] == ["inactive_agent"]


def test_empty_and_oversized_lists_are_problems(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    assert validate(conn, w.owner, w.task, []) == [("no_steps", None, None)]
    too_many = validate(conn, w.owner, w.task, [{"instructions": "x"}] * 51)
    assert too_many == [
        ("too_many_steps", None, None),
        ("step_order_out_of_range", 51, "step_order"),
    ]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (None, "steps: must be a JSON array"),
        ({"instructions": "x"}, "steps: must be a JSON array"),
        ([["x"]], r"steps\[0\]: must be a JSON object"),
        ([{"instructions": True}], r"steps\[0\].instructions: must be a string"),
        ([{"id": 7}], r"steps\[0\].id: not a step id"),
        ([{"context_mode": "everything"}], r"steps\[0\].context_mode: must be one of"),
        ([{"task_id": "00000000-0000-0000-0000-000000000000"}], r"steps\[0\].task_id: must be"),
    ],
)
def test_a_malformed_list_is_an_error(conn: psycopg.Connection, steps, message: str) -> None:
    w = build_world(conn)
    before = everything(conn)
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue, match=message),
        acting_as(conn, "authenticated", w.owner) as c,
    ):
        c.execute(
            "select public.validate_steps(%s, %s)",
            [w.task, None if steps is None else Jsonb(steps)],
        )
    assert everything(conn) == before


EXPECTED = {"anon": "42501", "other": "P0002", "owner": "ok", "service_role": "ok"}


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize(
    "sql",
    [
        "select public.validate_steps(%(task)s, %(steps)s)",
        "select public.preview_task_run(%(task)s, p_steps => %(steps)s)",
        "select public.preview_task_run(%(task)s, p_use_draft => true)",
    ],
    ids=["validate_steps", "preview unsaved", "preview draft"],
)
def test_only_the_owner_and_the_service_validate_or_preview(
    conn: psycopg.Connection, sql: str, actor: str
) -> None:
    w = build_world(conn)
    with acting_as(conn, "authenticated", w.owner) as c:
        c.execute(
            "select public.save_task_steps_draft(%s, %s)", [w.task, Jsonb([{"instructions": "d"}])]
        )
    before = everything(conn)
    role, user_id = role_and_user(w, actor)
    outcome = attempt(
        conn, role, user_id, sql, {"task": w.task, "steps": Jsonb([{"instructions": "x"}])}
    )
    if EXPECTED[actor] == "ok":
        assert outcome[0] == "ok", outcome
        result = outcome[1][0][0]
        assert result == [] or result["steps"][0]["instructions"] in ("x", "d")
    else:
        assert outcome == ("error", EXPECTED[actor])
    assert everything(conn) == before


def test_an_unknown_task_is_not_found(conn: psycopg.Connection) -> None:
    w = build_world(conn)
    unknown = conn.execute("select gen_random_uuid()").fetchone()[0]
    for sql in (
        "select public.validate_steps(%s, '[]')",
        "select public.preview_task_run(%s, p_steps => '[]')",
    ):
        with (
            pytest.raises(psycopg.errors.NoDataFound, match=f"task {unknown} not found"),
            acting_as(conn, "authenticated", w.owner) as c,
        ):
            c.execute(sql, [unknown])


# --- preview of a draft or an unsaved list ----------------------------------------------------

STEPS = [
    {"step_name": "Collect"},
    {"step_name": "Rank", "include_previous_context": True, "context_mode": "previous"},
    {"step_name": "Write", "include_previous_context": True, "context_mode": "full"},
]


def preview(conn, user_id, task_id, **arguments) -> dict:
    named = "".join(f", {name} => %({name})s" for name in arguments)
    values = {
        name: Jsonb(value) if name == "p_steps" else value for name, value in arguments.items()
    }
    with acting_as(conn, "authenticated", user_id) as c:
        return c.execute(
            f"select public.preview_task_run(%(task)s{named})", {"task": task_id, **values}
        ).fetchone()[0]


def test_preview_of_an_unsaved_list_is_the_preview_of_it_saved(conn: psycopg.Connection) -> None:
    user_id, task_id, (collect, rank, write) = make_workflow(conn, STEPS)
    start_run(conn, task_id)
    assert complete(conn, claim_one(conn), ["mail 1", "mail 2"])
    assert complete(conn, claim_one(conn), {"best": "mail 2"})
    assert complete(conn, claim_one(conn), "written")
    # The editor's state: Rank moved first, a new step after it, Collect last.
    listed = [
        {"id": str(rank)},
        {"step_name": "Check", "instructions": "Check it", "include_previous_context": True},
        {"id": str(write), "instructions": "Write it up"},
        {"id": str(collect)},
    ]
    before = conn.execute("select count(*) from public.audit_log").fetchone()
    unsaved = preview(conn, user_id, task_id, p_steps=listed)
    assert conn.execute("select count(*) from public.audit_log").fetchone() == before
    assert unsaved["source"] == "steps"
    assert [(s["step_id"], s["name"], s["instructions"]) for s in unsaved["steps"]] == [
        (str(rank), "Rank", "Do part 2"),
        (None, "Check", "Check it"),
        (str(write), "Write", "Write it up"),
        (str(collect), "Collect", "Do part 1"),
    ]
    # Known steps bring their last run's outputs, the new one a placeholder.
    check, written_up = unsaved["steps"][1]["input"], unsaved["steps"][2]["input"]
    assert check["previous"]["output"] == {"best": "mail 2"}
    assert [s["output"] for s in written_up["steps"]] == [
        {"best": "mail 2"},
        "<output of step 2: not run yet>",
    ]

    with acting_as(conn, "authenticated", user_id) as c:
        c.execute("select public.save_task_steps(%s, %s)", [task_id, Jsonb(listed)])
    saved = preview(conn, user_id, task_id)
    assert saved["source"] == "live"
    for before_saving, after_saving in zip(unsaved["steps"], saved["steps"], strict=True):
        assert after_saving | {"step_id": None} == before_saving | {"step_id": None}


def test_preview_of_the_draft_shows_unfinished_steps(conn: psycopg.Connection) -> None:
    user_id, task_id, (collect, *_) = make_workflow(conn, STEPS)
    with pytest.raises(psycopg.errors.NoDataFound, match="has no draft"):
        preview(conn, user_id, task_id, p_use_draft=True)
    draft = [
        {"id": str(collect)},
        {"step_name": "Later", "context_mode": "custom", "include_previous_context": True},
    ]
    with acting_as(conn, "authenticated", user_id) as c:
        c.execute("select public.save_task_steps_draft(%s, %s)", [task_id, Jsonb(draft)])
    shown = preview(conn, user_id, task_id, p_use_draft=True)
    assert shown["source"] == "draft"
    assert [(s["name"], s["instructions"]) for s in shown["steps"]] == [
        ("Collect", "Do part 1"),
        ("Later", ""),
    ]
    assert shown["steps"][1]["input"]["rendered"] == ""  # no template yet
    # The live preview is untouched by the draft.
    assert [s["name"] for s in preview(conn, user_id, task_id)["steps"]] == [
        "Collect",
        "Rank",
        "Write",
    ]


def test_preview_takes_a_list_or_the_draft_not_both(conn: psycopg.Connection) -> None:
    user_id, task_id, _ = make_workflow(conn, STEPS)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="not both"):
        preview(conn, user_id, task_id, p_steps=[], p_use_draft=True)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"steps\[0\].colour"):
        preview(conn, user_id, task_id, p_steps=[{"colour": "red"}])
