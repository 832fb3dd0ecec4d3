"""stepsync takes over from the legacy task-executor user by user: with the executor still
deployed and unchanged (tests/legacy_executor.py runs its statements), no fire time runs
twice or goes missing, whoever holds the task, and every finished run counts once."""

from __future__ import annotations

import random
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.legacy_executor import scheduled_pass
from tests.schedule_support import finish_runs, fire, fires_of, runs_of, scheduled_task, task_row
from tests.support import acting_as, make_agent, make_user

T0 = datetime(2025, 6, 2, 9, tzinfo=UTC)


def deny(conn: psycopg.Connection, *users: uuid.UUID) -> None:
    """Take users out of the rollout (the flag is on for 100% by default)."""
    conn.execute("select stepsync.deny_flag_users('multi_step_workflows', %s)", [list(users)])


def readmit(conn: psycopg.Connection, *users: uuid.UUID) -> None:
    conn.execute(
        "select stepsync.remove_flag_users('multi_step_workflows', 'deny', %s)", [list(users)]
    )


def owner_with_tasks(conn: psycopg.Connection, count: int, **task: object) -> tuple:
    user = make_user(conn)
    agent = make_agent(conn, user)
    return user, [scheduled_task(conn, user, agent, name=f"Task {i}", **task) for i in range(count)]


def fire_times(conn: psycopg.Connection, task_id: uuid.UUID, legacy: dict) -> list[datetime]:
    """Every fire time the task ran: stepsync's from its runs' trigger data, the legacy
    executor's from what its passes read (``legacy``: run id → fire time)."""
    times = []
    for run in runs_of(conn, task_id):
        if run["step_count"] > 0:
            times.append(datetime.fromisoformat(run["trigger_data"]["fire_at"]))
        else:
            times.append(legacy[run["id"]])
    return sorted(times)


def test_the_legacy_executor_cannot_start_a_task_stepsync_runs(conn: psycopg.Connection) -> None:
    _user, [task] = owner_with_tasks(conn, 1, cron="* * * * *", next_run_at=T0)
    done = scheduled_pass(conn, T0 + timedelta(seconds=1))
    assert done.ran == {}
    assert "is run by stepsync" in done.errors[task]
    assert runs_of(conn, task) == []
    # Its counters and next run are untouched: stepsync fires it.
    assert task_row(conn, task)["next_run_at"] == T0
    assert [d.outcome for d in fire(conn.info.dsn, T0 + timedelta(seconds=2)).decisions] == [
        "started"
    ]


def test_a_stale_legacy_read_cannot_run_a_fire_time_taken_since(conn: psycopg.Connection) -> None:
    """The executor read the task due, stepsync fired it, then the owner left the rollout:
    the executor's insert finds the task no longer due by its own clock and is refused."""
    user, [task] = owner_with_tasks(conn, 1, cron="* * * * *", next_run_at=T0)
    fire(conn.info.dsn, T0 + timedelta(seconds=1))
    deny(conn, user)
    with (
        pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as refused,
        acting_as(conn, "service_role"),
    ):
        conn.execute(
            "insert into public.agent_task_executions (task_id, agent_id, status,"
            " trigger_type, instructions_used, started_at)"
            " select id, agent_id, 'running', 'scheduled', instructions, %s"
            " from public.agent_tasks where id = %s",
            [T0 + timedelta(seconds=2), task],
        )
    assert "its fire time was taken since it was read" in refused.value.diag.message_primary
    assert len(runs_of(conn, task)) == 1


def test_stepsync_does_not_rerun_a_fire_time_the_legacy_executor_ran(
    conn: psycopg.Connection,
) -> None:
    """The executor ran 09:00 for a user outside the rollout; the user joins before it
    wrote next_run_at back: stepsync does not run 09:00 again, whether that run is still
    going (skipped, the run in progress) or over (already run)."""
    user, (going, over) = owner_with_tasks(conn, 2, cron="* * * * *", next_run_at=T0)
    deny(conn, user)
    for task, status in ((going, "running"), (over, "completed")):
        conn.execute(
            "insert into public.agent_task_executions (task_id, agent_id, status,"
            " trigger_type, instructions_used, started_at) select id, agent_id, 'running',"
            " 'scheduled', instructions, %s from public.agent_tasks where id = %s",
            [T0 + timedelta(seconds=1), task],
        )
        conn.execute(
            "update public.agent_task_executions set status = %s where task_id = %s",
            [status, task],
        )
    readmit(conn, user)
    decided = {d.task_id: d for d in fire(conn.info.dsn, T0 + timedelta(seconds=2)).decisions}
    [legacy_going], [legacy_over] = runs_of(conn, going), runs_of(conn, over)
    assert decided[going].outcome == "skipped"
    assert decided[going].detail == f"previous run {legacy_going['id']} still running"
    assert (decided[over].outcome, decided[over].run_id) == ("already_run", legacy_over["id"])
    for task in (going, over):
        assert len(runs_of(conn, task)) == 1
        assert task_row(conn, task)["next_run_at"] == T0 + timedelta(minutes=1)


def test_handing_a_user_back_and_forth_misses_and_doubles_no_fire_time(
    conn: psycopg.Connection,
) -> None:
    user, tasks = owner_with_tasks(conn, 3, cron="*/10 * * * *", next_run_at=T0)
    legacy_runs: dict[uuid.UUID, datetime] = {}
    holder = ["stepsync", "stepsync", "legacy", "legacy", "stepsync", "legacy", "stepsync"]
    for minute, who in enumerate(holder):
        if who == "legacy":
            deny(conn, user)
        else:
            readmit(conn, user)
        now = T0 + timedelta(minutes=10 * minute, seconds=1)
        # Both run at every fire time; only the holder may start anything.
        done = scheduled_pass(conn, now)
        decided = fire(conn.info.dsn, now).decisions
        finish_runs(conn)
        legacy_runs.update(done.ran)
        assert (len(done.ran), len(decided)) == ((3, 0) if who == "legacy" else (0, 3))
        # The app shows the next fire time whoever holds the task.
        assert {task_row(conn, t)["next_run_at"] for t in tasks} == {
            T0 + timedelta(minutes=10 * (minute + 1))
        }
    expected = [T0 + timedelta(minutes=10 * m) for m in range(len(holder))]
    for task in tasks:
        assert fire_times(conn, task, legacy_runs) == expected
        row = task_row(conn, task)
        assert (row["total_executions"], row["successful_executions"]) == (7, 7)


@pytest.mark.slow
def test_the_legacy_executor_running_beside_the_service_never_doubles_a_fire_time(
    conn: psycopg.Connection, db_url: str
) -> None:
    """Each minute the legacy executor's pass, two stepsync schedulers and a flag change
    run at once; one user stays in the rollout, one out, one is switched back and forth in
    the middle of it all. No fire time runs twice, the users not switched lose none, and
    every task's counters equal its finished runs."""
    _inside, inside_tasks = owner_with_tasks(conn, 5, cron="* * * * *", next_run_at=T0)
    outside, outside_tasks = owner_with_tasks(conn, 5, cron="* * * * *", next_run_at=T0)
    switched, switched_tasks = owner_with_tasks(conn, 5, cron="* * * * *", next_run_at=T0)
    deny(conn, outside)
    rng = random.Random(7)
    legacy_runs: dict[uuid.UUID, datetime] = {}
    rounds = 8
    for minute in range(rounds):
        now = T0 + timedelta(minutes=minute, seconds=1)
        start = threading.Barrier(4)
        passes = []

        def legacy(
            now: datetime = now, start: threading.Barrier = start, passes: list = passes
        ) -> None:
            with psycopg.connect(db_url, autocommit=True) as legacy_conn:
                start.wait()
                passes.append(scheduled_pass(legacy_conn, now, chat_seconds=rng.random() / 100))

        def stepsync(worker: str, now: datetime = now, start: threading.Barrier = start) -> None:
            start.wait()
            fire(db_url, now, worker=worker, batch=2)

        def switch(minute: int = minute, start: threading.Barrier = start) -> None:
            with psycopg.connect(db_url, autocommit=True) as flag_conn:
                start.wait()
                threading.Event().wait(rng.random() / 20)
                (deny if minute % 2 == 0 else readmit)(flag_conn, switched)

        threads = [
            threading.Thread(target=legacy),
            threading.Thread(target=stepsync, args=("w1",)),
            threading.Thread(target=stepsync, args=("w2",)),
            threading.Thread(target=switch),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        finish_runs(conn)
        legacy_runs.update(passes[0].ran)

    every_minute = [T0 + timedelta(minutes=m) for m in range(rounds)]
    for task in inside_tasks + outside_tasks:
        assert fire_times(conn, task, legacy_runs) == every_minute
    for task in switched_tasks:
        times = fire_times(conn, task, legacy_runs)
        assert len(times) == len(set(times)), f"a fire time ran twice: {times}"
        # A switch can hand a fire time over late (the legacy executor runs it at its next
        # pass, as it runs any overdue task once); none is lost beyond that.
        assert len(times) >= rounds - rounds // 2
    for task in inside_tasks + outside_tasks + switched_tasks:
        row = task_row(conn, task)
        finished = Counter(r["status"] for r in runs_of(conn, task))
        assert row["total_executions"] == finished["completed"] + finished["failed"]
        assert row["successful_executions"] == finished["completed"]
    # Only inside tasks and switched tasks were ever fired by stepsync.
    assert {f["task_id"] for t in outside_tasks for f in fires_of(conn, t)} == set()


def test_each_finished_run_counts_once_whoever_started_it(conn: psycopg.Connection) -> None:
    user, [task] = owner_with_tasks(conn, 1, cron="* * * * *", next_run_at=T0)
    deny(conn, user)
    with acting_as(conn, "service_role"), conn.cursor(row_factory=dict_row) as cur:
        read = cur.execute("select * from public.agent_tasks where id = %s", [task]).fetchone()
    # A legacy run finishes: counted once, when it is marked completed.
    scheduled_pass(conn, T0 + timedelta(seconds=1))
    assert task_row(conn, task)["total_executions"] == 1
    # A stepsync run of the same task (started by hand) finishes: counted once more.
    readmit(conn, user)
    with acting_as(conn, "service_role"):
        conn.execute("select public.start_task_run(%s)", [task])
    finish_runs(conn)
    assert task_row(conn, task)["total_executions"] == 2
    # The legacy executor writes back counters read before both: nothing is taken away.
    with acting_as(conn, "service_role"):
        conn.execute(
            "update public.agent_tasks set total_executions = %s, successful_executions = %s,"
            " last_run_at = %s where id = %s",
            [read["total_executions"] + 1, read["successful_executions"] + 1, T0, task],
        )
    row = task_row(conn, task)
    assert (row["total_executions"], row["successful_executions"]) == (2, 2)
    assert row["last_run_at"] > T0
    # A cancelled run counts nowhere; an owner may still reset their counters.
    with acting_as(conn, "service_role"):
        run = conn.execute("select public.start_task_run(%s)", [task]).fetchone()[0]
        conn.execute("select public.cancel_task_run(%s)", [run])
    assert task_row(conn, task)["total_executions"] == 2
    with acting_as(conn, "authenticated", user):
        conn.execute("update public.agent_tasks set total_executions = 0 where id = %s", [task])
    assert task_row(conn, task)["total_executions"] == 0
