"""Operating the service: LISTEN wake-ups and reconnects, metrics and health endpoint."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import psycopg

from sync.wakeups.postgres import APPLICATION_NAME, PostgresWakeups
from tests.support import acting_as, make_agent, make_task, make_user, replace_steps
from tests.workers import serving, wait_for_run


def new_run(conn: psycopg.Connection, steps: int = 2):
    user_id = make_user(conn)
    task_id = make_task(conn, user_id, make_agent(conn, user_id))
    replace_steps(conn, task_id, [{} for _ in range(steps)])
    with acting_as(conn, "authenticated", user_id):
        return conn.execute("select public.start_task_run(%s)", [task_id]).fetchone()[0]


async def noop(request):
    return {"ok": request.step_order}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_listen_wakes_the_service_and_survives_a_dropped_connection(conn, db_url):
    # With an hour between polls, only LISTEN (and its reconnect sweep) can find the work.
    async def scenario() -> tuple[str, str, int]:
        async with serving(db_url, noop, poll_interval_seconds=3600) as service:
            listener = next(s for s in service.wakeup_sources if isinstance(s, PostgresWakeups))
            await asyncio.wait_for(listener.connected.wait(), 30)
            first = await wait_for_run(db_url, new_run(conn))
            killed = conn.execute(
                "select count(*) from pg_stat_activity, pg_terminate_backend(pid)"
                " where application_name = %s and datname = current_database()",
                [APPLICATION_NAME],
            ).fetchone()[0]
            assert killed == 1
            # Work that becomes ready while the listener is down is found by the sweep
            # after the reconnect, or by a notification once it is back.
            second = await wait_for_run(db_url, new_run(conn))

            async def reconnected() -> None:
                while listener.connections < 2:
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(reconnected(), 30)
            third = await wait_for_run(db_url, new_run(conn))
            return first["status"], second["status"], third["status"]

    assert asyncio.run(scenario()) == ("completed", "completed", "completed")


def test_metrics_and_health_endpoint(conn, db_url):
    port = free_port()

    async def scenario() -> tuple[str, str, int]:
        async with serving(db_url, noop, metrics_port=port, metrics_host="127.0.0.1"):
            await wait_for_run(db_url, new_run(conn, steps=2))

            def fetch(path: str) -> tuple[int, str]:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.status, r.read().decode()

            health_status, health = await asyncio.to_thread(fetch, "/healthz")
            _, metrics = await asyncio.to_thread(fetch, "/metrics")
            return health, metrics, health_status

    health, metrics, health_status = asyncio.run(scenario())
    assert (health_status, health) == (200, "ok\n")
    samples = dict(
        line.rsplit(" ", 1) for line in metrics.splitlines() if line and not line.startswith("#")
    )
    assert float(samples["stepsync_steps_claimed_total"]) == 2
    assert float(samples["stepsync_steps_completed_total"]) == 2
    assert float(samples["stepsync_steps_failed_total"]) == 0
    assert float(samples['stepsync_step_duration_seconds_count{outcome="completed"}']) == 2
    assert "stepsync_queue_depth" in samples
    assert any(key.startswith("stepsync_wakeup_latency_seconds_count") for key in samples)


def test_behind_a_transaction_pooler_every_query_sets_its_role_itself(conn, db_url):
    # No session state: the pooled connections stay the login role between transactions,
    # and the work is found by polling alone.
    run_id = new_run(conn, steps=3)

    async def scenario() -> tuple[str, set[str]]:
        async with serving(
            db_url, noop, db_transaction_pooler=True, listen=[], poll_interval_seconds=0.2
        ) as service:
            run = await wait_for_run(db_url, run_id)
            roles = set()
            async with service.db.pool.connection() as pooled:
                roles.add(
                    (await (await pooled.execute("select current_user")).fetchone())["current_user"]
                )
            return run["status"], roles

    status, roles = asyncio.run(scenario())
    assert status == "completed"
    assert roles == {conn.info.user}  # the login role, not service_role


def test_only_notifications_that_can_change_the_work_wake_the_service():
    from sync.wakeups.postgres import RUN_CHANGED, STEP_READY, wake_reason

    assert wake_reason(STEP_READY, "5534a58e-a494-4b66-a871-576b15876142") == "step_ready"
    assert wake_reason(RUN_CHANGED, '{"run_id": "x", "status": "cancelled"}') == "run_cancelled"
    assert wake_reason(RUN_CHANGED, '{"run_id": "x", "status": "completed"}') is None
    compensating = '{"run_id": "x", "status": "running", "outcome": null, "cancelling": true}'
    assert wake_reason(RUN_CHANGED, compensating) == "run_cancelled"
    started = '{"run_id": "x", "status": "running", "outcome": null, "cancelling": false}'
    assert wake_reason(RUN_CHANGED, started) is None
    assert wake_reason(RUN_CHANGED, "not json") == "run_changed"
