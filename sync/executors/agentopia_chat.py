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
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sync.executors.base import PermanentStepError, StepRequest
from sync.executors.edge_function import EdgeFunctionExecutor

CHAT_CONTRACT_VERSION = "2.0.0"
SERVICE_HEADER = "X-Agentopia-Service"
SERVICE_NAME = "task-executor"

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
    trigger_data = (context.get("run") or {}).get("trigger_data") if "mode" in context else None
    if trigger_data:
        material = {**material, "trigger_data": trigger_data}
    if not material:
        return request.instructions
    rendered = json.dumps(material, indent=2, ensure_ascii=False, sort_keys=True)
    return f"Context:\n```json\n{rendered}\n```\n\nInstructions:\n{request.instructions}"


def chat_body(request: StepRequest) -> dict[str, Any]:
    return {
        "version": CHAT_CONTRACT_VERSION,
        "message": {"role": "user", "content": {"type": "text", "text": message_text(request)}},
        "context": {
            "agent_id": str(request.agent_id),
            "user_id": str(request.user_id),
            "conversation_id": str(run_conversation_id(request)),
            "session_id": str(run_session_id(request)),
        },
    }


class AgentopiaChatExecutor(EdgeFunctionExecutor):
    """The legacy ``chat`` contract on top of the generic Edge Function call."""

    name = "agentopia_chat"

    def headers(self, request: StepRequest) -> dict[str, str]:
        return {**super().headers(request), SERVICE_HEADER: SERVICE_NAME}

    def body(self, request: StepRequest) -> dict[str, Any]:
        return chat_body(request)

    def output(self, answer: Any, request: StepRequest) -> Any:
        text = _answer_text(answer)
        if text is None:
            raise PermanentStepError(
                f"Edge Function {self.function_name} answered without data.message.content.text "
                f"(top-level keys: {sorted(answer) if isinstance(answer, dict) else type(answer).__name__})"
            )
        return {
            "text": text,
            "conversation_id": str(run_conversation_id(request)),
            "session_id": str(run_session_id(request)),
        }


def _answer_text(answer: Any) -> str | None:
    node: Any = answer
    for key in ("data", "message", "content", "text"):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, str) else None
