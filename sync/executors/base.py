"""The one small interface every executor implements."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class StepRequest:
    """Everything an executor needs to run one attempt of one step of one run."""

    run_id: uuid.UUID
    step_execution_id: uuid.UUID
    task_id: uuid.UUID
    user_id: uuid.UUID
    agent_id: uuid.UUID
    step_order: int
    step_name: str
    instructions: str
    context: dict[str, Any]  # assembled in SQL: earlier steps as asked, plus context_data
    attempt: int
    timeout_seconds: float
    # Same for every attempt of this step in this run, so a receiver can deduplicate.
    idempotency_key: str
    conversation_id: uuid.UUID | None = None
    trigger_data: dict[str, Any] = field(default_factory=dict)


class StepError(Exception):
    """An attempt failed. ``retryable`` says whether another attempt may succeed."""

    retryable: bool = True

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class RetryableStepError(StepError):
    """A transient failure: timeouts, 5xx, 429, connection errors."""

    retryable = True


class PermanentStepError(StepError):
    """Retrying cannot help: 4xx, bad configuration, non-JSON output."""

    retryable = False


class Executor(Protocol):
    """Runs one step attempt and returns its JSON-serialisable output.

    Raise :class:`StepError` (or a subclass) for failures; the service applies the
    step's timeout around the call, records the output and moves the run on.
    """

    name: str

    async def execute(self, request: StepRequest) -> Any: ...

    async def aclose(self) -> None: ...
