"""The Python and HTTP executors, and the executor registry.

The HTTP executor talks to a stand-in endpoint: a real HTTP server on localhost (the
step-receiving service of a deployment cannot run here) that answers per path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from sync.executors import ExecutorSettingError, executor_from_setting
from sync.executors.base import PermanentStepError, RetryableStepError, StepError, StepRequest
from sync.executors.demo import DemoExecutor
from sync.executors.http import HttpExecutor
from sync.executors.python import PythonExecutor
from sync.settings import Settings


def make_request(**changes) -> StepRequest:
    fields = {
        "run_id": uuid.uuid4(),
        "step_execution_id": uuid.uuid4(),
        "task_id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "agent_id": uuid.uuid4(),
        "step_order": 2,
        "step_name": "Summarise",
        "instructions": "Summarise the findings",
        "context": {"previous": {"output": {"text": "findings"}}},
        "attempt": 1,
        "timeout_seconds": 5.0,
        "idempotency_key": "run-1:2",
    }
    return StepRequest(**{**fields, **changes})


# --- Python callables (these module-level functions are also imported by reference) ----


def sync_upper(request: StepRequest) -> dict:
    return {"text": request.instructions.upper(), "thread": threading.current_thread().name}


async def async_echo(request: StepRequest) -> dict:
    return {"order": request.step_order, "context": request.context}


def raises_value_error(request: StepRequest) -> None:
    raise ValueError("bad input")


def raises_permanent(request: StepRequest) -> None:
    raise PermanentStepError("not allowed")


NOT_CALLABLE = 42


def test_python_executor_runs_sync_functions_off_the_event_loop():
    executor = PythonExecutor.from_reference("tests.test_executors_python_http:sync_upper")
    output = asyncio.run(executor.execute(make_request()))
    assert output["text"] == "SUMMARISE THE FINDINGS"
    assert output["thread"] != threading.main_thread().name


def test_python_executor_awaits_async_functions():
    executor = PythonExecutor.from_reference("tests.test_executors_python_http:async_echo")
    request = make_request()
    assert asyncio.run(executor.execute(request)) == {"order": 2, "context": request.context}


def test_python_executor_turns_unexpected_exceptions_into_retryable_errors():
    with pytest.raises(StepError) as caught:
        asyncio.run(PythonExecutor(raises_value_error).execute(make_request()))
    assert caught.value.retryable is True
    assert str(caught.value) == "ValueError: bad input"


def test_python_executor_passes_step_errors_through():
    with pytest.raises(PermanentStepError, match="not allowed") as caught:
        asyncio.run(PythonExecutor(raises_permanent).execute(make_request()))
    assert caught.value.retryable is False


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no_colon_here", "python:package.module:function"),
        ("tests.no_such_module:f", "cannot import module 'tests.no_such_module'"),
        ("tests.test_executors_python_http:missing", "has no 'missing'"),
        ("tests.test_executors_python_http:NOT_CALLABLE", "is not callable"),
    ],
)
def test_python_references_that_cannot_work_are_refused_with_the_reason(reference, message):
    with pytest.raises(ExecutorSettingError, match=message) as caught:
        executor_from_setting(f"python:{reference}", Settings())
    assert str(caught.value).startswith("STEPSYNC_EXECUTOR: ")


def test_registry_builds_each_kind_and_names_unknown_settings():
    settings = Settings()
    assert isinstance(executor_from_setting("demo", settings), DemoExecutor)
    assert isinstance(
        executor_from_setting("python:tests.test_executors_python_http:async_echo", settings),
        PythonExecutor,
    )
    http = executor_from_setting("https://steps.example.test/run", settings)
    assert isinstance(http, HttpExecutor) and http.url == "https://steps.example.test/run"
    asyncio.run(http.aclose())
    with pytest.raises(ExecutorSettingError, match="unknown executor 'ftp://x'"):
        executor_from_setting("ftp://x", settings)


def test_demo_executor_is_deterministic_and_shows_the_context_it_got():
    request = make_request()
    first = asyncio.run(DemoExecutor().execute(request))
    again = asyncio.run(DemoExecutor().execute(make_request()))
    assert first == again
    assert first["context_keys"] == ["previous"]
    assert first["text"] == "[Summarise] Summarise the findings"
    other = asyncio.run(DemoExecutor().execute(make_request(context={})))
    assert other["fingerprint"] != first["fingerprint"]


# --- HTTP --------------------------------------------------------------------------------


class StandInEndpoint(BaseHTTPRequestHandler):
    """Stand-in for a remote step endpoint: the path picks the answer."""

    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        self.received.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if self.path == "/slow":
            time.sleep(2)
        answers = {
            "/ok": (200, "application/json", json.dumps({"answer": body["instructions"]})),
            "/slow": (200, "application/json", "{}"),
            "/error": (503, "text/plain", "maintenance"),
            "/busy": (429, "text/plain", "slow down"),
            "/missing": (404, "text/plain", "no such agent"),
            "/unauthorised": (401, "application/json", '{"error": "bad key"}'),
            "/text": (200, "text/html", "<html>hello</html>"),
        }
        status, ctype, text = answers.get(self.path, (500, "text/plain", "?"))
        payload = text.encode()
        # The client of /slow has given up by now; the late answer may find no reader.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInEndpoint)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def call(url: str, request: StepRequest | None = None):
    async def go():
        executor = HttpExecutor(url)
        try:
            return await executor.execute(request or make_request())
        finally:
            await executor.aclose()

    return asyncio.run(go())


def test_http_posts_the_step_with_its_idempotency_key(endpoint):
    StandInEndpoint.received.clear()
    request = make_request()
    assert call(f"{endpoint}/ok", request) == {"answer": "Summarise the findings"}
    (received,) = StandInEndpoint.received
    assert received["headers"]["Idempotency-Key"] == "run-1:2"
    assert received["headers"]["Content-Type"] == "application/json"
    assert received["body"]["step_execution_id"] == str(request.step_execution_id)
    assert received["body"]["context"] == request.context
    assert received["body"]["attempt"] == 1


@pytest.mark.parametrize(
    ("path", "error", "text"),
    [
        ("/error", RetryableStepError, "HTTP 503 from executor: maintenance"),
        ("/busy", RetryableStepError, "HTTP 429 from executor: slow down"),
        ("/missing", PermanentStepError, "HTTP 404 from executor: no such agent"),
        ("/unauthorised", PermanentStepError, "HTTP 401"),
        ("/text", PermanentStepError, "not JSON"),
    ],
)
def test_http_status_and_body_decide_retryable_or_permanent(endpoint, path, error, text):
    with pytest.raises(error, match=text) as caught:
        call(f"{endpoint}{path}")
    assert caught.value.retryable is (error is RetryableStepError)


def test_http_timeouts_are_retryable_and_the_step_s_own_timeout_is_the_limit(endpoint):
    with pytest.raises(RetryableStepError, match=r"timed out after 0\.3s"):
        call(f"{endpoint}/slow", make_request(timeout_seconds=0.3))
    # /slow answers after 2 s: a step that allows 5 s gets its answer.
    assert call(f"{endpoint}/slow", make_request(timeout_seconds=5)) == {}


def test_a_step_that_allows_an_hour_gets_an_hour_from_the_configured_executor(endpoint):
    executor = executor_from_setting(f"{endpoint}/ok", Settings())
    sent: list[dict] = []

    async def record(request) -> None:
        sent.append(request.extensions["timeout"])

    executor.client.event_hooks["request"].append(record)

    async def go():
        try:
            return await executor.execute(make_request(timeout_seconds=3600))
        finally:
            await executor.aclose()

    assert asyncio.run(go()) == {"answer": "Summarise the findings"}
    assert sent == [{"connect": 3600, "read": 3600, "write": 3600, "pool": 3600}]


def test_http_connection_errors_are_retryable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    with pytest.raises(RetryableStepError, match="connection error"):
        call(f"http://127.0.0.1:{closed_port}/ok")


def test_http_executor_needs_an_http_url():
    with pytest.raises(ValueError, match="http"):
        HttpExecutor("ftp://example.test/x")
