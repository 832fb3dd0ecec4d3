"""Scheduled tasks: the service starts their runs at their fire times, under a clock the
tests set (no waiting for a minute boundary), with the legacy executor's rules."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import psycopg
import pytest
from cronsim import CronSim, CronSimError

from sync.db import Database
from sync.metrics import Metrics
from sync.scheduler import Scheduler
from tests.schedule_support import (
    finish_runs,
    fire,
    fires_of,
    runs_of,
    scheduled_task,
    task_row,
)
from tests.support import acting_as, make_agent, make_user, triggers_off

PARIS = ZoneInfo("Europe/Paris")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.fixture
def owner(conn: psycopg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    user = make_user(conn)
    return user, make_agent(conn, user)


def follow(conn: psycopg.Connection, db_url: str, task_id: uuid.UUID, times: int) -> list[dict]:
    """Let the task fire ``times`` times, each at its recorded next fire time, its run
    finishing in between; the runs' trigger data in order."""
    fired = []
    for _ in range(times):
        now = task_row(conn, task_id)["next_run_at"]
        result = fire(db_url, now)
        assert [d.outcome for d in result.decisions] == ["started"], result
        fired.append(runs_of(conn, task_id)[-1]["trigger_data"])
        finish_runs(conn)
    return fired


# --- daylight saving time --------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        # Spring forward in Paris: 2025-03-30 02:00 CET becomes 03:00 CEST.
        (utc(2025, 3, 29, 8), ["09:00+01:00", "09:00+02:00", "09:00+02:00"]),
        # Fall back: 2025-10-26 03:00 CEST becomes 02:00 CET.
        (utc(2025, 10, 25, 7), ["09:00+02:00", "09:00+01:00", "09:00+01:00"]),
    ],
)
def test_a_daily_task_fires_at_its_local_time_on_both_sides_of_a_change(
    conn: psycopg.Connection, db_url: str, owner: tuple, first: datetime, expected: list[str]
) -> None:
    task = scheduled_task(
        conn, *owner, cron="0 9 * * *", timezone="Europe/Paris", next_run_at=first
    )
    fired = follow(conn, db_url, task, 3)
    assert [d["fire_at_local"][11:] for d in fired] == [f"{t[:5]}:00{t[5:]}" for t in expected]
    # One day apart in local time, 23 or 25 hours apart in UTC across the change.
    moments = [datetime.fromisoformat(d["fire_at"]) for d in fired]
    assert {(b - a) for a, b in itertools.pairwise(moments)} <= {
        timedelta(hours=23),
        timedelta(hours=24),
        timedelta(hours=25),
    }
    assert len(runs_of(conn, task)) == 3


def test_a_time_that_does_not_exist_that_day_fires_once(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    # 02:30 does not exist in Paris on 2025-03-30: the task fires once, right after the gap.
    task = scheduled_task(
        conn,
        *owner,
        cron="30 2 * * *",
        timezone="Europe/Paris",
        next_run_at=utc(2025, 3, 29, 1, 30),
    )
    fired = follow(conn, db_url, task, 3)
    assert [d["fire_at_local"] for d in fired] == [
        "2025-03-29T02:30:00+01:00",
        "2025-03-30T03:00:00+02:00",
        "2025-03-31T02:30:00+02:00",
    ]


def test_a_time_that_exists_twice_that_day_fires_once(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    # 02:30 comes twice in Paris on 2025-10-26 (CEST, then CET): the task fires at the first.
    task = scheduled_task(
        conn,
        *owner,
        cron="30 2 * * *",
        timezone="Europe/Paris",
        next_run_at=utc(2025, 10, 25, 0, 30),
    )
    fired = follow(conn, db_url, task, 3)
    assert [d["fire_at_local"] for d in fired] == [
        "2025-10-25T02:30:00+02:00",
        "2025-10-26T02:30:00+02:00",
        "2025-10-27T02:30:00+01:00",
    ]
    # Ticking through the repeated hour starts nothing more.
    for minutes in (30, 60, 61, 90):
        assert fire(db_url, utc(2025, 10, 26, 0, 30) + timedelta(minutes=minutes)).decisions == []
    assert len(runs_of(conn, task)) == 3


def test_every_half_hour_follows_the_real_clock_through_the_repeated_hour(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    task = scheduled_task(
        conn, *owner, cron="*/30 * * * *", timezone="Europe/Paris", next_run_at=utc(2025, 10, 26, 0)
    )
    fired = follow(conn, db_url, task, 4)
    assert [d["fire_at"] for d in fired] == [
        "2025-10-26T00:00:00+00:00",
        "2025-10-26T00:30:00+00:00",
        "2025-10-26T01:00:00+00:00",
        "2025-10-26T01:30:00+00:00",
    ]
    assert [d["fire_at_local"][11:] for d in fired] == [
        "02:00:00+02:00",
        "02:30:00+02:00",
        "02:00:00+01:00",
        "02:30:00+01:00",
    ]


# --- the legacy rules ------------------------------------------------------------------


def test_max_executions_completes_the_task_when_it_next_comes_due(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    start = utc(2025, 6, 2, 9)
    task = scheduled_task(conn, *owner, cron="0 9 * * *", next_run_at=start, max_executions=2)
    follow(conn, db_url, task, 2)
    row = task_row(conn, task)
    assert (row["total_executions"], row["successful_executions"], row["status"]) == (
        2,
        2,
        "active",
    )
    result = fire(db_url, row["next_run_at"])
    assert [(d.outcome, d.detail) for d in result.decisions] == [
        ("completed", "max_executions (2) reached")
    ]
    assert task_row(conn, task)["status"] == "completed"
    assert len(runs_of(conn, task)) == 2
    # Completed, it is never due again.
    assert fire(db_url, start + timedelta(days=30)).decisions == []


def test_an_end_date_passed_completes_the_task_without_a_run(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    task = scheduled_task(conn, *owner, next_run_at=utc(2025, 6, 2, 9), end_date=utc(2025, 6, 2, 8))
    result = fire(db_url, utc(2025, 6, 2, 9, 0, 5))
    assert [d.outcome for d in result.decisions] == ["completed"]
    assert "end_date" in result.decisions[0].detail
    assert task_row(conn, task)["status"] == "completed"
    assert runs_of(conn, task) == []


def test_a_paused_task_does_not_fire_and_fires_once_when_resumed(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    task = scheduled_task(
        conn, *owner, cron="0 * * * *", next_run_at=utc(2025, 6, 2, 9), status="paused"
    )
    assert fire(db_url, utc(2025, 6, 2, 12)).decisions == []
    assert runs_of(conn, task) == []
    conn.execute("update public.agent_tasks set status = 'active' where id = %s", [task])
    result = fire(db_url, utc(2025, 6, 2, 12, 0, 30))
    assert [d.outcome for d in result.decisions] == ["started"]
    assert len(runs_of(conn, task)) == 1


def test_fire_times_before_start_date_do_not_run(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    task = scheduled_task(
        conn,
        *owner,
        cron="0 9 * * *",
        next_run_at=utc(2025, 6, 1, 9),
        start_date=utc(2025, 6, 4, 12),
    )
    assert fire(db_url, utc(2025, 6, 2, 9, 1)).decisions == []
    assert task_row(conn, task)["next_run_at"] == utc(2025, 6, 5, 9)
    assert runs_of(conn, task) == []


def test_downtime_starts_one_run_that_says_how_many_fire_times_were_missed(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    task = scheduled_task(conn, *owner, cron="*/5 * * * *", next_run_at=utc(2025, 6, 2, 9))
    # The service was down from 09:00 to 10:02: 13 fire times passed (09:00 ... 10:00).
    result = fire(db_url, utc(2025, 6, 2, 10, 2))
    assert [(d.outcome, d.fire_at) for d in result.decisions] == [("started", utc(2025, 6, 2, 10))]
    [run] = runs_of(conn, task)
    assert run["trigger_type"] == "scheduled"
    assert run["trigger_data"]["fire_at"] == "2025-06-02T10:00:00+00:00"
    assert run["trigger_data"]["missed_fire_times"] == 12
    assert run["trigger_data"]["first_missed_at"] == "2025-06-02T09:00:00+00:00"
    assert fires_of(conn, task)[0]["missed_fire_times"] == 12
    assert task_row(conn, task)["next_run_at"] == utc(2025, 6, 2, 10, 5)


def test_a_fire_time_while_the_previous_run_is_still_running_is_skipped_and_recorded(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    task = scheduled_task(conn, *owner, cron="* * * * *", next_run_at=utc(2025, 6, 2, 9))
    assert [d.outcome for d in fire(db_url, utc(2025, 6, 2, 9)).decisions] == ["started"]
    [running] = runs_of(conn, task)
    skipped = fire(db_url, utc(2025, 6, 2, 9, 1)).decisions
    assert [(d.outcome, d.fire_at) for d in skipped] == [("skipped", utc(2025, 6, 2, 9, 1))]
    assert skipped[0].detail == f"previous run {running['id']} still running"
    assert len(runs_of(conn, task)) == 1
    assert task_row(conn, task)["next_run_at"] == utc(2025, 6, 2, 9, 2)
    finish_runs(conn)
    assert [d.outcome for d in fire(db_url, utc(2025, 6, 2, 9, 2)).decisions] == ["started"]
    assert [f["outcome"] for f in fires_of(conn, task)] == ["started", "skipped", "started"]


def test_a_task_without_a_next_fire_time_gets_one(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    task = scheduled_task(conn, *owner, cron="30 8 * * 1-5", timezone="America/New_York")
    # Friday 2025-06-06 13:00 UTC is 09:00 in New York: the next weekday 08:30 is Monday's.
    result = fire(db_url, utc(2025, 6, 6, 13))
    assert result.decisions == [] and result.advanced == 1
    assert task_row(conn, task)["next_run_at"] == utc(2025, 6, 9, 12, 30)


def test_tasks_of_users_outside_the_rollout_are_left_to_the_legacy_executor(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    outside = make_user(conn)
    theirs = scheduled_task(
        conn, outside, make_agent(conn, outside), next_run_at=utc(2025, 6, 2, 9)
    )
    ours = scheduled_task(conn, *owner, next_run_at=utc(2025, 6, 2, 9))
    conn.execute("select stepsync.deny_flag_users('multi_step_workflows', %s)", [[outside]])
    result = fire(db_url, utc(2025, 6, 2, 9, 1))
    assert [d.task_id for d in result.decisions] == [ours]
    assert runs_of(conn, theirs) == [] and task_row(conn, theirs)["next_run_at"] == utc(
        2025, 6, 2, 9
    )


def test_a_task_whose_steps_are_invalid_is_refused_and_moves_on(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    task = scheduled_task(conn, *owner, next_run_at=utc(2025, 6, 2, 9))
    stranger = make_user(conn)
    with triggers_off(conn):  # a step that names someone else's agent (as older data may)
        conn.execute(
            "update public.task_steps set agent_id = %s where task_id = %s",
            [make_agent(conn, stranger), task],
        )
    result = fire(db_url, utc(2025, 6, 2, 9))
    assert [d.outcome for d in result.decisions] == ["refused"]
    assert "invalid steps" in result.decisions[0].detail
    assert runs_of(conn, task) == []
    assert task_row(conn, task)["next_run_at"] == utc(2025, 6, 3, 9)


def test_owners_read_their_own_fire_times_only(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    task = scheduled_task(conn, *owner, next_run_at=utc(2025, 6, 2, 9))
    fire(db_url, utc(2025, 6, 2, 9))
    stranger = make_user(conn)
    query = "select task_id from public.task_schedule_fires"
    with acting_as(conn, "authenticated", owner[0]):
        assert conn.execute(query).fetchall() == [(task,)]
    with acting_as(conn, "authenticated", stranger):
        assert conn.execute(query).fetchall() == []
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        acting_as(conn, "authenticated", owner[0]),
    ):
        conn.execute("delete from public.task_schedule_fires")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), acting_as(conn, "anon"):
        conn.execute(query)


# --- many workers ----------------------------------------------------------------------


@pytest.mark.slow
def test_eight_workers_racing_on_a_thousand_due_tasks_start_exactly_a_thousand_runs(
    conn: psycopg.Connection, db_url: str
) -> None:
    due = utc(2025, 6, 2, 9)
    users = [make_user(conn) for _ in range(10)]
    agents = [make_agent(conn, user) for user in users]
    conn.execute(
        "insert into public.agent_tasks (agent_id, user_id, name, instructions, task_type,"
        " cron_expression, timezone, next_run_at)"
        " select (%(agents)s::uuid[])[1 + n %% 10], (%(users)s::uuid[])[1 + n %% 10],"
        " 'Task ' || n, 'Do ' || n, 'scheduled', '0 9 * * *', 'UTC', %(due)s"
        " from generate_series(1, 1000) as n",
        {"agents": agents, "users": users, "due": due},
    )

    async def race() -> list:
        pools = [Database(db_url, size=2) for _ in range(8)]
        await asyncio.gather(*(pool.open() for pool in pools))
        try:
            schedulers = [
                Scheduler(pool, 1.0, batch_size=50, worker=f"w{i}", metrics=Metrics())
                for i, pool in enumerate(pools)
            ]
            # Everyone at the due minute, then everyone again a few seconds later.
            first = await asyncio.gather(
                *(s.tick(now=due + timedelta(seconds=i)) for i, s in enumerate(schedulers))
            )
            again = await asyncio.gather(
                *(s.tick(now=due + timedelta(seconds=30)) for s in schedulers)
            )
            return first + again
        finally:
            await asyncio.gather(*(pool.close() for pool in pools))

    results = asyncio.run(race())
    decided = [d for result in results for d in result.decisions]
    assert len(decided) == 1000
    assert {d.outcome for d in decided} == {"started"}
    assert len({d.task_id for d in decided}) == 1000
    # Every worker took part (SKIP LOCKED shares the work), none fired a task twice.
    assert sum(1 for result in results[:8] if result.decisions) >= 2
    per_task = conn.execute(
        "select count(r.id), count(distinct r.task_id) from public.agent_task_executions as r"
    ).fetchone()
    assert per_task == (1000, 1000)
    assert conn.execute(
        "select count(*), count(*) filter (where next_run_at = %s) from public.agent_tasks"
        " where task_type = 'scheduled' and cron_expression is not null",
        [utc(2025, 6, 3, 9)],
    ).fetchone() == (1000, 1000)
    assert conn.execute("select count(*) from public.task_schedule_fires").fetchone()[0] == 1000


# --- validation on write ----------------------------------------------------------------


BAD_CRONS = {
    "0 9 * *": "has 4 fields, not 5",
    "0 9 * * * *": "has 6 fields, not 5",
    "61 * * * *": "minute: '61' is not a value (0-59)",
    "0 24 * * *": "hour: '24' is not a value (0-23)",
    "0 9 31 2 *": "day of month: day 31 never comes in month(s) 2",
    "0 9 * * FRI-MON": "day of week: the range 'FRI-MON' runs backwards",
    "*/0 * * * *": "minute: the step in '*/0' must be a whole number from 1",
    "0 9 ? * *": "day of month: '?' is not a value (1-31)",
    "every day": "has 2 fields, not 5",
}


@pytest.mark.parametrize(("expression", "problem"), BAD_CRONS.items())
def test_a_bad_cron_expression_is_refused_on_write_with_the_field_named(
    conn: psycopg.Connection, owner: tuple, expression: str, problem: str
) -> None:
    user, agent = owner
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue) as refused,
        acting_as(conn, "authenticated", user),
    ):
        scheduled_task(conn, user, agent, cron=expression)
    assert f"cron_expression '{expression}' {problem}" in refused.value.diag.message_primary
    assert "minute hour day-of-month month day-of-week" in refused.value.diag.message_hint
    assert conn.execute("select count(*) from public.agent_tasks").fetchone()[0] == 0


@pytest.mark.parametrize("zone", ["PST", "UTC+5", "Europe/Pariss", "europe/paris", ""])
def test_a_bad_time_zone_is_refused_on_write(
    conn: psycopg.Connection, owner: tuple, zone: str
) -> None:
    user, agent = owner
    task = scheduled_task(conn, user, agent, timezone="Europe/Paris")
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue) as refused,
        acting_as(conn, "authenticated", user),
    ):
        conn.execute("update public.agent_tasks set timezone = %s where id = %s", [zone, task])
    assert refused.value.diag.message_primary.startswith(f"timezone: unknown time zone '{zone}'")
    assert task_row(conn, task)["timezone"] == "Europe/Paris"


def test_valid_schedules_are_accepted_and_other_updates_are_not_checked(
    conn: psycopg.Connection, owner: tuple
) -> None:
    user, agent = owner
    with acting_as(conn, "authenticated", user):
        task = scheduled_task(
            conn, user, agent, cron="30 8 * * mon-fri # weekday mornings", timezone="Asia/Kolkata"
        )
    # A row older than the checks can still be updated in other columns.
    with conn.transaction():
        conn.execute("set local session_replication_role = replica")
        conn.execute("update public.agent_tasks set cron_expression = 'L' where id = %s", [task])
    with acting_as(conn, "authenticated", user):
        conn.execute("update public.agent_tasks set name = 'Renamed' where id = %s", [task])
    # Event tasks have no schedule to check.
    conn.execute(
        "insert into public.agent_tasks (agent_id, user_id, name, instructions, task_type,"
        " cron_expression, timezone) values (%s, %s, 'e', 'x', 'event_based', 'nonsense', 'Nowhere')",
        [agent, user],
    )


def _cronsim_accepts(expression: str) -> bool:
    body = re.sub(r"\s#(?:\s.*)?\Z", "", expression, flags=re.S).strip()
    if len(body.split()) != 5:
        return False
    try:
        CronSim(body, datetime(2025, 1, 1, tzinfo=UTC))
    except CronSimError:
        return False
    return True


def test_the_database_accepts_exactly_the_expressions_the_scheduler_can_compute(
    conn: psycopg.Connection,
) -> None:
    """stepsync.cron_problem against cronsim on random expressions (without the L, W and
    # extensions, which the app never writes and the database refuses)."""
    rng = random.Random(14)
    fields = [
        ["*", "0", "59", "*/15", "5/10", "1-30/7", "0,30", "2-59/60"],
        ["*", "0", "9", "23", "*/2", "8-18", "9,17"],
        ["*", "1", "15", "29", "30", "31", "*/2", "1-7", "30-31", "L"],
        ["*", "1", "2", "4", "*/3", "jan", "FEB", "Mar-May", "2,4", "4,6,9,11"],
        ["*", "0", "7", "mon", "MON-FRI", "SUN-SAT", "0-7", "*/2", "1,3,5", "5L", "1#2"],
    ]
    junk = [
        "60",
        "24",
        "0",
        "32",
        "13",
        "8",
        "5-1",
        "fri-mon",
        "*/0",
        "?",
        "a",
        "",
        "-",
        "1-",
        "1,",
        ",1",
        "01",
        "+1",
        "1.5",
        "7-1",
        "MONDAY",
        "*-5",
        "1/x",
    ]

    def expression() -> str:
        parts = [
            rng.choice(junk) if rng.random() < 0.15 else rng.choice(choices) for choices in fields
        ]
        if rng.random() < 0.05:
            parts.append("*")
        if rng.random() < 0.05:
            parts.append("# a note")
        return " ".join(parts)

    # cronsim's extensions (L, W, #) are left out: the database refuses them on purpose.
    expressions = [e for e in (expression() for _ in range(4000)) if not re.search(r"L|#\d", e)]
    verdicts = conn.execute(
        "select e, stepsync.cron_problem(e) is null from unnest(%s::text[]) as e", [expressions]
    ).fetchall()
    disagreements = [(e, ok) for e, ok in verdicts if ok != _cronsim_accepts(e)]
    assert disagreements == []
    accepted = sum(ok for _, ok in verdicts)
    assert 0.2 < accepted / len(verdicts) < 0.8  # both kinds well represented


def test_every_time_zone_the_database_accepts_is_one_the_scheduler_reads(
    conn: psycopg.Connection,
) -> None:
    names = [
        row[0]
        for row in conn.execute(
            "select name from pg_timezone_names where stepsync.time_zone_problem(name) is null"
        ).fetchall()
    ]
    assert len(names) > 300
    unreadable = []
    for name in names:
        try:
            ZoneInfo(name)
        except Exception:
            unreadable.append(name)
    assert unreadable == []


def test_stepsync_schedules_lists_upcoming_fire_times_in_local_and_utc_time(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    from typer.testing import CliRunner

    from sync.cli import app

    task = scheduled_task(
        conn,
        *owner,
        cron="0 9 * * *",
        timezone="Europe/Paris",
        next_run_at=utc(2025, 10, 25, 7),
        name="Digest",
    )
    outside = make_user(conn)
    scheduled_task(
        conn, outside, make_agent(conn, outside), next_run_at=utc(2025, 10, 25, 8), name="Old"
    )
    conn.execute("select stepsync.deny_flag_users('multi_step_workflows', %s)", [[outside]])
    result = CliRunner().invoke(app, ["schedules", "--count", "2", "--database-url", db_url])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if " UTC " in line]
    assert lines[0].startswith(
        "2025-10-25 07:00:00 UTC  2025-10-25 09:00:00 CEST Europe/Paris  stepsync  Digest ("
        + str(task)
    )
    assert f"owner {owner[0]}" in lines[0]
    assert "legacy" in lines[1] and "Old" in lines[1]
    # Across the change the local time stays 09:00 and UTC moves an hour.
    assert lines[3].startswith("2025-10-26 08:00:00 UTC  2025-10-26 09:00:00 CET Europe/Paris")


# --- inside stepsync serve --------------------------------------------------------------


def test_the_service_fires_a_due_task_and_runs_it_without_being_asked(
    conn: psycopg.Connection, db_url: str, owner: tuple
) -> None:
    """The scheduler is part of `stepsync serve`: a task due now is started by the running
    service on its own and its step executed, and `--no-scheduler` leaves it alone."""
    from tests.workers import serving, wait_until

    due = datetime.now(UTC) - timedelta(seconds=1)
    task = scheduled_task(conn, *owner, cron="0 9 * * *", next_run_at=due)
    seen: list[dict] = []

    def step(request):
        seen.append(request.trigger_data)
        return {"text": "done"}

    async def serve(timeout: float, **overrides) -> None:
        async with serving(db_url, step, schedule_interval_seconds=0.2, **overrides):
            await asyncio.to_thread(
                wait_until,
                lambda: task_row(conn, task)["total_executions"] == 1,
                timeout,
                "the scheduled run to finish",
            )

    # Ten scheduler intervals without a scheduler: nothing starts.
    with pytest.raises(AssertionError, match="timed out"):
        asyncio.run(serve(2, scheduler=False))
    assert runs_of(conn, task) == []
    asyncio.run(serve(20))
    [run] = runs_of(conn, task)
    assert (run["trigger_type"], run["status"]) == ("scheduled", "completed")
    # Compared as times: the database writes fractional seconds without trailing zeros.
    assert seen == [run["trigger_data"]]
    assert datetime.fromisoformat(seen[0]["fire_at"]) == due
    assert task_row(conn, task)["next_run_at"] > datetime.now(UTC)
