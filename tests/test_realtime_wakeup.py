"""The Realtime wake-up source: supabase-py's client against the Realtime stand-in.

The stand-in turns real committed changes in the test database into ``postgres_changes``
frames, so every wake-up here was caused by a row a transaction wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid

import psycopg
import pytest

from sync.wakeups.realtime import BINDINGS, RealtimeWakeups
from tests.realtime_support import WakeLog
from tests.run_engine_support import make_workflow, start_run
from tests.standins.realtime_server import RealtimeStandIn, make_jwt
from tests.support import make_agent, make_task, make_user
from tests.workers import serving, wait_for_run

KEY = "service-role-key-for-tests"


def make_run_target(conn: psycopg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    user = make_user(conn)
    agent = make_agent(conn, user)
    return make_task(conn, user, agent), agent


async def insert_run(url: str, task_id: uuid.UUID, agent_id: uuid.UUID) -> uuid.UUID:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute(
            "insert into public.agent_task_executions (task_id, agent_id, instructions_used)"
            " values (%s, %s, 'x') returning id",
            [task_id, agent_id],
        )
        return (await cur.fetchone())[0]


async def set_run_status(url: str, run_id: uuid.UUID, status: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "update public.agent_task_executions set status = %s where id = %s", [status, run_id]
        )


@contextlib.asynccontextmanager
async def running(source: RealtimeWakeups, wakes: WakeLog):
    task = asyncio.create_task(source.run(wakes))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def fast_source(server: RealtimeStandIn, key: str = KEY) -> RealtimeWakeups:
    return RealtimeWakeups(
        server.url, key, initial_backoff_seconds=0.05, max_backoff_seconds=0.2, timeout_seconds=5
    )


async def flowing(source: RealtimeWakeups, timeout: float = 10) -> None:
    """Until the server has said "Subscribed to PostgreSQL": changes reach the source."""
    await asyncio.wait_for(source.changes_flowing.wait(), timeout)


def test_joins_with_the_bindings_and_sweeps_on_join_and_when_changes_flow(db_url):
    async def scenario():
        async with RealtimeStandIn(db_url, KEY) as server:
            wakes = WakeLog()
            source = fast_source(server)
            async with running(source, wakes):
                await flowing(source)
                await wakes.wait_for("sweep", times=2)
            return server.joins, wakes.reasons

    joins, reasons = asyncio.run(scenario())

    [join] = joins
    assert join["access_token"] == KEY
    assert join["config"]["postgres_changes"] == [
        {"event": b.event, "schema": "public", "table": b.table}
        | ({"filter": b.filter} if b.filter else {})
        for b in BINDINGS
    ]
    # One sweep when the join is acknowledged, one when the server says changes flow.
    assert reasons == ["sweep", "sweep"]


def test_a_new_run_and_a_cancellation_in_the_database_wake_the_source(db_url, conn):
    task_id, agent_id = make_run_target(conn)

    async def scenario():
        async with RealtimeStandIn(db_url, KEY) as server:
            wakes = WakeLog()
            source = fast_source(server)
            async with running(source, wakes):
                await flowing(source)
                run_id = await insert_run(db_url, task_id, agent_id)
                await wakes.wait_for("run_created")
                # A status change the filter does not select sends nothing...
                await set_run_status(db_url, run_id, "running")
                # ...the cancellation does.
                await set_run_status(db_url, run_id, "cancelled")
                await wakes.wait_for("run_changed")
            return wakes.reasons, server.frames_sent

    reasons, frames = asyncio.run(scenario())

    assert reasons == ["sweep", "sweep", "run_created", "run_changed"]
    assert [f["payload"]["data"]["type"] for f in frames] == ["INSERT", "UPDATE"]
    assert frames[1]["payload"]["data"]["record"]["status"] == "cancelled"


def test_dropped_socket_reconnects_resubscribes_and_sweeps(db_url, conn):
    task_id, agent_id = make_run_target(conn)

    async def scenario():
        async with RealtimeStandIn(db_url, KEY) as server:
            wakes = WakeLog()
            source = fast_source(server)
            async with running(source, wakes):
                await flowing(source)
                # The server goes away: sockets cut, new handshakes refused for a while.
                server.refusing = True
                assert server.drop_connections() == 1
                await server.wait_until(lambda: not server.joined_topics())
                # Work arrives while the service is not subscribed: no event can carry it.
                await insert_run(db_url, task_id, agent_id)
                server.refusing = False
                await wakes.wait_for("sweep", times=4)
                await flowing(source)
                assert server.joined_topics() == ["realtime:stepsync-work"]
                # Subscribed again: new changes arrive once more.
                await insert_run(db_url, task_id, agent_id)
                await wakes.wait_for("run_created")
            return wakes.reasons, server.joins, source.subscriptions

    reasons, joins, subscriptions = asyncio.run(scenario())

    # The run inserted while away is found by the sweeps after the resubscribe, not by an
    # event; only the run inserted after it produced run_created.
    assert reasons == ["sweep", "sweep", "sweep", "sweep", "run_created"]
    assert len(joins) == 2 and joins[0]["config"] == joins[1]["config"]
    assert subscriptions == 2


def test_a_wrong_key_is_refused_and_retried_with_backoff(db_url, caplog):
    async def scenario():
        async with RealtimeStandIn(db_url, KEY) as server:
            wakes = WakeLog()
            async with running(fast_source(server, key="not-the-key"), wakes):
                await server.wait_until(lambda: server.refused >= 3)
            return wakes.reasons, server.handshakes

    with caplog.at_level(logging.WARNING, logger="sync.wakeups.realtime"):
        reasons, handshakes = asyncio.run(scenario())

    assert reasons == [] and handshakes == 0
    failures = [r for r in caplog.records if "realtime connection failed" in r.getMessage()]
    assert len(failures) >= 2  # it kept trying (the stand-in refused three handshakes)
    assert "401" in failures[0].getMessage()
    assert all(
        KEY not in r.getMessage() and "not-the-key" not in r.getMessage() for r in caplog.records
    )


@pytest.mark.parametrize(
    "frame",
    [
        {"event": "phx_error", "payload": {}, "ref": None},
        {"event": "phx_close", "payload": {}, "ref": None},
        {
            "event": "system",
            "payload": {
                "channel": "stepsync-work",
                "extension": "postgres_changes",
                "message": "Unable to subscribe to changes with given parameters",
                "status": "error",
            },
            "ref": None,
        },
    ],
    ids=["phx_error", "phx_close", "system_error"],
)
def test_a_channel_the_server_errors_or_closes_is_joined_again_and_swept(db_url, frame):
    async def scenario():
        async with RealtimeStandIn(db_url, KEY) as server:
            wakes = WakeLog()
            source = fast_source(server)
            async with running(source, wakes):
                await flowing(source)
                await server.inject({"topic": "realtime:stepsync-work", **frame})
                await wakes.wait_for("sweep", times=4)
                await server.wait_until(lambda: len(server.joined_topics()) == 1)
            return source.subscriptions, len(server.joins)

    subscriptions, joins = asyncio.run(scenario())

    assert subscriptions == 2 and joins == 2


def test_every_subscribed_message_sweeps_including_capture_restarts_on_one_socket(db_url, conn):
    task_id, agent_id = make_run_target(conn)

    async def scenario():
        async with RealtimeStandIn(db_url, KEY) as server:
            server.subscribe_delay = 0.5  # the real server takes 1-3 s after a fresh start
            wakes = WakeLog()
            source = fast_source(server)
            async with running(source, wakes):
                # Joined (acknowledged), but the server has no database subscription yet:
                # a change committed now is never sent.
                await asyncio.wait_for(source.subscribed.wait(), 10)
                assert not source.changes_flowing.is_set()
                await insert_run(db_url, task_id, agent_id)
                await server.wait_until(lambda: len(server.dropped) == 1)
                await flowing(source)
                after_join = list(wakes.reasons)
                # The capture restarts: the socket stays, changes in between are dropped,
                # then "Subscribed to PostgreSQL" comes again.
                server.stop_capture()
                await insert_run(db_url, task_id, agent_id)
                await server.wait_until(lambda: len(server.dropped) == 2)
                await server.resume_capture()
                await wakes.wait_for("sweep", times=3)
                await insert_run(db_url, task_id, agent_id)
                await wakes.wait_for("run_created")
            return after_join, wakes.reasons, server, source

    after_join, reasons, server, source = asyncio.run(scenario())

    # Join acknowledged, then changes flowing: a sweep each. The runs committed before
    # either announcement are found by the sweep that follows it, not by an event.
    assert after_join == ["sweep", "sweep"]
    assert reasons == ["sweep", "sweep", "sweep", "run_created"]
    assert [d["table"] for d in server.dropped] == ["agent_task_executions"] * 2
    assert len(server.announcements) == 2 and source.capture_starts == 2
    assert server.handshakes == 1 and len(server.joins) == 1  # no reconnect, no rejoin


def test_a_system_error_is_logged_and_does_not_count_as_subscribed(db_url, caplog):
    failure = "Subscribing to PostgreSQL failed: too many connections"

    async def scenario():
        async with RealtimeStandIn(db_url, KEY) as server:
            wakes = WakeLog()
            source = fast_source(server)
            async with running(source, wakes):
                await flowing(source)
                # After the error the server is slow to subscribe again.
                server.subscribe_delay = 30
                await server.inject(
                    {
                        "topic": "realtime:stepsync-work",
                        "event": "system",
                        "payload": {
                            "channel": "stepsync-work",
                            "extension": "postgres_changes",
                            "message": failure,
                            "status": "error",
                        },
                        "ref": None,
                    }
                )
                await server.wait_until(lambda: len(server.joins) == 2)
                await asyncio.wait_for(source.subscribed.wait(), 10)
                flowing_after_error = source.changes_flowing.is_set()
            return wakes.reasons, source.capture_starts, flowing_after_error

    with caplog.at_level(logging.WARNING, logger="sync.wakeups.realtime"):
        reasons, capture_starts, flowing_after_error = asyncio.run(scenario())

    assert not flowing_after_error and capture_starts == 1
    # Join, changes flowing, rejoin: the error itself is no reason to believe anything flows.
    assert reasons == ["sweep", "sweep", "sweep"]
    lost = [r for r in caplog.records if "realtime subscription lost" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING
    assert failure in lost[0].getMessage()


MALFORMED_FRAMES = [
    "this is not json",
    b"\x00\xff binary",
    "[1, 2, 3]",
    json.dumps(
        {"topic": "realtime:stepsync-work", "event": "no_such_event", "payload": {}, "ref": None}
    ),
    json.dumps(
        {
            "topic": "realtime:stepsync-work",
            "event": "postgres_changes",
            "payload": {"ids": "x"},
            "ref": None,
        }
    ),
    json.dumps(
        {"topic": "realtime:elsewhere", "event": "postgres_changes", "payload": {}, "ref": None}
    ),
    json.dumps(
        {
            "topic": "realtime:stepsync-work",
            "event": "phx_reply",
            "payload": {"status": "ok", "response": {}},
            "ref": "999",
        }
    ),
]


def change_frame(server: RealtimeStandIn, kind: str, record) -> dict:
    """A postgres_changes frame for every binding the stand-in handed out."""
    return {
        "topic": "realtime:stepsync-work",
        "event": "postgres_changes",
        "payload": {
            "ids": server.binding_ids(),
            "data": {
                "schema": "public",
                "table": "agent_task_executions",
                "commit_timestamp": "2026-11-26T09:00:00Z",
                "type": kind,
                "columns": [],
                "record": record,
                "errors": None,
            },
        },
        "ref": None,
    }


def test_malformed_and_unknown_frames_are_logged_and_ignored(db_url, conn, caplog):
    task_id, agent_id = make_run_target(conn)

    async def scenario():
        async with RealtimeStandIn(db_url, KEY) as server:
            wakes = WakeLog()
            source = fast_source(server)
            async with running(source, wakes) as task:
                await flowing(source)
                for frame in MALFORMED_FRAMES:
                    await server.inject(frame)
                # Well-formed for the client, but unusable for us: no record, and a record
                # that the subscribed filter would not have let through.
                for kind, record in (("INSERT", None), ("UPDATE", {"status": "running"})):
                    await server.inject(change_frame(server, kind, record))
                # Still subscribed on the same socket, still delivering real changes.
                await insert_run(db_url, task_id, agent_id)
                await wakes.wait_for("run_created")
                assert not task.done()
            return wakes.reasons, server.handshakes

    with caplog.at_level(logging.DEBUG):
        reasons, handshakes = asyncio.run(scenario())

    assert reasons == ["sweep", "sweep", "run_created"]
    assert handshakes == 1  # no reconnect was needed
    logged = [r.getMessage() for r in caplog.records]
    assert sum("Unrecognized message format" in m for m in logged) >= 4
    assert any("realtime change ignored" in m and "record is NoneType" in m for m in logged)
    assert any("realtime change ignored" in m and "fails the filter" in m for m in logged)


# --- inside the service ----------------------------------------------------------------
# The service runs with Realtime as its only wake-up source besides a 60 s poll timer,
# so a step picked up within the test's wait was found because of a Realtime event (or
# the sweep after a resubscribe), never by polling.

SLOW_POLL = 60.0


def workflow(conn: psycopg.Connection, steps: int = 2) -> tuple[uuid.UUID, uuid.UUID]:
    """A user and a task of ``steps`` plain steps: (user, task)."""
    user_id, task_id, _ = make_workflow(conn, [{} for _ in range(steps)])
    return user_id, task_id


class Steps:
    """The step function: records which steps ran."""

    def __init__(self) -> None:
        self.ran: list[tuple[uuid.UUID, int]] = []
        self.started: list[float] = []  # time.monotonic() of each call

    async def __call__(self, request):
        self.started.append(time.monotonic())
        self.ran.append((request.run_id, request.step_order))
        return {"step": request.step_order}


def wakeups(service, reason: str) -> float:
    value = service.metrics.registry.get_sample_value(
        "stepsync_wakeup_latency_seconds_count", {"reason": reason}
    )
    return value or 0.0


@contextlib.asynccontextmanager
async def realtime_service(db_url: str, steps: Steps):
    """The Realtime stand-in and a service listening to it through supabase-py."""
    async with (
        RealtimeStandIn(db_url, KEY) as server,
        serving(
            db_url,
            steps,
            listen=["realtime"],
            supabase_url=server.url,
            supabase_service_role_key=KEY,
            poll_interval_seconds=SLOW_POLL,
        ) as service,
    ):
        [source] = [s for s in service.wakeup_sources if s.name == "realtime"]
        # Short backoff for the test; the client itself is the real supabase-py one.
        source.initial_backoff_seconds = 0.05
        source.max_backoff_seconds = 0.2
        await asyncio.wait_for(source.changes_flowing.wait(), 10)
        await idle(service)
        yield server, service, source


async def idle(service) -> None:
    """Until the wake-ups so far (first poll tick, sweeps) have been claimed for and those
    claims have returned, so that any later claim has a later cause."""
    deadline = asyncio.get_running_loop().time() + 10
    while service._wakeup.is_set() or service._first_wake is not None or service._claims:
        assert asyncio.get_running_loop().time() < deadline, "service never went idle"
        await asyncio.sleep(0.01)


def test_a_queued_step_wakes_the_service_through_realtime(db_url, conn):
    user_id, task_id = workflow(conn, steps=2)
    steps = Steps()

    async def scenario():
        async with realtime_service(db_url, steps) as (server, service, _source):
            run_id = await asyncio.to_thread(start_run, conn, task_id, as_user=user_id)
            run = await wait_for_run(db_url, run_id, timeout=SLOW_POLL / 3)
            return run_id, run, wakeups(service, "step_ready"), server.frames_sent

    run_id, run, step_ready_wakeups, frames = asyncio.run(scenario())

    assert run["status"] == "completed"
    assert steps.ran == [(run_id, 1), (run_id, 2)]
    # Step 1 was claimed after a step_ready wake-up, which only Realtime sends here (the
    # service subscribes to queued steps). Step 2 was handed to the service with step 1's
    # result, so it was never queued and nothing announced it.
    assert step_ready_wakeups >= 1
    queued = [
        f["payload"]["data"]["record"]
        for f in frames
        if f["payload"]["data"]["table"] == "task_step_executions"
    ]
    assert {(r["run_id"], r["step_order"], r["status"]) for r in queued} == {
        (str(run_id), 1, "queued")
    }


def test_service_reconnects_after_a_dropped_socket_and_sweeps_up_missed_work(db_url, conn):
    user_id, task_id = workflow(conn, steps=1)
    steps = Steps()

    async def scenario():
        async with realtime_service(db_url, steps) as (server, service, source):
            server.refusing = True
            server.drop_connections()
            await server.wait_until(lambda: not server.joined_topics())
            # Queued while the service is deaf: no frame can reach it.
            frames_before = len(server.frames_sent)
            run_id = await asyncio.to_thread(start_run, conn, task_id, as_user=user_id)
            assert len(server.frames_sent) == frames_before
            assert steps.ran == []
            server.refusing = False
            run = await wait_for_run(db_url, run_id, timeout=SLOW_POLL / 3)
            return run_id, run, source.subscriptions, wakeups(service, "sweep")

    run_id, run, subscriptions, sweeps = asyncio.run(scenario())

    assert run["status"] == "completed"
    assert steps.ran == [(run_id, 1)]
    assert subscriptions == 2  # subscribed, lost, subscribed again
    assert sweeps >= 1  # the resubscribe's sweep found the step


def test_a_run_committed_before_changes_flow_after_a_rejoin_starts_when_they_do(db_url, conn):
    user_id, task_id = workflow(conn, steps=1)
    steps = Steps()

    async def scenario():
        async with realtime_service(db_url, steps) as (server, service, source):
            # After a dropped socket the real server takes 5-10 s to subscribe again.
            server.subscribe_delay = 3.0
            server.drop_connections()
            await server.wait_until(lambda: len(server.joins) == 2)
            await asyncio.wait_for(source.subscribed.wait(), 10)
            await idle(service)  # the rejoin's sweep has looked, and found nothing
            run_id = await asyncio.to_thread(start_run, conn, task_id, as_user=user_id)
            committed = time.monotonic()
            run = await wait_for_run(db_url, run_id, timeout=SLOW_POLL / 3)
            return run_id, run, committed, server.announcements, server.dropped

    run_id, run, committed, announcements, dropped = asyncio.run(scenario())

    assert run["status"] == "completed" and steps.ran == [(run_id, 1)]
    subscribed_again = announcements[-1][0]
    assert len(announcements) == 2 and committed < subscribed_again
    assert {d["table"] for d in dropped} == {"agent_task_executions", "task_step_executions"}
    # Found by the sweep on "Subscribed to PostgreSQL", not by the 60 s poll.
    assert 0 <= steps.started[0] - subscribed_again < 2.0


def test_a_run_committed_during_a_capture_restart_starts_when_it_ends(db_url, conn):
    user_id, task_id = workflow(conn, steps=1)
    steps = Steps()

    async def scenario():
        async with realtime_service(db_url, steps) as (server, _service, _source):
            server.stop_capture()
            run_id = await asyncio.to_thread(start_run, conn, task_id, as_user=user_id)
            await server.wait_until(lambda: len(server.dropped) == 2)
            await asyncio.sleep(1.0)  # the capture is down a while; nothing may start
            assert steps.ran == []
            await server.resume_capture()
            run = await wait_for_run(db_url, run_id, timeout=SLOW_POLL / 3)
            return run_id, run, server.announcements, server.handshakes

    run_id, run, announcements, handshakes = asyncio.run(scenario())

    assert run["status"] == "completed" and steps.ran == [(run_id, 1)]
    assert handshakes == 1 and len(announcements) == 2  # same socket, announced again
    assert 0 <= steps.started[0] - announcements[-1][0] < 2.0


def test_malformed_frames_never_stop_the_service(db_url, conn, caplog):
    user_id, task_id = workflow(conn, steps=2)
    steps = Steps()

    async def scenario():
        async with realtime_service(db_url, steps) as (server, service, _source):
            for frame in MALFORMED_FRAMES:
                await server.inject(frame)
            await server.inject(change_frame(server, "INSERT", None))
            run_id = await asyncio.to_thread(start_run, conn, task_id, as_user=user_id)
            run = await wait_for_run(db_url, run_id, timeout=SLOW_POLL / 3)
            return run_id, run, server.handshakes, service.healthy()

    with caplog.at_level(logging.WARNING):
        run_id, run, handshakes, healthy = asyncio.run(scenario())

    assert run["status"] == "completed"
    assert steps.ran == [(run_id, 1), (run_id, 2)]
    assert handshakes == 1 and healthy
    logged = [r.getMessage() for r in caplog.records]
    assert any("Unrecognized message format" in m for m in logged)
    assert any("realtime change ignored" in m for m in logged)


# --- a browser following its runs ---------------------------------------------------------
# What docs/supabase.md shows in JavaScript, done with the Python client: the anon key at
# the handshake, the user's JWT as access_token, postgres_changes on the run tables.

ANON_KEY = "anon-key-for-tests"
JWT_SECRET = "jwt-secret-for-tests-only"


def test_a_browser_hears_its_own_runs_and_steps_and_nobody_elses(db_url, conn):
    from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

    alice, alice_task = workflow(conn, steps=2)
    bob, bob_task = workflow(conn, steps=1)

    async def scenario():
        async with RealtimeStandIn(db_url, KEY, anon_key=ANON_KEY, jwt_secret=JWT_SECRET) as server:
            client = AsyncRealtimeClient(
                f"{server.url}/realtime/v1", token=ANON_KEY, auto_reconnect=False
            )
            await client.set_auth(
                make_jwt(JWT_SECRET, {"sub": str(alice), "role": "authenticated"})
            )
            heard: list[tuple[str, dict]] = []
            alice_done = asyncio.Event()

            def hear(payload):
                record = payload["data"]["record"]
                heard.append((payload["data"]["table"], record))
                steps = [r for t, r in heard if t == "task_step_executions"]
                if len(steps) == 2:
                    alice_done.set()

            subscribed = asyncio.Event()
            channel = client.channel("my-runs")
            channel.on_postgres_changes("*", hear, table="agent_task_executions")
            channel.on_postgres_changes("*", hear, table="task_step_executions")
            await channel.subscribe(
                lambda status, _err: (
                    status == RealtimeSubscribeStates.SUBSCRIBED and subscribed.set()
                )
            )
            await asyncio.wait_for(subscribed.wait(), 10)
            # Bob's run first: its changes reach the stand-in before Alice's, in order.
            bob_run = await asyncio.to_thread(start_run, conn, bob_task, as_user=bob)
            alice_run = await asyncio.to_thread(start_run, conn, alice_task, as_user=alice)
            await asyncio.wait_for(alice_done.wait(), 10)
            await client.close()
            return heard, alice_run, bob_run

    heard, alice_run, bob_run = asyncio.run(scenario())

    runs = [r for t, r in heard if t == "agent_task_executions"]
    steps = [r for t, r in heard if t == "task_step_executions"]
    assert {r["id"] for r in runs} == {str(alice_run)}
    assert sorted(r["step_order"] for r in steps) == [1, 2]
    assert {r["run_id"] for r in steps} == {str(alice_run)}
    assert all(r["user_id"] == str(alice) for _t, r in heard)
    assert str(bob_run) not in json.dumps(heard)


def test_a_forged_token_is_refused_at_join(db_url):
    from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

    async def scenario():
        async with RealtimeStandIn(db_url, KEY, anon_key=ANON_KEY, jwt_secret=JWT_SECRET) as server:
            client = AsyncRealtimeClient(
                f"{server.url}/realtime/v1", token=ANON_KEY, auto_reconnect=False
            )
            forged = make_jwt("not-the-secret", {"sub": str(uuid.uuid4()), "role": "service_role"})
            await client.set_auth(forged)
            states = []
            channel = client.channel("my-runs")
            channel.on_postgres_changes("*", lambda _p: None, table="agent_task_executions")
            await channel.subscribe(lambda status, err: states.append((status, str(err))))
            await client.close()
            return states

    [(status, error)] = asyncio.run(scenario())

    assert status == RealtimeSubscribeStates.CHANNEL_ERROR
    assert "InvalidJWTToken" in error


def test_serve_refuses_realtime_without_the_supabase_settings(db_url, monkeypatch):
    from typer.testing import CliRunner

    from sync.cli import app

    for name in ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"STEPSYNC_{name}", raising=False)
    monkeypatch.chdir("/")

    result = CliRunner().invoke(
        app,
        ["serve", "--database-url", db_url, "--executor", "demo", "--listen", "realtime"]
        + ["--metrics-port", "0"],
    )

    assert result.exit_code == 1
    assert "--listen realtime needs STEPSYNC_SUPABASE_URL" in result.output


def test_realtime_and_postgres_listen_together():
    from sync.service import build_service
    from sync.settings import Settings

    settings = Settings(
        database_url="postgresql://u@127.0.0.1:1/db",
        listen="postgres,realtime",
        supabase_url="https://ref.supabase.co",
        supabase_service_role_key=KEY,
        executor="demo",
        metrics_port=0,
    )

    service = build_service(settings, settings.database_url)

    names = [source.name for source in service.wakeup_sources]
    assert names == ["postgres", "realtime", "poll"]
    [source] = [s for s in service.wakeup_sources if s.name == "realtime"]
    assert source.url == "https://ref.supabase.co/realtime/v1"
