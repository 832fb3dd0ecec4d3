"""A stand-in for Supabase Edge Functions: a local HTTP server at ``/functions/v1/<name>``.

It records every request (path, headers, JSON body) and answers from a script that a
test queues per function: JSON with any status, a non-JSON body, or a reply held back
longer than the caller's timeout. With nothing queued it answers 200 with the legacy
``chat`` shape, echoing the message text, so the happy path needs no script.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PREFIX = "/functions/v1/"


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: Any = None  # JSON-serialisable, or str for a raw body
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    hold: bool = False  # keep the caller waiting until the stand-in stops


NOT_FOUND = Answer(404, {"code": "NOT_FOUND", "message": "Requested function was not found"})


def json_answer(status: int, body: Any, **headers: str) -> Answer:
    return Answer(status=status, body=body, headers=headers)


def text_answer(status: int, text: str, content_type: str = "text/html") -> Answer:
    return Answer(status=status, body=text, content_type=content_type)


def slow_answer() -> Answer:
    """Never answers in time: the connection stays open until the stand-in stops."""
    return Answer(hold=True)


@dataclass(frozen=True)
class Recorded:
    function: str
    headers: dict[str, str]  # lower-cased names
    body: Any


class EdgeFunctionsStandIn:
    def __init__(self, deployed: set[str] | None = None) -> None:
        # Functions that exist; None = any name. Others get Supabase's 404 answer.
        self.deployed = deployed
        self.requests: list[Recorded] = []
        self._script: dict[str, deque[Answer]] = defaultdict(deque)
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def queue(self, function: str, *answers: Answer) -> None:
        with self._lock:
            self._script[function].extend(answers)

    def requests_to(self, function: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.function == function]

    def start(self) -> EdgeFunctionsStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> EdgeFunctionsStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _next_answer(self, function: str, body: Any) -> Answer:
        with self._lock:
            if self._script[function]:
                return self._script[function].popleft()
        text = (
            body.get("message", {}).get("content", {}).get("text")
            if isinstance(body, dict)
            else None
        )
        return json_answer(
            200,
            {
                "data": {
                    "message": {
                        "role": "assistant",
                        "content": {"type": "text", "text": f"echo: {text}"},
                    }
                }
            },
        )

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet test output
                pass

            def do_POST(self) -> None:
                if not self.path.startswith(PREFIX):
                    self._send(Answer(404, {"error": "not found"}))
                    return
                function = self.path[len(PREFIX) :].split("?")[0]
                if stand_in.deployed is not None and function not in stand_in.deployed:
                    self._send(NOT_FOUND)
                    return
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                with stand_in._lock:
                    stand_in.requests.append(
                        Recorded(function, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                answer = stand_in._next_answer(function, body)
                if answer.hold:
                    stand_in._released.wait()
                    return
                self._send(answer)

            def _send(self, answer: Answer) -> None:
                payload = (
                    answer.body if isinstance(answer.body, str) else json.dumps(answer.body)
                ).encode()
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(payload)))
                for name, value in answer.headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(payload)

            def do_OPTIONS(self) -> None:  # CORS preflight, as deployed functions answer it
                function = self.path[len(PREFIX) :].split("?")[0]
                if not self.path.startswith(PREFIX) or (
                    stand_in.deployed is not None and function not in stand_in.deployed
                ):
                    self._send(NOT_FOUND)
                    return
                self._send(text_answer(200, "ok", "text/plain"))

        return Handler
