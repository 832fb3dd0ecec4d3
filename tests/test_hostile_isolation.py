"""One bad step fails only itself: a claim or a completion batch never fails because of
one member, and a step whose input cannot be built, or whose output breaks the limits,
fails with an error that says why while the rest of its batch goes on.

The bad data here is written the way data from before the limits would sit in the
database (as the superuser, past the write checks): the limits keep users from writing
it now, and these tests show the engine survives it anyway."""

from __future__ import annotations

import asyncio

import psycopg
from psycopg.types.json import Jsonb

from sync.executors.base import StepRequest
from tests.hostile_support import deep_json
from tests.run_engine_support import claim, make_workflow, run_row, start_run, step_rows
from tests.support import acting_as, as_service, triggers_off
from tests.workers import serving, wait_for_run

# Nested 1,000 deep with a secret-looking key at the bottom: the redaction must walk
# down to it (4,000 levels stopped every claim with "stack depth limit exceeded").
POISON = deep_json(1000, '{"token": "t"}')


def poison_first_step(conn: psycopg.Connection, run_id) -> None:
    """The run's first step snapshot holds the poisonous context_data."""
    conn.execute(
        "update public.task_step_executions set context_data = %s::jsonb"
        " where run_id = %s and step_order = 1",
        [POISON, run_id],
    )


def step_states(conn: psycopg.Connection, run_id) -> list[tuple]:
    """(status, error_message, context_error, started_at, attempt) of the run's steps."""
    return conn.execute(
        "select status::text, error_message, input_context ->> 'context_error', started_at,"
        " attempt from public.task_step_executions where run_id = %s order by step_order",
        [run_id],
    ).fetchall()


def test_a_claim_leases_the_good_steps_and_fails_the_one_whose_context_cannot_be_built(
    conn: psycopg.Connection,
) -> None:
    _, bad_task, _ = make_workflow(conn, [{}, {}], name="Hostile")
    _, good_task, _ = make_workflow(conn, [{}], name="Normal")
    bad_run = start_run(conn, bad_task)
    good_run = start_run(conn, good_task)
    poison_first_step(conn, bad_run)

    # Before the isolation, this claim failed as a whole with "stack depth limit exceeded".
    claimed = claim(conn, batch=10)

    assert [step["run_id"] for step in claimed] == [good_run]
    bad = step_states(conn, bad_run)
    assert [row[0] for row in bad] == ["failed", "skipped"]
    assert bad[0][1] == (
        "the step's input context could not be built: JSON nests deeper than 64 levels: "
        "it cannot be checked for secrets"
    )
    assert bad[0][2] == "JSON nests deeper than 64 levels: it cannot be checked for secrets"
    assert run_row(conn, bad_run)["status"] == "failed"
    assert run_row(conn, good_run)["status"] == "running"
    # Leased in the same statement (one transaction start time).
    good = step_states(conn, good_run)[0]
    assert good[0] == "running" and good[3] == bad[0][3]


def test_a_completion_batch_completes_the_good_outputs_and_fails_the_refused_ones(
    conn: psycopg.Connection,
) -> None:
    runs = []
    for name in ("Normal", "Too large", "Too deep"):
        _, task_id, _ = make_workflow(conn, [{}, {}], name=name)
        runs.append(start_run(conn, task_id))
    steps = {step["run_id"]: step for step in claim(conn, batch=10)}
    outputs = [
        '{"ok": true}',
        '{"text": "' + "x" * 70_000 + '"}',
        deep_json(40),
    ]
    with as_service(conn):
        rows = conn.execute(
            "select done.step_execution_id, done.completed, done.refused"
            " from stepsync.complete_steps(%s::uuid[], %s::bigint[], %s::jsonb[]) as done",
            [
                [steps[run]["step_execution_id"] for run in runs],
                [steps[run]["lease_token"] for run in runs],
                outputs,
            ],
        ).fetchall()

    assert [(completed, refused) for _, completed, refused in rows] == [
        (True, None),
        (False, "is 70012 bytes of JSON, more than the limit of 65536"),
        (False, "nests deeper than 32 levels"),
    ]
    normal, large, deep = (step_rows(conn, run) for run in runs)
    assert [row["status"] for row in normal] == ["completed", "queued"]
    for refused_rows, reason in (
        (large, "output refused: it is 70012 bytes of JSON, more than the limit of 65536"),
        (deep, "output refused: it nests deeper than 32 levels"),
    ):
        assert [row["status"] for row in refused_rows] == ["failed", "skipped"]
        assert refused_rows[0]["error_message"] == reason
        assert refused_rows[0]["output"] is None


def test_preview_shows_why_one_step_cannot_be_built_and_the_others_as_usual(
    conn: psycopg.Connection,
) -> None:
    owner, task_id, step_ids = make_workflow(
        conn, [{}, {"include_previous_context": True, "context_mode": "full"}]
    )
    with triggers_off(conn):
        conn.execute(
            "update public.task_steps set context_data = %s::jsonb where id = %s",
            [POISON, step_ids[0]],
        )
    with acting_as(conn, "authenticated", owner):
        preview = conn.execute("select public.preview_task_run(%s)", [task_id]).fetchone()[0]
    first, second = preview["steps"]
    assert first["input"]["context_error"].startswith("JSON nests deeper than 64 levels")
    assert second["input"]["mode"] == "full"


def test_a_skip_if_that_cannot_be_evaluated_does_not_skip_and_fails_nothing(
    conn: psycopg.Connection,
) -> None:
    # Evaluation errors mean "do not skip": a skip_if over data it cannot read (a path
    # through a string, a comparison of an object) is no reason to fail a batch.
    _, task_id, _ = make_workflow(conn, [{}, {"skip_if": "strict $.previous.output.a.b == 1"}, {}])
    run_id = start_run(conn, task_id)
    (step,) = claim(conn)
    with as_service(conn):
        assert conn.execute(
            "select stepsync.complete_step(%s, %s, %s)",
            [step["step_execution_id"], step["lease_token"], Jsonb({"a": "text"})],
        ).fetchone()[0]
    assert [row["status"] for row in step_rows(conn, run_id)] == ["completed", "queued", "pending"]


def test_the_service_completes_the_normal_run_and_fails_the_hostile_one_of_a_shared_batch(
    conn: psycopg.Connection, db_url: str
) -> None:
    owner_a, hostile_task, _ = make_workflow(conn, [{}, {}], name="Hostile")
    owner_b, normal_task, _ = make_workflow(
        conn, [{}, {"include_previous_context": True}], name="Normal"
    )
    with acting_as(conn, "authenticated", owner_a):
        hostile_run = conn.execute("select public.start_task_run(%s)", [hostile_task]).fetchone()[0]
    with acting_as(conn, "authenticated", owner_b):
        normal_run = conn.execute("select public.start_task_run(%s)", [normal_task]).fetchone()[0]
    poison_first_step(conn, hostile_run)
    executed: list[tuple[str, int]] = []

    async def step(request: StepRequest) -> dict:
        executed.append((str(request.run_id), request.step_order))
        return {"done": request.step_order}

    async def scenario() -> tuple[dict, dict]:
        # Both first steps are queued before the service starts: its first claim (batch
        # of 10) takes them together.
        async with serving(db_url, step, batch_size=10, listen=[]):
            return await wait_for_run(db_url, normal_run), await wait_for_run(db_url, hostile_run)

    normal, hostile = asyncio.run(scenario())

    assert normal["status"] == "completed"
    assert executed == [(str(normal_run), 1), (str(normal_run), 2)]
    assert hostile["status"] == "failed"
    assert hostile["error_message"].startswith(
        "step 1 (Step 1) failed: the step's input context could not be built: "
        "JSON nests deeper than 64 levels"
    )
    first_normal, first_hostile = (
        step_states(conn, normal_run)[0],
        step_states(conn, hostile_run)[0],
    )
    assert first_normal[3] == first_hostile[3]  # leased by one claim statement
    assert (first_hostile[0], first_hostile[4]) == ("failed", 1)


def test_the_service_fails_a_step_whose_output_is_too_deep_and_completes_the_others(
    conn: psycopg.Connection, db_url: str
) -> None:
    runs = []
    for name in ("Deep", "Big", "Over the levels", "Fine"):
        owner, task_id, _ = make_workflow(conn, [{}], name=name)
        with acting_as(conn, "authenticated", owner):
            runs.append(conn.execute("select public.start_task_run(%s)", [task_id]).fetchone()[0])
    deep: dict = {}
    for _ in range(5000):  # deeper than json.dumps can serialise
        deep = {"a": deep}
    shallow_but_deep: dict = {}
    for _ in range(40):  # serialisable, but over the database's 32 levels
        shallow_but_deep = {"a": shallow_but_deep}
    answers = {
        str(runs[0]): deep,
        str(runs[1]): {"text": "x" * 70_000},
        str(runs[2]): shallow_but_deep,
        str(runs[3]): {"ok": True},
    }

    async def step(request: StepRequest):
        return answers[str(request.run_id)]

    async def scenario() -> list[dict]:
        async with serving(db_url, step, batch_size=10, listen=[]):
            return [await wait_for_run(db_url, run) for run in runs]

    finished = asyncio.run(scenario())
    assert [run["status"] for run in finished] == ["failed", "failed", "failed", "completed"]
    errors = [step_rows(conn, run)[0]["error_message"] for run in runs]
    assert errors == [
        "executor output nests too deep to be stored as JSON",
        "executor output is 70012 bytes of JSON, more than the limit of 65536",
        "output refused: it nests deeper than 32 levels",
        None,
    ]
    assert step_rows(conn, runs[3])[0]["output"] == {"ok": True}


def test_a_step_whose_context_takes_longer_than_the_statement_timeout_fails_alone(
    conn: psycopg.Connection,
) -> None:
    _, slow_task, _ = make_workflow(conn, [{}, {}], name="Slow")
    _, quick_task, _ = make_workflow(conn, [{}], name="Quick")
    slow_run = start_run(conn, slow_task)
    quick_run = start_run(conn, quick_task)
    # Past every write check (as data from before the limits): step 2 of the slow run
    # has 200 filtering paths to walk over an output of 100,000 items, seconds of work.
    conn.execute(
        "update public.task_step_executions set status = 'completed', attempt = 1,"
        " output = (select jsonb_agg(repeat('v', 10)) from generate_series(1, 100000)),"
        " started_at = now(), completed_at = now() where run_id = %s and step_order = 1",
        [slow_run],
    )
    paths = "{" + ",".join(f'"$.steps[*].output[*] ? (@ == \\"v{k}\\")"' for k in range(200)) + "}"
    conn.execute(
        "update public.task_step_executions set status = 'queued', run_after = now(),"
        " fair_at = now() - interval '1 minute', include_previous_context = true,"
        " context_mode = 'selective', context_paths = %s where run_id = %s and step_order = 2",
        [paths, slow_run],
    )
    with as_service(conn):
        conn.execute("set local statement_timeout = '200ms'")
        claimed = conn.execute("select run_id from stepsync.claim_steps('w', 10, 60)").fetchall()
    assert claimed == [(quick_run,)]
    slow = step_states(conn, slow_run)
    assert slow[1][:3] == (
        "failed",
        "the step's input context could not be built: building it took longer than the "
        "statement timeout",
        "building it took longer than the statement timeout",
    )
    assert run_row(conn, slow_run)["status"] == "failed"
