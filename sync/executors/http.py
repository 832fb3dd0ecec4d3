"""Run steps by POSTing them as JSON to an HTTP endpoint.

The body is the step request; the ``Idempotency-Key`` header stays the same across
retries of one step of one run, so the receiver can deduplicate. The answer must be
JSON (it becomes the step's output). 5xx, 429, timeouts and connection errors are
retryable; other 4xx and non-JSON answers are permanent.

A call may take as long as the step's own ``timeout_seconds``: that is the one limit,
set per step by whoever knows how long the work behind the URL takes.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import httpx

from sync.executors.base import PermanentStepError, RetryableStepError, StepRequest


def request_body(request: StepRequest) -> dict[str, Any]:
    """Every field of the request, ids as strings."""
    body = dataclasses.asdict(request)
    return {k: str(v) if isinstance(v, uuid.UUID) else v for k, v in body.items()}


class HttpExecutor:
    name = "http"

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"http executor needs an http(s) URL with a host, got {url!r}")
        self.url = url
        self.client = client or httpx.AsyncClient(headers=headers or {})

    async def execute(self, request: StepRequest) -> Any:
        timeout = request.timeout_seconds
        try:
            response = await self.client.post(
                self.url,
                json=request_body(request),
                headers={"Idempotency-Key": request.idempotency_key},
                timeout=timeout,
            )
        except httpx.TimeoutException:
            raise RetryableStepError(f"HTTP executor timed out after {timeout:g}s") from None
        except httpx.TransportError as exc:
            raise RetryableStepError(f"HTTP executor connection error: {exc}") from None
        status = response.status_code
        if status >= 500 or status == 429:
            raise RetryableStepError(f"HTTP {status} from executor: {_snippet(response)}")
        if status >= 400:
            raise PermanentStepError(f"HTTP {status} from executor: {_snippet(response)}")
        if status >= 300:
            raise PermanentStepError(f"HTTP {status} from executor (redirects are not followed)")
        try:
            output = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PermanentStepError(
                f"HTTP executor answered {status} with a body that is not JSON "
                f"(content-type {response.headers.get('content-type', 'none')!r})"
            ) from None
        return output

    async def aclose(self) -> None:
        await self.client.aclose()


def _snippet(response: httpx.Response, limit: int = 200) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:limit] + ("…" if len(text) > limit else "")
