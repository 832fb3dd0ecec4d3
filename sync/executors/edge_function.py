"""Run a step by calling a Supabase Edge Function: ``POST {SUPABASE_URL}/functions/v1/<name>``.

The function receives the step as JSON and answers with JSON, which becomes the step's
output. The service-role key goes in ``Authorization: Bearer`` (the Supabase gateway
checks it) and ``Idempotency-Key`` carries the step's key, the same for every attempt
of this step in this run, so a function that saw the first attempt can deduplicate.

How an answer is classified decides whether the engine retries:

- 2xx with a JSON body: success.
- 5xx, 429, 408, a timeout or a connection error: :class:`RetryableStepError`.
- any other 4xx, a redirect, or a 2xx whose body is not JSON:
  :class:`PermanentStepError` (the same request would fail the same way).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
from pydantic import SecretStr

from sync.executors.base import PermanentStepError, RetryableStepError, StepRequest
from sync.executors.http import request_body

logger = logging.getLogger(__name__)

# Statuses where the same request may succeed later.
RETRYABLE_STATUSES = frozenset({408, 429})
# How much of an error body to quote in the step's error message.
ERROR_BODY_CHARS = 300


def functions_url(supabase_url: str, function_name: str) -> str:
    """``https://<ref>.supabase.co`` + ``chat`` → ``https://<ref>.supabase.co/functions/v1/chat``."""
    if not function_name or "/" in function_name:
        raise ValueError(f"invalid Edge Function name {function_name!r}")
    return f"{supabase_url.rstrip('/')}/functions/v1/{function_name}"


def step_payload(request: StepRequest) -> dict[str, Any]:
    """The step as JSON: what the generic HTTP executor sends, less ``timeout_seconds``
    (the call's own timeout enforces it)."""
    body = request_body(request)
    del body["timeout_seconds"]
    return body


class EdgeFunctionExecutor:
    """Posts each step to one Edge Function and returns its JSON answer as the output."""

    name = "edge_function"

    def __init__(
        self,
        supabase_url: str,
        service_role_key: SecretStr | str,
        function_name: str,
        *,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = functions_url(supabase_url, function_name)
        self.function_name = function_name
        self._key = (
            service_role_key
            if isinstance(service_role_key, SecretStr)
            else SecretStr(service_role_key)
        )
        self._client = client or httpx.AsyncClient(follow_redirects=False)
        self._owns_client = client is None

    # Subclasses change what is sent and what is kept; the HTTP handling stays here.
    def headers(self, request: StepRequest) -> dict[str, str]:
        key = self._key.get_secret_value()
        return {
            "Authorization": f"Bearer {key}",
            "apikey": key,
            "Idempotency-Key": request.idempotency_key,
            "Content-Type": "application/json",
        }

    def body(self, request: StepRequest) -> dict[str, Any]:
        return step_payload(request)

    def output(self, answer: Any, request: StepRequest) -> Any:
        return answer

    async def execute(self, request: StepRequest) -> Any:
        return self.output(await self.call(request, self.body(request)), request)

    async def call(self, request: StepRequest, body: dict[str, Any]) -> Any:
        """POST ``body`` for this step; the function's JSON answer, or a StepError."""
        # The step's own timeout is the only limit: a chat turn may run as long as its
        # step allows.
        timeout = request.timeout_seconds
        try:
            response = await self._client.post(
                self.url,
                json=body,
                headers=self.headers(request),
                timeout=timeout,
            )
        except httpx.TimeoutException as exc:
            raise RetryableStepError(
                f"Edge Function {self.function_name} did not answer within "
                f"{timeout:g}s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise RetryableStepError(
                f"cannot reach Edge Function {self.function_name}: {type(exc).__name__}: {exc}"
            ) from exc
        return self._answer(response)

    def _answer(self, response: httpx.Response) -> Any:
        status = response.status_code
        if status >= 500 or status in RETRYABLE_STATUSES:
            retry_after = response.headers.get("retry-after")
            hint = f" (Retry-After: {retry_after})" if retry_after else ""
            raise RetryableStepError(f"{self._describe(response)}{hint}")
        if not 200 <= status < 300:
            raise PermanentStepError(self._describe(response))
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            content_type = response.headers.get("content-type", "no content type")
            raise PermanentStepError(
                f"Edge Function {self.function_name} answered {status} with a body that is "
                f"not JSON ({content_type}): {_snippet(response.text)!r}"
            ) from exc

    def _describe(self, response: httpx.Response) -> str:
        detail = _snippet(response.text)
        try:
            parsed = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str | dict):
            detail = _snippet(
                json.dumps(parsed["error"])
                if isinstance(parsed["error"], dict)
                else parsed["error"]
            )
        reason = response.reason_phrase or ""
        return f"Edge Function {self.function_name} answered {response.status_code} {reason}: {detail}".rstrip(
            ": "
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_BODY_CHARS else text[:ERROR_BODY_CHARS] + "…"
