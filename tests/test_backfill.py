"""Backfill of legacy tasks: categories, dry run, idempotency, verify, rollback, gentleness."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from sync import backfill
from tests.support import (
    generate_legacy_tasks,
    legacy_task,
    live_steps,
    make_agent,
    make_task,
    make_user,
    replace_steps,
    task_instructions,
    triggers_off,
)

SMALL = backfill.Settings(batch_size=7)


@pytest.fixture
def bf(db_url: str) -> Iterator[psycopg.Connection]:
    """The backfill's own connection (service role), as the command uses it."""
    with backfill.connect(db_url) as connection:
        yield connection


@pytest.fixture
def owner(conn: psycopg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    user_id = make_user(conn)
    return user_id, make_agent(conn, user_id)


def backfill_once(bf: psycopg.Connection, settings: backfill.Settings = SMALL) -> backfill.Run:
    run_id = backfill.start_run(bf, settings)
    return backfill.run(bf, run_id, settings)


def step_count(conn: psycopg.Connection) -> int:
    return conn.execute("select count(*) from public.task_steps").fetchone()[0]


@pytest.fixture
def every_category(conn: psycopg.Connection, owner) -> dict[str, uuid.UUID]:
    """One legacy task (or two) of every category the backfill must report."""
    user_id, agent_id = owner
    tasks = {
        "plain": legacy_task(conn, user_id, agent_id, name="Daily digest", instructions="Digest"),
        "unnamed": legacy_task(
            conn, user_id, agent_id, name="  ", instructions="  Check the\n\tfeed   now  "
        ),
        "long": legacy_task(conn, user_id, agent_id, instructions="x" * 20_000),
        "paused": legacy_task(conn, user_id, agent_id, status="paused"),
        "completed": legacy_task(conn, user_id, agent_id, status="completed"),
        "failed": legacy_task(conn, user_id, agent_id, status="failed"),
        "cancelled": legacy_task(conn, user_id, agent_id, status="cancelled"),
        "empty": legacy_task(conn, user_id, agent_id, instructions=""),
        "whitespace": legacy_task(conn, user_id, agent_id, instructions=" \n\t "),
        # Unicode whitespace is blank too (a no-break and a zero-width space).
        "unicode_blank": legacy_task(conn, user_id, agent_id, instructions="\u00a0\u200b "),
        # More than a step may hold: no step, reported (a step would break its limit).
        "oversized": legacy_task(conn, user_id, agent_id, instructions="y" * 100_001),
        "marker_missing": legacy_task(
            conn, user_id, agent_id, instructions="Multi-step task with 3 steps"
        ),
        "marker_present": legacy_task(
            conn, user_id, agent_id, instructions="Multi-step task with 2 steps"
        ),
        "has_steps": legacy_task(conn, user_id, agent_id, instructions="Old single text"),
    }
    with triggers_off(conn):
        replace_steps(conn, tasks["marker_present"], [{}, {}])
        replace_steps(conn, tasks["has_steps"], [{"instructions": "Edited in the new UI"}])
    return tasks


EXPECTED_COUNTS = {
    "steps_created": 7,
    "already_has_steps": 1,
    "marker_with_steps": 1,
    "marker_without_steps": 1,
    "blank_instructions": 3,
    "oversized_instructions": 1,
    "long_instructions": 1,
    "unnamed": 1,
    "status_paused": 1,
    "status_completed": 1,
    "status_failed": 1,
    "status_cancelled": 1,
}


def test_every_category_is_handled_and_reported(
    conn: psycopg.Connection, bf: psycopg.Connection, every_category: dict[str, uuid.UUID]
) -> None:
    tasks = every_category
    result = backfill_once(bf)

    assert result.status == "completed"
    assert result.tasks_scanned == 14
    assert result.counts == EXPECTED_COUNTS
    assert result.needs_attention

    assert live_steps(conn, tasks["plain"]) == [(1, "Daily digest", "Digest", "pending")]
    assert live_steps(conn, tasks["unnamed"]) == [
        (1, "Check the feed now", "  Check the\n\tfeed   now  ", "pending")
    ]
    assert live_steps(conn, tasks["long"])[0][2] == "x" * 20_000
    for status, step_status in [
        ("paused", "pending"),
        ("completed", "completed"),
        ("failed", "failed"),
        ("cancelled", "cancelled"),
    ]:
        assert live_steps(conn, tasks[status])[0][3] == step_status
    for untouched in ("empty", "whitespace", "unicode_blank", "oversized", "marker_missing"):
        assert live_steps(conn, tasks[untouched]) == []
    assert [s[2] for s in live_steps(conn, tasks["marker_present"])] == ["Do part 1", "Do part 2"]
    assert live_steps(conn, tasks["has_steps"]) == [
        (1, "Step 1", "Edited in the new UI", "pending")
    ]

    listed = {row["task_id"]: row["category"] for row in backfill.exceptions(bf, result.id)}
    assert listed == {
        tasks["empty"]: "blank_instructions",
        tasks["whitespace"]: "blank_instructions",
        tasks["unicode_blank"]: "blank_instructions",
        tasks["oversized"]: "oversized_instructions",
        tasks["marker_missing"]: "marker_without_steps",
    }


def test_dry_run_reports_the_same_categories_and_writes_nothing(
    conn: psycopg.Connection, bf: psycopg.Connection, every_category: dict[str, uuid.UUID]
) -> None:
    before = conn.execute(
        "select (select count(*) from public.task_steps),"
        " (select count(*) from stepsync.backfill_runs),"
        " (select max(xmin::text::bigint) from public.agent_tasks)"
    ).fetchone()

    plan = backfill.plan(bf, SMALL, samples=3)

    assert plan.tasks_scanned == 14
    assert {k: plan.counts.get(k, 0) for k in EXPECTED_COUNTS} == EXPECTED_COUNTS
    assert set(plan.samples["blank_instructions"]) == {
        every_category["empty"],
        every_category["whitespace"],
        every_category["unicode_blank"],
    }
    assert plan.samples["oversized_instructions"] == [every_category["oversized"]]
    assert plan.samples["marker_without_steps"] == [every_category["marker_missing"]]
    assert len(plan.samples["steps_created"]) == 3
    assert plan.needs_attention
    after = conn.execute(
        "select (select count(*) from public.task_steps),"
        " (select count(*) from stepsync.backfill_runs),"
        " (select max(xmin::text::bigint) from public.agent_tasks)"
    ).fetchone()
    assert after == before


def test_a_second_run_creates_nothing(
    conn: psycopg.Connection, bf: psycopg.Connection, owner
) -> None:
    generate_legacy_tasks(conn, *owner, 50)
    first = backfill_once(bf)
    steps_after_first = step_count(conn)
    second = backfill_once(bf)

    assert first.counts["steps_created"] == 50
    assert second.counts["steps_created"] == 0
    assert second.counts["already_has_steps"] == 50
    assert step_count(conn) == steps_after_first == 50
    assert not second.needs_attention


def test_a_batch_reads_the_steps_of_its_own_tasks_only(
    conn: psycopg.Connection, bf: psycopg.Connection, db_url: str, owner
) -> None:
    # Statistics taken while task_steps was nearly empty, as at the start of a backfill:
    # they once made the planner read every live step for each batch (a hashed subquery),
    # so the work per batch grew with the table.
    generate_legacy_tasks(conn, *owner, 20)
    backfill_once(bf)
    conn.execute("analyze public.task_steps")
    generate_legacy_tasks(conn, *owner, 2000)
    backfill_once(bf, backfill.Settings(batch_size=5000))
    assert step_count(conn) == 2020

    run_id = backfill.start_run(bf, backfill.Settings(batch_size=50))
    # A new session: its statistics counters hold this batch's reads and nothing earlier.
    with backfill.connect(db_url) as fresh, fresh.transaction():
        row = fresh.execute(
            "select * from stepsync.backfill_legacy_tasks_batch(%s, 50)", [run_id]
        ).fetchone()
        read = fresh.execute(
            "select coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) as n"
            " from pg_stat_xact_user_tables where relid = 'public.task_steps'::regclass"
        ).fetchone()["n"]
    assert row["tasks_scanned"] == 50
    assert row["steps_created"] == 0
    assert read <= 50  # one probe per task of the batch, each finding that task's step


def test_verify_passes_after_backfill_and_catches_tampering(
    conn: psycopg.Connection, bf: psycopg.Connection, owner
) -> None:
    generate_legacy_tasks(conn, *owner, 30)
    before = backfill.verify(bf, SMALL)
    assert before.eligible == 30 and before.verified == 0 and not before.ok

    backfill_once(bf)
    report = backfill.verify(bf, SMALL)
    assert report.ok
    assert report.eligible == report.verified == 30
    assert report.tasks_checksum == report.steps_checksum != 0

    changed, deleted, doubled = conn.execute(
        "select id from public.agent_tasks order by id limit 3"
    ).fetchall()
    with triggers_off(conn):
        # Behind the compatibility triggers' back, as corruption would.
        conn.execute(
            "update public.task_steps set instructions = instructions || '!' where task_id = %s",
            [changed[0]],
        )
        conn.execute(
            "update public.task_steps set deleted_at = now() where task_id = %s", [deleted[0]]
        )
        conn.execute(
            "insert into public.task_steps (task_id, step_order, step_name, instructions)"
            " values (%s, 2, 'Extra', 'More')",
            [doubled[0]],
        )

    tampered = backfill.verify(bf, SMALL)
    assert not tampered.ok
    assert tampered.verified == 27 and tampered.exception_count == 3
    assert tampered.tasks_checksum != tampered.steps_checksum
    problems = {e["task_id"]: e["problem"] for e in tampered.exceptions}
    assert problems == {
        changed[0]: "step 1 instructions differ from the task's",
        deleted[0]: "no live step",
        doubled[0]: "2 live steps, expected one",
    }


def test_rollback_removes_exactly_its_own_runs_steps(
    conn: psycopg.Connection, bf: psycopg.Connection, owner
) -> None:
    user_id, agent_id = owner
    generate_legacy_tasks(conn, user_id, agent_id, 20)
    first = backfill_once(bf)
    first_steps = {
        r[0]
        for r in conn.execute(
            "select step_id from stepsync.backfill_step_origin where backfill_run_id = %s",
            [first.id],
        )
    }
    # After the first run: a task from the legacy path (compat trigger gives it step 1), a
    # task whose owner built steps in the new UI, a legacy task only the second run finds,
    # and one of the first run's tasks that became multi-step.
    compat_task = make_task(conn, user_id, agent_id, instructions="Inserted by old code")
    user_task = make_task(conn, user_id, agent_id)
    replace_steps(conn, user_task, [{"instructions": "Mine 1"}, {"instructions": "Mine 2"}])
    late_task = legacy_task(conn, user_id, agent_id, instructions="Found by run two")
    grown_task = conn.execute(
        "select task_id from stepsync.backfill_step_origin where backfill_run_id = %s"
        " order by step_id limit 1",
        [first.id],
    ).fetchone()[0]
    conn.execute(
        "insert into public.task_steps (task_id, step_order, step_name, instructions)"
        " values (%s, 2, 'Added later', 'Then this')",
        [grown_task],
    )
    second = backfill_once(bf)
    assert second.counts["steps_created"] == 1

    report = backfill.rollback(bf, first.id, SMALL)

    assert (report.removed, report.kept) == (19, 1)
    assert report.needs_attention
    remaining = {r[0] for r in conn.execute("select id from public.task_steps")}
    assert remaining & first_steps == {
        conn.execute(
            "select id from public.task_steps where task_id = %s and step_order = 1",
            [grown_task],
        ).fetchone()[0]
    }
    assert live_steps(conn, compat_task) == [(1, "Task", "Inserted by old code", "pending")]
    assert [s[2] for s in live_steps(conn, user_task)] == ["Mine 1", "Mine 2"]
    assert [s[2] for s in live_steps(conn, late_task)] == ["Found by run two"]
    assert len(live_steps(conn, grown_task)) == 2
    assert backfill.get_run(bf, first.id).status == "rolled_back"
    assert backfill.get_run(bf, first.id).rolled_back_steps == 19
    # The legacy text is intact, so the tasks are back in their legacy state.
    rolled = conn.execute(
        "select count(*) from public.agent_tasks as t where not exists"
        " (select from public.task_steps as s where s.task_id = t.id)"
    ).fetchone()[0]
    assert rolled == 19


def test_rollback_of_an_unknown_run_is_refused(bf: psycopg.Connection) -> None:
    with pytest.raises(backfill.BackfillError, match="no backfill run"):
        backfill.rollback(bf, uuid.uuid4(), SMALL)


def test_each_batch_tags_its_audit_rows_and_sets_timeouts(
    conn: psycopg.Connection, bf: psycopg.Connection, owner
) -> None:
    """The audit trigger reads stepsync.audit_tag; a probe trigger records what a step
    insert sees in the batch transaction, with the transaction's timeouts."""
    generate_legacy_tasks(conn, *owner, 10)
    conn.execute(
        """
        create table public.probe (tag text, lock_timeout text, statement_timeout text);
        create function public.probe() returns trigger language plpgsql as $$
        begin
            insert into public.probe values (current_setting('stepsync.audit_tag', true),
                current_setting('lock_timeout'), current_setting('statement_timeout'));
            return null;
        end $$;
        create trigger probe after insert on public.task_steps
        for each statement execute function public.probe();
        """
    )
    settings = backfill.Settings(batch_size=4, lock_timeout_ms=1234, statement_timeout_ms=56789)
    result = backfill_once(bf, settings)

    rows = conn.execute("select * from public.probe").fetchall()
    assert len(rows) == 3
    assert set(rows) == {(str(result.id), "1234ms", "56789ms")}
    # Outside the batches the session keeps its own settings.
    assert bf.execute("select current_setting('lock_timeout') as v").fetchone()["v"] == "0"


def test_a_batch_blocked_by_a_lock_gives_up_cleanly_and_resumes(
    conn: psycopg.Connection, db_url: str, bf: psycopg.Connection, owner
) -> None:
    generate_legacy_tasks(conn, *owner, 20)
    blocked = conn.execute("select id from public.agent_tasks order by id offset 10 limit 1")
    blocked_id = blocked.fetchone()[0]
    settings = backfill.Settings(batch_size=5, lock_timeout_ms=50, attempts=2)
    run_id = backfill.start_run(bf, settings)
    with psycopg.connect(db_url) as holder:
        holder.execute("select from public.agent_tasks where id = %s for update", [blocked_id])
        with pytest.raises(backfill.BackfillError, match="lock timeout"):
            backfill.run(bf, run_id, settings)
        stuck = backfill.get_run(bf, run_id)
        assert stuck.status == "running" and stuck.tasks_scanned == 10
        assert live_steps(conn, blocked_id) == []
    # Resumed with smaller batches: the 10 tasks left go in batches of 3, 3, 3 and 1.
    resumed = backfill.run(bf, run_id, backfill.Settings(batch_size=3))
    assert resumed.status == "completed" and resumed.counts["steps_created"] == 20
    assert resumed.batches == 2 + 4
    assert backfill.verify(bf, SMALL).ok


def test_a_second_backfill_process_is_refused(db_url: str, bf: psycopg.Connection) -> None:
    backfill.take_lock(bf)
    with backfill.connect(db_url) as other, pytest.raises(backfill.BackfillError, match="another"):
        backfill.take_lock(other)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("batch_size", 0, "batch size must be between 1 and 100000"),
        ("batch_size", 100_001, "batch size must be between 1 and 100000"),
        ("pause_seconds", -1, "pause must be 0 or more"),
        ("lock_timeout_ms", 0, "lock_timeout_ms must be at least 1"),
    ],
)
def test_bad_settings_are_refused(field: str, value: float, message: str) -> None:
    with pytest.raises(backfill.BackfillError, match=message):
        backfill.Settings(**{field: value})


def test_service_only_objects_are_closed_to_api_roles(conn: psycopg.Connection) -> None:
    functions = conn.execute(
        "select p.oid::regprocedure::text from pg_proc as p"
        " where p.pronamespace = 'stepsync'::regnamespace"
        " and (p.proname like 'backfill%' or p.proname like '%compat%'"
        " or p.proname in ('sync_task_instructions', 'create_legacy_step'))"
    ).fetchall()
    assert len(functions) >= 10
    for (signature,) in functions:
        for role in ("anon", "authenticated"):
            assert not conn.execute(
                "select has_function_privilege(%s, %s, 'execute')", [role, signature]
            ).fetchone()[0], (role, signature)
        config = conn.execute(
            "select proconfig from pg_proc where oid = %s::regprocedure", [signature]
        ).fetchone()[0]
        assert config == ['search_path=""'], signature
    for table in ("backfill_runs", "backfill_step_origin", "backfill_exceptions"):
        assert conn.execute(
            "select relrowsecurity from pg_class where oid = %s::regclass", [f"stepsync.{table}"]
        ).fetchone()[0]
        for role in ("anon", "authenticated"):
            assert not conn.execute(
                "select has_table_privilege(%s, %s, 'select')", [role, f"stepsync.{table}"]
            ).fetchone()[0]


def test_unnamed_task_gets_the_same_step_from_trigger_and_backfill(
    conn: psycopg.Connection, bf: psycopg.Connection, owner
) -> None:
    user_id, agent_id = owner
    text = "\n  Collect   the weekly\tnumbers and mail them to finance " + "y" * 100
    by_backfill = legacy_task(conn, user_id, agent_id, name="", instructions=text)
    backfill_once(bf)
    by_trigger = make_task(conn, user_id, agent_id, name="", instructions=text)
    assert live_steps(conn, by_trigger) == live_steps(conn, by_backfill)
    name = live_steps(conn, by_trigger)[0][1]
    assert name.startswith("Collect the weekly numbers") and len(name) == 80
    assert task_instructions(conn, by_trigger) == text
