"""The agentopia_chat executor does around each chat call what the legacy task-executor
did: the run's conversation session exists and is touched, each step's prompt is posted as
the owner's message in chat_messages_v2 (where the app's tables exist), and the call
carries the legacy options. Tested with the app's tables present and absent, through the
service and a stand-in for the chat Edge Function."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from sync.executors import executor_from_setting
from sync.service import build_service
from sync.settings import Settings
from tests.schedule_support import fire, runs_of, scheduled_task
from tests.standins.edge_functions import EdgeFunctionsStandIn, json_answer
from tests.support import make_agent, make_user, replace_steps
from tests.workers import wait_for_run

KEY = "service-role-key-for-tests"
APP_TABLES = Path(__file__).parent / "fixtures" / "app_chat_tables.sql"


def serve_until_done(db_url: str, functions: EdgeFunctionsStandIn, run_ids: list) -> list[dict]:
    async def scenario() -> list[dict]:
        settings = Settings(
            database_url=db_url,
            supabase_url=functions.url,
            supabase_service_role_key=KEY,
            executor="agentopia_chat",
            metrics_port=0,
            poll_interval_seconds=0.2,
            lease_seconds=5,
            scheduler=False,
        )
        service = build_service(
            settings, db_url, executor=executor_from_setting(settings.executor, settings)
        )
        task = asyncio.create_task(service.run())
        try:
            return [await wait_for_run(db_url, run_id) for run_id in run_ids]
        finally:
            service.stop()
            await task

    return asyncio.run(scenario())


def two_step_scheduled_task(conn: psycopg.Connection, **columns: object) -> tuple:
    user = make_user(conn)
    agent = make_agent(conn, user)
    task = scheduled_task(
        conn, user, agent, next_run_at=datetime(2025, 6, 2, 9, tzinfo=UTC), **columns
    )
    replace_steps(
        conn,
        task,
        [
            {"instructions": "Read the inbox.", "max_attempts": 2, "retry_backoff_seconds": 0},
            {"instructions": "Summarise it.", "include_previous_context": True},
        ],
    )
    return user, agent, task


def rows(conn: psycopg.Connection, query: str, params: list) -> list[dict]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def test_with_the_app_tables_each_prompt_is_posted_and_the_session_touched(
    conn: psycopg.Connection, db_url: str
) -> None:
    conn.execute(APP_TABLES.read_text())
    user, agent, task = two_step_scheduled_task(conn)
    fire(db_url, datetime(2025, 6, 2, 9, 0, 1, tzinfo=UTC))
    [run] = runs_of(conn, task)
    with EdgeFunctionsStandIn({"chat"}) as functions:
        # Step 1 fails once (the retry must not post its prompt twice).
        functions.queue("chat", json_answer(503, {"error": "overloaded"}))
        [finished] = serve_until_done(db_url, functions, [run["id"]])
        calls = functions.requests_to("chat")
    assert finished["status"] == "completed"

    assert [c.body["options"] for c in calls] == [{"context": {"max_messages": 20}}] * 3
    # A scheduled task's prompt is its instructions, as the legacy executor sent them
    # (the fire time in the run's trigger data is not the agent's business).
    assert calls[0].body["message"]["content"]["text"] == "Read the inbox."
    conversation = uuid.UUID(calls[0].body["context"]["conversation_id"])
    session = uuid.UUID(calls[0].body["context"]["session_id"])
    assert {c.body["context"]["conversation_id"] for c in calls} == {str(conversation)}
    assert finished["conversation_id"] == conversation

    [session_row] = rows(
        conn,
        "select * from public.conversation_sessions where conversation_id = %s",
        [conversation],
    )
    assert (session_row["agent_id"], session_row["user_id"], session_row["status"]) == (
        agent,
        user,
        "active",
    )
    assert session_row["title"] == "New Conversation"
    assert session_row["last_active"] >= finished["started_at"]

    messages = rows(
        conn,
        "select * from public.chat_messages_v2 where conversation_id = %s order by created_at",
        [conversation],
    )
    assert [m["content"] for m in messages] == [
        {"type": "text", "text": calls[0].body["message"]["content"]["text"]},
        {"type": "text", "text": calls[2].body["message"]["content"]["text"]},
    ]
    for message in messages:
        assert (message["role"], message["sender_user_id"], message["session_id"]) == (
            "user",
            user,
            session,
        )
        assert message["metadata"]["source"] == "scheduler"
        assert message["metadata"]["task_id"] == str(task)
        assert message["metadata"]["trigger_type"] == "scheduled"
        assert message["metadata"]["target_agent_id"] == str(agent)
        assert message["context"] == {
            "agent_id": str(agent),
            "user_id": str(user),
            "conversation_id": str(conversation),
            "session_id": str(session),
        }


def test_an_existing_conversation_keeps_its_title_and_the_configured_one_is_used(
    conn: psycopg.Connection, db_url: str
) -> None:
    conn.execute(APP_TABLES.read_text())
    configured = uuid.uuid4()
    user, agent, task = two_step_scheduled_task(
        conn, event_trigger_config=Jsonb({"conversation_id": str(configured)})
    )
    conn.execute(
        "insert into public.conversation_sessions (conversation_id, user_id, agent_id, title,"
        " status) values (%s, %s, %s, 'Daily digest', 'paused')",
        [configured, user, agent],
    )
    fire(db_url, datetime(2025, 6, 2, 9, 0, 1, tzinfo=UTC))
    [run] = runs_of(conn, task)
    with EdgeFunctionsStandIn({"chat"}) as functions:
        serve_until_done(db_url, functions, [run["id"]])
        calls = functions.requests_to("chat")
    assert {c.body["context"]["conversation_id"] for c in calls} == {str(configured)}
    [session_row] = rows(
        conn, "select * from public.conversation_sessions where conversation_id = %s", [configured]
    )
    assert (session_row["title"], session_row["status"]) == ("Daily digest", "active")
    assert len(rows(conn, "select id from public.chat_messages_v2", [])) == 2


def test_without_the_app_tables_the_chat_call_runs_alone(
    conn: psycopg.Connection, db_url: str
) -> None:
    assert conn.execute("select to_regclass('public.chat_messages_v2')").fetchone()[0] is None
    _, _, task = two_step_scheduled_task(conn)
    fire(db_url, datetime(2025, 6, 2, 9, 0, 1, tzinfo=UTC))
    [run] = runs_of(conn, task)
    with EdgeFunctionsStandIn({"chat"}) as functions:
        [finished] = serve_until_done(db_url, functions, [run["id"]])
        calls = functions.requests_to("chat")
    assert finished["status"] == "completed"
    assert len(calls) == 2
    assert finished["conversation_id"] == uuid.UUID(calls[0].body["context"]["conversation_id"])


@pytest.mark.parametrize("trigger_type", ["event", "manual"])
def test_an_events_data_is_material_for_the_agent(
    conn: psycopg.Connection, db_url: str, trigger_type: str
) -> None:
    user = make_user(conn)
    agent = make_agent(conn, user)
    task = scheduled_task(conn, user, agent, cron=None)
    conn.execute("set role service_role")
    run_id = conn.execute(
        "select public.start_task_run(%s, %s, %s)",
        [task, trigger_type, Jsonb({"from": "boss@example.com"})],
    ).fetchone()[0]
    conn.execute("reset role")
    with EdgeFunctionsStandIn({"chat"}) as functions:
        serve_until_done(db_url, functions, [run_id])
        [call] = functions.requests_to("chat")
    text = call.body["message"]["content"]["text"]
    assert "boss@example.com" in text and text.endswith("Summarise the inbox")
