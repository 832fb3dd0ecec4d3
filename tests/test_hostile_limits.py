"""Limits where data enters: a signed-in user's oversized, too deep or too costly value is
refused with an error naming the field and the limit, and nothing is written. Every call
goes through the PostgREST calling convention (``acting_as``)."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg.types.json import Jsonb

from sync.executors.output import OUTPUT_BYTES
from tests.hostile_support import deep_json, refused, written
from tests.run_engine_support import make_workflow
from tests.support import acting_as


@pytest.fixture
def owned(conn: psycopg.Connection) -> tuple:
    """An owner and their one-step task: (owner, task, step)."""
    owner, task_id, step_ids = make_workflow(conn, [{}])
    return owner, task_id, step_ids[0]


LIMITS = {
    "instructions_bytes": 100_000,
    "step_name_chars": 200,
    "context_data_bytes": 16_384,
    "json_levels": 32,
    "context_template_bytes": 20_000,
    "template_placeholders": 100,
    "context_paths": 10,
    "jsonpath_chars": 500,
    "skip_if_chars": 1000,
    "trigger_data_bytes": 65_536,
    "output_bytes": 65_536,
    "context_chars": 65_536,
    "step_ids": 50,
}


def test_the_limits_are_defined_once_and_the_service_agrees(conn: psycopg.Connection) -> None:
    limits = conn.execute("select stepsync.input_limits()").fetchone()[0]
    assert {name: limits[name] for name in LIMITS} == LIMITS
    assert limits["output_bytes"] == OUTPUT_BYTES
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="no input limit named"):
        conn.execute("select stepsync.input_limit('instruction_bytes')")


# 2,000 levels of nesting (within the size limit), sent as JSON text: psycopg's own
# serialiser would recurse as deep. 4,000 levels stopped every claim before the limits.
DEEP = deep_json(2000)

BLANKS = ["\t\n", "\u00a0", "\u200b", "\u3000 \u2009", "\ufeff", "\u2060\u00a0"]

# (field, value, what the error says): each one item of a save.
REFUSED_STEP_FIELDS = [
    ("instructions", "x" * 100_001, "steps[0].instructions: 100001 bytes, more than the limit"),
    *[("instructions", blank, "steps[0].instructions: must not be blank") for blank in BLANKS],
    ("step_name", "n" * 201, "steps[0].step_name: must have 1 to 200 characters"),
    ("step_name", "\u00a0\u200b", "steps[0].step_name: must have 1 to 200 characters"),
    (
        "context_data",
        {"big": "x" * 17_000},
        "steps[0].context_data: is 17011 bytes of JSON, more than the limit of 16384",
    ),
    (
        "context_data",
        DEEP,
        "steps[0].context_data: nests deeper than 32 levels",
    ),
    (
        "context_template",
        "{{task.name}}" + "x" * 20_000,
        "steps[0].context_template: is 20013 bytes, more than the limit of 20000",
    ),
    (
        "context_template",
        " ".join("{{task.name}}" for _ in range(101)),
        "steps[0].context_template: has more than 100 placeholders",
    ),
    (
        "context_template",
        'Hi {{ previous.output ? (@ like_regex "(a+)+$") }}',
        "steps[0].context_template: placeholder 1",
    ),
    (
        "context_paths",
        # The attack that took 2.9 GB: repeated subscripts multiply one array's items.
        ["$.steps[0].output" + "[0,0,0,0,0,0,0,0,0,0]" * 5],
        "steps[0].context_paths[0]: subscript [0,0,0,0,0,0,0,0,0,0]: only one index",
    ),
    (
        "context_paths",
        ["$.steps[0].output[0 to 1999]"],
        "steps[0].context_paths[0]: subscript",
    ),
    ("context_paths", ["$.**"], "steps[0].context_paths[0]: .** (every level) is not allowed"),
    (
        "context_paths",
        ["$.previous.output.*"],
        "steps[0].context_paths[0]: .* (every member) is not allowed: name the keys",
    ),
    (
        "context_paths",
        ["$.steps[*].output ? (@ == $.previous.output)"],
        "steps[0].context_paths[0]: inside a filter a path starts at @, not $",
    ),
    (
        "context_paths",
        [f"$.steps[{i}].output" for i in range(11)],
        "steps[0].context_paths: 11 paths, more than the limit of 10",
    ),
    (
        "context_paths",
        ["$." + "a" * 600],
        "steps[0].context_paths[0]: is 604 characters long, more than the limit of 500",
    ),
    (
        "skip_if",
        '$.previous.output like_regex "^(a|aa)+$"',
        "steps[0].skip_if: like_regex is not allowed",
    ),
    (
        "skip_if",
        "$.steps[*].output == $.previous.output",
        "steps[0].skip_if: comparison ==: one side must be a literal",
    ),
    ("skip_if", "$.previous.output.size() + 1 > 2", "steps[0].skip_if: + is not allowed"),
    ("skip_if", "$.previous ? (@.status == $x)", "steps[0].skip_if: variables"),
    ("skip_if", "$.previous.keyvalue().key", "steps[0].skip_if: method .keyvalue()"),
]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    REFUSED_STEP_FIELDS,
    ids=[f"{field}-{n}" for n, (field, _, _) in enumerate(REFUSED_STEP_FIELDS)],
)
def test_save_task_steps_refuses_what_breaks_a_limit_and_writes_nothing(
    conn: psycopg.Connection, owned: tuple, field: str, value, message: str
) -> None:
    owner, task_id, step_id = owned
    item: dict = {"id": str(step_id), "instructions": "Do it"}
    if field in ("context_template", "context_paths"):
        item["include_previous_context"] = True
        item["context_mode"] = "custom" if field == "context_template" else "selective"
    before = written(conn)
    with refused(conn, "authenticated", owner) as refusal:
        if value is DEEP:
            steps = f'[{{"id": "{step_id}", "instructions": "Do it", "context_data": '
            steps += DEEP + "}]"
            conn.execute("select public.save_task_steps(%s, %s::jsonb)", [task_id, steps])
        else:
            item[field] = value
            conn.execute("select public.save_task_steps(%s, %s)", [task_id, Jsonb([item])])
    assert refusal.sqlstate == "22023"
    assert refusal.message.startswith(message), refusal.message
    assert len(refusal.text) < 1000  # the error quotes no more than an excerpt
    assert written(conn) == before


def test_what_the_subset_allows_is_what_the_product_needs(
    conn: psycopg.Connection, owned: tuple
) -> None:
    owner, task_id, step_id = owned
    paths = [
        "$.steps[0].output.title",
        "$.steps[last].output",
        "$.steps[last - 1].status",
        "$.steps[*].status",
        '$.steps[*] ? (@.status == "failed").name',
        "$.context_data.tone",
        "$.previous.output.items.size()",
    ]
    with acting_as(conn, "authenticated", owner):
        saved = conn.execute(
            "select s.context_paths::text[], s.skip_if::text"
            " from public.save_task_steps(%s, %s) as s",
            [
                task_id,
                Jsonb(
                    [
                        {
                            "id": str(step_id),
                            "instructions": "Do it",
                            "include_previous_context": True,
                            "context_mode": "selective",
                            "context_paths": paths,
                            "skip_if": '$.previous.status == "failed" && '
                            "!exists($.previous.output ? (@.keep == true)) || "
                            '$.previous.output.text starts with "SKIP"',
                        }
                    ]
                ),
            ],
        ).fetchone()
    assert len(saved[0]) == len(paths)
    assert saved[1].startswith('($."previous"."status" == "failed"')


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        (
            "update public.task_steps set context_data = %s::jsonb where id = %s",
            "context_data: nests deeper than 32 levels",
        ),
        (
            "update public.task_steps set instructions = repeat('x', 100001) where id = %s",
            'violates check constraint "task_steps_instructions_size"',
        ),
        (
            "update public.task_steps set instructions = E'\\u00a0\\u200b' where id = %s",
            'violates check constraint "task_steps_instructions_not_blank"',
        ),
        (
            "update public.task_steps set skip_if = '$.a[0,0,0]' where id = %s",
            "skip_if: subscript [0,0,0]: only one index",
        ),
        (
            "update public.task_steps set context_mode = 'custom', context_template ="
            " repeat('{{task.name}}', 101) where id = %s",
            "context_template: has more than 100 placeholders",
        ),
    ],
    ids=["deep-context-data", "long-instructions", "blank", "skip-if", "placeholders"],
)
def test_a_direct_rest_write_meets_the_same_limits(
    conn: psycopg.Connection, owned: tuple, statement: str, message: str
) -> None:
    owner, _, step_id = owned
    params = [deep_json(40), step_id] if "%s::jsonb" in statement else [step_id]
    before = written(conn)
    with refused(conn, "authenticated", owner) as refusal:
        conn.execute(statement, params)
    assert refusal.sqlstate == "23514"
    assert message in refusal.message
    assert written(conn) == before


@pytest.mark.parametrize(
    ("trigger_data", "message"),
    [
        (deep_json(4000), "trigger data nests deeper than 32 levels"),
        (
            '{"blob": "' + "x" * 70_000 + '"}',
            "trigger data is 70012 bytes of JSON, more than the limit of 65536",
        ),
    ],
    ids=["deep", "large"],
)
def test_start_task_run_refuses_trigger_data_over_its_limits(
    conn: psycopg.Connection, owned: tuple, trigger_data: str, message: str
) -> None:
    owner, task_id, _ = owned
    before = written(conn)
    with refused(conn, "authenticated", owner) as refusal:
        conn.execute(
            "select public.start_task_run(%s, 'manual', %s::jsonb)", [task_id, trigger_data]
        )
    assert (refusal.sqlstate, refusal.message) == ("22023", message)
    assert written(conn) == before


def test_error_details_stay_small(conn: psycopg.Connection) -> None:
    owner, task_id, step_ids = make_workflow(conn, [{}, {}])
    before = written(conn)
    # 400,000 ids wrote a 14.5 MB detail to the server log on every call.
    started = time.monotonic()
    with refused(conn, "authenticated", owner) as too_many:
        conn.execute(
            "select public.reorder_task_steps(%s, array(select gen_random_uuid()"
            " from generate_series(1, 400000)))",
            [task_id],
        )
    assert time.monotonic() - started < 5
    assert too_many.sqlstate == "22023"
    assert too_many.message == "p_step_ids: 400000 ids, more than a task's 50 steps"
    assert too_many.detail is None
    # Within the limit, a detail lists at most ten ids of each kind.
    with refused(conn, "authenticated", owner) as wrong:
        conn.execute(
            "select public.reorder_task_steps(%s, array(select gen_random_uuid()"
            " from generate_series(1, 50)))",
            [task_id],
        )
    assert wrong.sqlstate == "22023"
    assert wrong.detail.count(", ") == 11 and wrong.detail.endswith(", …")
    assert len(wrong.text) < 1000
    # A huge value sent where an id belongs is quoted as an excerpt.
    with refused(conn, "authenticated", owner) as bad_id:
        conn.execute(
            "select public.save_task_steps(%s, %s)",
            [task_id, Jsonb([{"id": "x" * 1_000_000, "instructions": "Do it"}])],
        )
    assert bad_id.sqlstate == "22023"
    assert bad_id.message.startswith('steps[0].id: not a step id (uuid): "xxx')
    assert "(1000002 characters)" in bad_id.message
    assert len(bad_id.text) < 300
    assert written(conn) == before
    assert step_ids
