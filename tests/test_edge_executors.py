"""The Edge Function executors against a local stand-in for ``/functions/v1/<name>``."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import pytest

from sync.executors.agentopia_chat import AgentopiaChatExecutor
from sync.executors.base import PermanentStepError, RetryableStepError, StepRequest
from sync.executors.edge_function import EdgeFunctionExecutor
from tests.standins.edge_functions import (
    EdgeFunctionsStandIn,
    json_answer,
    slow_answer,
    text_answer,
)

KEY = "service-role-key-for-tests"


@pytest.fixture
def functions():
    with EdgeFunctionsStandIn() as stand_in:
        yield stand_in


def step(**changes) -> StepRequest:
    request = StepRequest(
        run_id=uuid.uuid4(),
        step_execution_id=uuid.uuid4(),
        task_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        agent_id=uuid.uuid4(),
        step_order=1,
        step_name="Research",
        instructions="List three sources.",
        context={},
        attempt=1,
        timeout_seconds=10,
        idempotency_key="run-x:step-1",
    )
    return dataclasses.replace(request, **changes)


def run(executor, *requests):
    """Execute the requests in order on one executor; return outputs or the errors raised."""

    async def go():
        results = []
        try:
            for request in requests:
                try:
                    results.append(await executor.execute(request))
                except Exception as exc:
                    results.append(exc)
        finally:
            await executor.aclose()
        return results

    return asyncio.run(go())


def test_generic_executor_posts_the_step_with_bearer_and_idempotency_key(functions):
    functions.queue("summarise", json_answer(200, {"summary": "ok", "n": 3}))
    request = step(context={"previous": {"text": "a"}}, trigger_data={"source": "cron"})

    [output] = run(EdgeFunctionExecutor(functions.url, KEY, "summarise"), request)

    assert output == {"summary": "ok", "n": 3}
    [sent] = functions.requests_to("summarise")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["idempotency-key"] == "run-x:step-1"
    assert sent.headers["content-type"] == "application/json"
    assert sent.body["run_id"] == str(request.run_id)
    assert sent.body["step_execution_id"] == str(request.step_execution_id)
    assert sent.body["instructions"] == "List three sources."
    assert sent.body["context"] == {"previous": {"text": "a"}}
    assert sent.body["trigger_data"] == {"source": "cron"}
    assert sent.body["attempt"] == 1


def test_idempotency_key_is_the_same_on_every_attempt(functions):
    functions.queue("summarise", json_answer(503, {"error": "busy"}), json_answer(200, {"ok": 1}))
    first = step(attempt=1)
    second = dataclasses.replace(first, attempt=2)

    results = run(EdgeFunctionExecutor(functions.url, KEY, "summarise"), first, second)

    assert isinstance(results[0], RetryableStepError)
    assert results[1] == {"ok": 1}
    keys = [r.headers["idempotency-key"] for r in functions.requests_to("summarise")]
    attempts = [r.body["attempt"] for r in functions.requests_to("summarise")]
    assert keys == ["run-x:step-1", "run-x:step-1"]
    assert attempts == [1, 2]


@pytest.mark.parametrize(
    ("answer", "retryable", "says"),
    [
        (json_answer(500, {"error": "boom"}), True, "500"),
        (json_answer(502, {"error": "bad gateway"}), True, "502"),
        (json_answer(429, {"error": "slow down"}, retry_after="7"), True, "Retry-After: 7"),
        (json_answer(400, {"error": "instructions missing"}), False, "instructions missing"),
        (json_answer(401, {"msg": "Invalid JWT"}), False, "401"),
        (json_answer(404, {"code": "NOT_FOUND"}), False, "404"),
        (text_answer(200, "<html>gateway page</html>"), False, "not JSON"),
    ],
)
def test_answers_are_classified_retryable_or_permanent(functions, answer, retryable, says):
    functions.queue("summarise", answer)

    [error] = run(EdgeFunctionExecutor(functions.url, KEY, "summarise"), step())

    expected = RetryableStepError if retryable else PermanentStepError
    assert type(error) is expected
    assert error.retryable is retryable
    assert says in str(error)
    assert KEY not in str(error)


def test_a_slow_function_times_out_as_retryable(functions):
    functions.queue("summarise", slow_answer())

    [error] = run(EdgeFunctionExecutor(functions.url, KEY, "summarise"), step(timeout_seconds=0.3))

    assert isinstance(error, RetryableStepError)
    assert "did not answer within 0.3s" in str(error)


@pytest.mark.parametrize("setting", ["edge:summarise", "agentopia_chat"])
def test_a_call_may_take_as_long_as_its_step_allows(functions, setting):
    from sync.executors import executor_from_setting
    from sync.settings import Settings

    settings = Settings(
        supabase_url=functions.url, supabase_service_role_key=KEY, edge_function_name="summarise"
    )
    executor = executor_from_setting(setting, settings)
    sent: list[dict] = []

    async def record(request) -> None:
        sent.append(request.extensions["timeout"])

    executor._client.event_hooks["request"].append(record)
    answer = {"data": {"message": {"content": {"text": "done"}}}}
    functions.queue("summarise", json_answer(200, answer))

    [output] = run(executor, step(timeout_seconds=3600))

    assert not isinstance(output, Exception), output
    # A chat turn of an hour-long step is not cut short by any client-side cap.
    assert sent == [{"connect": 3600, "read": 3600, "write": 3600, "pool": 3600}]


def test_an_unreachable_endpoint_is_retryable():
    executor = EdgeFunctionExecutor("http://127.0.0.1:9", KEY, "summarise")

    [error] = run(executor, step())

    assert isinstance(error, RetryableStepError)
    assert "cannot reach Edge Function summarise" in str(error)


def test_function_name_with_a_slash_is_refused():
    with pytest.raises(ValueError, match="invalid Edge Function name"):
        EdgeFunctionExecutor("http://127.0.0.1:9", KEY, "chat/../admin")


def test_chat_executor_speaks_the_legacy_contract(functions):
    request = step(instructions="Write the weekly report.")

    [output] = run(AgentopiaChatExecutor(functions.url, KEY, "chat"), request)

    [sent] = functions.requests_to("chat")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["x-agentopia-service"] == "task-executor"
    assert sent.headers["idempotency-key"] == request.idempotency_key
    assert sent.body["version"] == "2.0.0"
    # A step without context sends its instructions alone, as the legacy executor did.
    assert sent.body["message"] == {
        "role": "user",
        "content": {"type": "text", "text": "Write the weekly report."},
    }
    context = sent.body["context"]
    assert context["agent_id"] == str(request.agent_id)
    assert context["user_id"] == str(request.user_id)
    assert output["text"] == "echo: Write the weekly report."
    assert output["conversation_id"] == context["conversation_id"]
    assert output["session_id"] == context["session_id"]


def test_chat_text_is_the_context_then_the_instructions(functions):
    request = step(
        instructions="Summarise the findings.",
        context={"steps": [{"step_order": 1, "output": {"text": "Three sources found."}}]},
    )

    run(AgentopiaChatExecutor(functions.url, KEY, "chat"), request)

    text = functions.requests_to("chat")[0].body["message"]["content"]["text"]
    assert text.index("Three sources found.") < text.index("Summarise the findings.")
    assert text.endswith("Instructions:\nSummarise the findings.")


ENGINE_CONTEXT = {
    "mode": "previous",
    "task": {"id": "t", "name": "Weekly report"},
    "run": {"id": "r", "trigger_type": "manual", "trigger_data": {}},
    "step": {"order": 2},
    "context_data": {},
    "previous": None,
}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "Summarise."),  # nothing to add: instructions alone
        ({"mode": "none"}, "Summarise."),
        (
            {"previous": {"order": 1, "output": {"text": "3 sources"}}},
            '"text": "3 sources"',
        ),
        ({"context_data": {"tone": "brief"}}, '"tone": "brief"'),
        ({"run": {"trigger_data": {"event": "push"}}}, '"event": "push"'),
        ({"mode": "custom", "rendered": "Sources: 3"}, "Sources: 3\n\nInstructions:\nSummarise."),
    ],
)
def test_chat_text_from_the_engine_context(changes, expected):
    from sync.executors.agentopia_chat import message_text

    text = message_text(step(instructions="Summarise.", context={**ENGINE_CONTEXT, **changes}))

    assert expected in text
    assert text.endswith("Summarise.")
    assert '"mode"' not in text and "Weekly report" not in text


def test_every_step_of_a_run_shares_conversation_and_session(functions):
    run_id = uuid.uuid4()
    other_run = uuid.uuid4()
    given = uuid.uuid4()
    requests = [
        step(run_id=run_id, step_order=1, idempotency_key="a"),
        step(run_id=run_id, step_order=2, idempotency_key="b", attempt=2),
        step(run_id=other_run, step_order=1, idempotency_key="c"),
        step(run_id=other_run, step_order=2, idempotency_key="d", conversation_id=given),
        step(run_id=other_run, step_order=3, idempotency_key="e", conversation_id=given),
    ]

    run(AgentopiaChatExecutor(functions.url, KEY, "chat"), *requests)

    sent = [r.body["context"] for r in functions.requests_to("chat")]
    assert sent[0]["conversation_id"] == sent[1]["conversation_id"]
    assert sent[0]["session_id"] == sent[1]["session_id"]
    assert sent[2]["session_id"] != sent[0]["session_id"]
    assert sent[2]["conversation_id"] != sent[0]["conversation_id"]
    # A run that carries the task's conversation uses it for every step.
    assert sent[3]["conversation_id"] == sent[4]["conversation_id"] == str(given)
    assert sent[2]["session_id"] == sent[3]["session_id"] == sent[4]["session_id"]


def test_chat_answer_without_the_text_is_permanent(functions):
    functions.queue("chat", json_answer(200, {"data": {"message": {"content": {}}}}))

    [error] = run(AgentopiaChatExecutor(functions.url, KEY, "chat"), step())

    assert isinstance(error, PermanentStepError)
    assert "data.message.content.text" in str(error)


# --- through the service and the run engine ----------------------------------------------


def test_service_retries_a_chat_step_with_the_same_key_in_one_conversation(db_url, conn):
    """The legacy chat contract end to end: a 503 is retried with the same Idempotency-Key,
    and both steps of the run talk in one conversation and one session."""
    from psycopg.types.json import Jsonb

    from sync.executors import executor_from_setting
    from sync.service import build_service
    from sync.settings import Settings
    from tests.support import acting_as, make_agent, make_task, make_user, replace_steps
    from tests.workers import wait_for_run

    user_id = make_user(conn)
    agent_id = make_agent(conn, user_id)
    task_id = make_task(conn, user_id, agent_id)
    replace_steps(
        conn,
        task_id,
        [
            {"instructions": "Find sources.", "max_attempts": 2, "retry_backoff_seconds": 0},
            {
                "instructions": "Summarise them.",
                "include_previous_context": True,
                "context_data": Jsonb({"tone": "brief"}),
            },
        ],
    )

    def start_run():
        with acting_as(conn, "authenticated", user_id):
            return conn.execute("select public.start_task_run(%s)", [task_id]).fetchone()[0]

    async def scenario(functions):
        settings = Settings(
            database_url=db_url,
            supabase_url=functions.url,
            supabase_service_role_key=KEY,
            executor="agentopia_chat",
            metrics_port=0,
            poll_interval_seconds=0.5,
            lease_seconds=5,
        )
        service = build_service(
            settings, db_url, executor=executor_from_setting(settings.executor, settings)
        )
        task = asyncio.create_task(service.run())
        try:
            # On a thread: blocking the loop would stall the service mid-transaction.
            run_id = await asyncio.to_thread(start_run)
            return run_id, await wait_for_run(db_url, run_id)
        finally:
            service.stop()
            await task

    with EdgeFunctionsStandIn({"chat"}) as functions:
        functions.queue("chat", json_answer(503, {"error": "model overloaded"}))
        run_id, run = asyncio.run(scenario(functions))

    assert run["status"] == "completed"
    first, retry, second = functions.requests_to("chat")
    assert first.headers["idempotency-key"] == retry.headers["idempotency-key"]
    assert second.headers["idempotency-key"] != first.headers["idempotency-key"]
    assert all(r.headers["x-agentopia-service"] == "task-executor" for r in (first, retry, second))
    assert all(r.headers["authorization"] == f"Bearer {KEY}" for r in (first, retry, second))
    assert first.body == retry.body
    assert first.body["message"]["content"]["text"] == "Find sources."  # no context to add
    contexts = [r.body["context"] for r in (first, retry, second)]
    assert len({c["conversation_id"] for c in contexts}) == 1
    assert len({c["session_id"] for c in contexts}) == 1
    assert {c["agent_id"] for c in contexts} == {str(agent_id)}
    assert {c["user_id"] for c in contexts} == {str(user_id)}
    # Step 2 sees step 1's answer in its text, before its own instructions.
    text = second.body["message"]["content"]["text"]
    assert "echo: Find sources." in text and "brief" in text
    assert text.endswith("Summarise them.")
    step_outputs = conn.execute(
        "select output from public.task_step_executions where run_id = %s order by step_order",
        [run_id],
    ).fetchall()
    assert step_outputs[1][0]["text"] == "echo: " + text


def test_registry_builds_the_edge_executors_from_settings():
    from sync.executors import ExecutorSettingError, executor_from_setting
    from sync.settings import Settings

    settings = Settings(supabase_url="https://ref.supabase.co/", supabase_service_role_key=KEY)

    edge = executor_from_setting("edge:summarise", settings)
    chat = executor_from_setting("agentopia_chat", settings)

    assert isinstance(edge, EdgeFunctionExecutor)
    assert edge.url == "https://ref.supabase.co/functions/v1/summarise"
    assert isinstance(chat, AgentopiaChatExecutor)
    assert chat.url == "https://ref.supabase.co/functions/v1/chat"
    with pytest.raises(ExecutorSettingError, match="need STEPSYNC_SUPABASE_URL"):
        executor_from_setting("agentopia_chat", Settings(supabase_url=None))
