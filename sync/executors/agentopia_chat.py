"""Run a step through the legacy app's ``chat`` Edge Function, unchanged.

The legacy ``task-executor`` function ran a task by posting its instructions to ``chat``
with the header ``X-Agentopia-Service: task-executor`` and the body::

    {"version": "2.0.0",
     "message": {"role": "user", "content": {"type": "text", "text": <text>}},
     "context": {"agent_id", "user_id", "conversation_id", "session_id"}}

and read the agent's answer at ``data.message.content.text``. This executor speaks the
same contract, so a deployment can move its tasks to stepsync without touching ``chat``.
Each step's text is its context (what the engine assembled from earlier steps) followed
by its instructions; a step with nothing to add sends its instructions alone, exactly
what the legacy executor sent for a single-instruction task.

All steps of one run share one conversation and one session, so the agent sees the run
as one conversation: the run's ``conversation_id`` when it has one, else an id derived
from the run id; the session id is always derived from the run id.

Around the call it does what the legacy executor did, when the service gives it the
database (:meth:`AgentopiaChatExecutor.attach_database`): the conversation's
``conversation_sessions`` row exists and is touched before and after, and the step's
prompt is posted to ``chat_messages_v2`` as the owner's message, so the chat shows what
the agent was asked (``stepsync.open_chat_turn``; the app's tables, skipped where they do
not exist). The body carries the legacy call's options too (``max_messages`` 20).
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any, Protocol

import psycopg

from sync.executors.base import PermanentStepError, RetryableStepError, StepRequest
from sync.executors.edge_function import EdgeFunctionExecutor

log = logging.getLogger(__name__)

CHAT_CONTRACT_VERSION = "2.0.0"
SERVICE_HEADER = "X-Agentopia-Service"
SERVICE_NAME = "task-executor"
# What the legacy executor asked of chat: the agent reads the conversation's last 20 messages.
CHAT_OPTIONS = {"context": {"max_messages": 20}}

# Fixed namespaces: the same run id always yields the same ids, on any worker, any attempt.
CONVERSATION_NAMESPACE = uuid.UUID("6f1d3c8e-6a43-5b8e-9d2a-0c7f2e1b5a10")
SESSION_NAMESPACE = uuid.UUID("2b8e4f61-93c5-5d07-8e1f-4a6b9c3d7e25")


def run_conversation_id(request: StepRequest) -> uuid.UUID:
    return request.conversation_id or uuid.uuid5(CONVERSATION_NAMESPACE, str(request.run_id))


def run_session_id(request: StepRequest) -> uuid.UUID:
    return uuid.uuid5(SESSION_NAMESPACE, str(request.run_id))


# Keys of the engine's step context that carry material for the agent; the rest (mode,
# task, run and step ids) is bookkeeping the legacy executor never sent either.
MATERIAL_KEYS = ("previous", "steps", "selected", "context_data")


def message_text(request: StepRequest) -> str:
    """What the agent reads: the step's context (when it has any), then its instructions.

    A ``custom`` context is the user's own rendered template and is sent as written; other
    modes send their material as a JSON block. A step with nothing to add sends its
    instructions alone, exactly what the legacy executor sent.
    """
    context = request.context or {}
    if "mode" not in context:  # not the engine's shape: send all of it
        material = context
    elif context.get("mode") == "custom":
        rendered = context.get("rendered")
        if rendered:
            return f"{rendered}\n\nInstructions:\n{request.instructions}"
        material = {}
    else:
        material = {k: context[k] for k in MATERIAL_KEYS if context.get(k) not in (None, [], {})}
    run = (context.get("run") or {}) if "mode" in context else {}
    # An event's data is material; a schedule's fire time is bookkeeping (the legacy
    # executor sent a scheduled task its instructions alone).
    trigger_data = run.get("trigger_data") if run.get("trigger_type") != "scheduled" else None
    if trigger_data:
        material = {**material, "trigger_data": trigger_data}
    if not material:
        return request.instructions
    rendered = json.dumps(material, indent=2, ensure_ascii=False, sort_keys=True)
    return f"Context:\n```json\n{rendered}\n```\n\nInstructions:\n{request.instructions}"


def chat_body(
    request: StepRequest, conversation_id: uuid.UUID | None = None, text: str | None = None
) -> dict[str, Any]:
    return {
        "version": CHAT_CONTRACT_VERSION,
        "message": {
            "role": "user",
            "content": {"type": "text", "text": message_text(request) if text is None else text},
        },
        "context": {
            "agent_id": str(request.agent_id),
            "user_id": str(request.user_id),
            "conversation_id": str(conversation_id or run_conversation_id(request)),
            "session_id": str(run_session_id(request)),
        },
        "options": CHAT_OPTIONS,
    }


class ChatLog(Protocol):
    """Where the app's chat tables are written (sync.db.Database)."""

    async def open_chat_turn(
        self,
        request: StepRequest,
        *,
        derived_conversation_id: uuid.UUID,
        session_id: uuid.UUID,
        text: str,
    ) -> uuid.UUID: ...

    async def touch_chat_session(
        self, conversation_id: uuid.UUID, agent_id: uuid.UUID, user_id: uuid.UUID
    ) -> bool: ...


class AgentopiaChatExecutor(EdgeFunctionExecutor):
    """The legacy ``chat`` contract on top of the generic Edge Function call."""

    name = "agentopia_chat"

    def __init__(self, *args: Any, chat_log: ChatLog | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chat_log = chat_log

    def attach_database(self, db: ChatLog) -> None:
        """The service's pool: the chat tables are written through it."""
        self.chat_log = db

    def headers(self, request: StepRequest) -> dict[str, str]:
        return {**super().headers(request), SERVICE_HEADER: SERVICE_NAME}

    def body(self, request: StepRequest) -> dict[str, Any]:
        return chat_body(request)

    async def execute(self, request: StepRequest) -> Any:
        text = message_text(request)
        conversation = run_conversation_id(request)
        if self.chat_log is not None:
            conversation = await self._open_turn(request, conversation, text)
        answer = await self.call(request, chat_body(request, conversation, text))
        if self.chat_log is not None:
            await self._touch(request, conversation)
        return self.result(answer, request, conversation)

    def output(self, answer: Any, request: StepRequest) -> Any:
        return self.result(answer, request, run_conversation_id(request))

    def result(self, answer: Any, request: StepRequest, conversation: uuid.UUID) -> Any:
        text = _answer_text(answer)
        if text is None:
            raise PermanentStepError(
                f"Edge Function {self.function_name} answered without data.message.content.text "
                f"(top-level keys: {sorted(answer) if isinstance(answer, dict) else type(answer).__name__})"
            )
        return {
            "text": text,
            "conversation_id": str(conversation),
            "session_id": str(run_session_id(request)),
        }

    async def _open_turn(
        self, request: StepRequest, conversation: uuid.UUID, text: str
    ) -> uuid.UUID:
        assert self.chat_log is not None
        try:
            return await self.chat_log.open_chat_turn(
                request,
                derived_conversation_id=conversation,
                session_id=run_session_id(request),
                text=text,
            )
        except psycopg.OperationalError as exc:
            raise RetryableStepError(
                f"could not post the prompt to the chat: {_first_line(exc)}"
            ) from exc
        except psycopg.Error as exc:
            # The legacy executor failed the run when its message could not be written.
            raise PermanentStepError(
                f"could not post the prompt to the chat: {_first_line(exc)}"
            ) from exc

    async def _touch(self, request: StepRequest, conversation: uuid.UUID) -> None:
        assert self.chat_log is not None
        try:
            await self.chat_log.touch_chat_session(conversation, request.agent_id, request.user_id)
        except psycopg.Error as exc:  # best effort, as in the legacy executor
            log.warning(
                "conversation session not touched after the chat call",
                extra={"run_id": str(request.run_id), "error": _first_line(exc)},
            )


def _answer_text(answer: Any) -> str | None:
    node: Any = answer
    for key in ("data", "message", "content", "text"):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, str) else None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
