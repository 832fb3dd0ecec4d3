"""The audit stays complete without multiplying what a user writes: an update records the
columns it changed (and the small unchanged ones), never a large unchanged value again,
and a finished run's snapshot records its outputs by digest. Before, one re-save with one
character changed added 99 MB of audit rows, and one finished run 99 MB more."""

from __future__ import annotations

import hashlib

import psycopg
from psycopg.types.json import Jsonb

from tests.run_engine_support import claim, complete, make_workflow, start_run
from tests.support import acting_as

BIG_INSTRUCTIONS = "i" * 90_000
BIG_CONTEXT = {"notes": "c" * 15_000}


def audit_since(conn: psycopg.Connection, mark: int) -> list[tuple]:
    return conn.execute(
        "select table_name, operation, record_id, old_record, new_record,"
        " octet_length(coalesce(old_record::text, '') || coalesce(new_record::text, ''))"
        " from public.audit_log where id > %s order by id",
        [mark],
    ).fetchall()


def last_id(conn: psycopg.Connection) -> int:
    return conn.execute("select coalesce(max(id), 0) from public.audit_log").fetchone()[0]


def test_a_resave_records_only_what_changed(conn: psycopg.Connection) -> None:
    owner, task_id, step_ids = make_workflow(
        conn,
        [{"instructions": BIG_INSTRUCTIONS, "context_data": BIG_CONTEXT} for _ in range(3)],
    )
    steps = [
        {"id": str(step_id), "instructions": BIG_INSTRUCTIONS, "context_data": BIG_CONTEXT}
        for step_id in step_ids
    ]
    steps[1]["instructions"] = BIG_INSTRUCTIONS[:-1] + "!"  # one character changed
    mark = last_id(conn)
    with acting_as(conn, "authenticated", owner):
        conn.execute("select public.save_task_steps(%s, %s)", [task_id, Jsonb(steps)])

    ((table, operation, record_id, old, new, size),) = audit_since(conn, mark)
    assert (table, operation, record_id) == ("task_steps", "UPDATE", step_ids[1])
    assert new["instructions"] == steps[1]["instructions"]
    assert old["instructions"] == BIG_INSTRUCTIONS
    # The large unchanged value is not repeated; small unchanged ones are, for reading.
    assert "context_data" not in new and "context_data" not in old
    assert new["step_name"] == "Step 2" and new["task_id"] == str(task_id)
    assert size < 2 * len(BIG_INSTRUCTIONS) + 4_000


def test_the_history_still_rebuilds_every_version_of_a_step(conn: psycopg.Connection) -> None:
    owner, task_id, (step_id,) = make_workflow(conn, [{"context_data": BIG_CONTEXT}])
    edits = [
        {"instructions": "Second version"},
        {"context_data": {"notes": "d" * 15_000}, "step_name": "Renamed"},
        {"include_previous_context": True, "context_mode": "full"},
    ]
    for edit in edits:
        with acting_as(conn, "authenticated", owner):
            conn.execute(
                "select public.save_task_steps(%s, %s)",
                [task_id, Jsonb([{"id": str(step_id), **edit}])],
            )
    history = conn.execute(
        "select operation, new_record from public.audit_log"
        " where table_name = 'task_steps' and record_id = %s order by id",
        [step_id],
    ).fetchall()
    assert history[0][0] == "INSERT"
    rebuilt: dict = {}
    for _, record in history:
        rebuilt |= record
    current = conn.execute(
        "select to_jsonb(s) from public.task_steps as s where id = %s", [step_id]
    ).fetchone()[0]
    assert rebuilt == current


def test_a_finished_run_records_its_outputs_by_digest(conn: psycopg.Connection) -> None:
    _, task_id, step_ids = make_workflow(
        conn, [{"instructions": BIG_INSTRUCTIONS, "context_data": BIG_CONTEXT} for _ in range(3)]
    )
    run_id = start_run(conn, task_id)
    mark = last_id(conn)
    outputs = [{"text": str(n) * 60_000} for n in range(3)]
    for output in outputs:
        (step,) = claim(conn)
        assert complete(conn, step, output)

    rows = audit_since(conn, mark)
    assert sum(size for *_, size in rows) < 10_000  # 3 × 60 KB of outputs, not copied
    snapshots = {record_id: new for table, _, record_id, _, new, _ in rows if table == "task_steps"}
    assert set(snapshots) == set(step_ids)
    for step_id, output in zip(step_ids, outputs, strict=True):
        recorded = snapshots[step_id]["execution_result"]
        text = conn.execute(
            "select output::text from public.task_step_executions"
            " where run_id = %s and step_id = %s",
            [run_id, step_id],
        ).fetchone()[0]
        assert recorded["output"] == {
            "md5": hashlib.md5(text.encode()).hexdigest(),
            "bytes": len(text.encode()),
        }
        assert recorded["status"] == "completed" and recorded["run_id"] == str(run_id)
        # The definition itself keeps the whole result for the UI.
        kept = conn.execute(
            "select execution_result -> 'output' from public.task_steps where id = %s", [step_id]
        ).fetchone()[0]
        assert kept == output
