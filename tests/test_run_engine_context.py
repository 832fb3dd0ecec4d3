"""Context passing: what each step receives, exactly, in every context mode."""

from __future__ import annotations

from datetime import datetime

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.run_engine_support import (
    claim_one,
    complete,
    make_workflow,
    start_run,
    step_rows,
)


def with_datetimes(steps: list[dict]) -> list[dict]:
    """Timestamps in a context are JSON strings; parse them to compare with the rows."""
    return [
        step | {key: datetime.fromisoformat(step[key]) for key in ("started_at", "completed_at")}
        for step in steps
    ]


def test_five_step_run_receives_the_exact_context_of_each_mode(conn: psycopg.Connection) -> None:
    user_id, task_id, step_ids = make_workflow(
        conn,
        [
            {
                "step_name": "Research",
                "include_previous_context": True,
                "context_mode": "full",
                "context_data": {"topic": "pgflow", "api_key": "sk-1"},
            },
            {"step_name": "Outline", "include_previous_context": True, "context_mode": "full"},
            {
                "step_name": "Draft",
                "include_previous_context": True,
                "context_mode": "previous",
            },
            {
                "step_name": "Review",
                "include_previous_context": True,
                "context_mode": "selective",
                "context_paths": [
                    "$.steps[0].output.title",
                    "$.steps[*].status",
                    "$.previous.output.words",
                    "$.steps[9].output",
                ],
            },
            {
                "step_name": "Stats",
                "include_previous_context": True,
                "context_mode": "metadata",
            },
        ],
        name="Blog post",
    )
    # A sixth step in custom mode makes every mode part of one run.
    conn.execute(
        "insert into public.task_steps (task_id, step_order, step_name, instructions,"
        " include_previous_context, context_mode, context_template)"
        " values (%s, 6, 'Publish', 'Publish it', true, 'custom', %s)",
        [
            task_id,
            "Publish {{steps[2].output.text}} by {{ run.trigger_data.author }} for {{task.name}}"
            " ({{previous.status}}, {{steps[0].output.meta}}, {{steps[7].output}}, {{]}})",
        ],
    )
    run_id = start_run(conn, task_id, trigger_data={"author": "ada", "password": "hunter2"})
    run = {
        "id": str(run_id),
        "trigger_type": "manual",
        "trigger_data": {"author": "ada", "password": "[redacted]"},
    }
    task = {"id": str(task_id), "name": "Blog post"}

    def base(order: int, mode: str, context_data: dict | None = None) -> dict:
        return {
            "mode": mode,
            "task": task,
            "run": run,
            "step": {"order": order},
            "context_data": context_data or {},
        }

    outputs = [
        {"title": "Why SKIP LOCKED", "meta": {"Authorization": "Bearer x", "lang": "en"}},
        {"sections": ["intro", "body"], "accessToken": "t-2"},
        {"text": "Draft text", "words": 1200},
        "Looks good",
        {"views": 0},
    ]

    # Step 1: full mode, nothing before it; its own context_data with the key redacted.
    step = claim_one(conn)
    assert step["step_order"] == 1
    assert step["context"] == base(1, "full", {"topic": "pgflow", "api_key": "[redacted]"}) | {
        "steps": []
    }
    assert complete(conn, step, outputs[0])

    # Step 2: full mode, every earlier step with its output (secrets redacted at depth).
    step = claim_one(conn)
    assert step["context"] == base(2, "full") | {
        "steps": [
            {
                "order": 1,
                "name": "Research",
                "status": "completed",
                "output": {
                    "title": "Why SKIP LOCKED",
                    "meta": {"Authorization": "[redacted]", "lang": "en"},
                },
                "error": None,
            }
        ]
    }
    assert complete(conn, step, outputs[1])

    # Step 3: previous mode, only step 2.
    step = claim_one(conn)
    assert step["context"] == base(3, "previous") | {
        "previous": {
            "order": 2,
            "name": "Outline",
            "status": "completed",
            "output": {"sections": ["intro", "body"], "accessToken": "[redacted]"},
            "error": None,
        }
    }
    assert complete(conn, step, outputs[2])

    # Step 4: selective, each path keyed by its text; no match is null, many an array.
    step = claim_one(conn)
    assert step["context"] == base(4, "selective") | {
        "selected": {
            '$."steps"[0]."output"."title"': "Why SKIP LOCKED",
            '$."steps"[*]."status"': ["completed", "completed", "completed"],
            '$."previous"."output"."words"': 1200,
            '$."steps"[9]."output"': None,
        }
    }
    assert complete(conn, step, outputs[3])

    # Step 5: metadata, timings and attempts but no outputs.
    step = claim_one(conn)
    rows = step_rows(conn, run_id)
    context = step["context"]
    assert context | {"steps": with_datetimes(context["steps"])} == base(5, "metadata") | {
        "steps": [
            {
                "order": row["step_order"],
                "name": row["step_name"],
                "status": "completed",
                "started_at": row["started_at"],
                "completed_at": row["completed_at"],
                "duration_ms": row["duration_ms"],
                "attempts": 1,
            }
            for row in rows[:4]
        ]
    }
    assert complete(conn, step, outputs[4])

    # Step 6: custom template; unknown and malformed placeholders are marked.
    step = claim_one(conn)
    assert step["context"] == base(6, "custom") | {
        "rendered": "Publish Draft text by ada for Blog post (completed,"
        ' {"lang": "en", "Authorization": "[redacted]"}, [missing: steps[7].output],'
        " [invalid placeholder: ]])"
    }
    assert complete(conn, step, {"url": "https://example.test/post"})

    # What each step received is kept on its row.
    rows = step_rows(conn, run_id)
    assert [row["input_context"]["mode"] for row in rows] == [
        "full",
        "full",
        "previous",
        "selective",
        "metadata",
        "custom",
    ]
    assert (
        conn.execute(
            "select status::text from public.agent_task_executions where id = %s", [run_id]
        ).fetchone()[0]
        == "completed"
    )
    assert user_id is not None and len(step_ids) == 5


def test_include_previous_context_false_gives_only_context_data(
    conn: psycopg.Connection,
) -> None:
    _, task_id, _ = make_workflow(
        conn,
        [
            {"step_name": "A"},
            {"step_name": "B", "context_mode": "full", "context_data": {"k": [1, 2]}},
        ],
        name="Isolated",
    )
    run_id = start_run(conn, task_id)
    assert complete(conn, claim_one(conn), {"secret_plan": "x"})
    step = claim_one(conn)
    assert step["context"] == {
        "mode": "none",
        "task": {"id": str(task_id), "name": "Isolated"},
        "run": {"id": str(run_id), "trigger_type": "manual", "trigger_data": {}},
        "step": {"order": 2},
        "context_data": {"k": [1, 2]},
    }


def test_large_outputs_are_truncated_with_a_marker(conn: psycopg.Connection) -> None:
    _, task_id, _ = make_workflow(
        conn,
        [
            {"step_name": "Big"},
            {"step_name": "Next", "include_previous_context": True, "context_mode": "previous"},
        ],
    )
    start_run(conn, task_id)
    big = {"text": "x" * 65_400}  # within the output limit, over what the context can carry
    assert complete(conn, claim_one(conn), big)
    step = claim_one(conn)
    output = step["context"]["previous"]["output"]
    assert isinstance(output, str)
    kept, marker = output.split("…")
    removed = len('{"text": "' + "x" * 65_400 + '"}') - len(kept)
    assert marker == f"[truncated {removed} bytes]"
    # The whole input stays within 64 KB of JSON text; the small parts (the trigger data,
    # the step's name, an empty error) keep their size and the output takes the rest.
    sent = conn.execute(
        "select length(input_context::text) from public.task_step_executions where id = %s",
        [step["step_execution_id"]],
    ).fetchone()[0]
    assert 65536 - 200 < sent <= 65536
    assert 65536 - 500 < len(kept) < 65_412
    assert kept.startswith('{"text": "xxx')


@pytest.mark.parametrize(
    ("key", "redacted"),
    [
        ("password", True),
        ("api_key", True),
        ("apiKey", True),
        ("X-Api-Key", True),
        ("client_secret", True),
        ("refresh_token", True),
        ("AWS_ACCESS_KEY", True),
        ("private_key", True),
        ("authorization", True),
        ("Passwd", True),
        ("passphrase", True),
        ("credentials", True),
        ("Cookie", True),
        ("SessionKey", True),
        ("bearer", True),
        ("signature", True),
        ("accessKey", True),
        ("total_tokens", False),
        ("tokenizer", False),
        ("author", False),
        ("secretary_name", False),
    ],
)
def test_secret_looking_keys_are_recognised_and_redacted(
    conn: psycopg.Connection, key: str, redacted: bool
) -> None:
    assert conn.execute("select stepsync.is_secret_key(%s)", [key]).fetchone()[0] is redacted
    # redact_secrets first searches the text for the secret words' common parts: a key
    # is_secret_key matches must never slip through that search.
    value = conn.execute("select stepsync.redact_secrets(%s)", [Jsonb({key: "v"})]).fetchone()[0]
    assert value == {key: "[redacted]" if redacted else "v"}


def test_redaction_reaches_every_depth(conn: psycopg.Connection) -> None:
    value = {
        "a": [{"b": {"password": 1, "ok": [{"token": {"deep": True}}]}}],
        "keep": "token",
    }
    assert conn.execute("select stepsync.redact_secrets(%s)", [Jsonb(value)]).fetchone()[0] == {
        "a": [{"b": {"password": "[redacted]", "ok": [{"token": "[redacted]"}]}}],
        "keep": "token",
    }
