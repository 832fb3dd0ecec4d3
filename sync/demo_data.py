"""The demo's data set: a small app as it looks before stepsync, then one workflow.

Fixed ids keep the demo deterministic: every run shows the same tasks and steps.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb


def _id(n: int) -> uuid.UUID:
    return uuid.UUID(int=0xD0000000_0000_4000_8000_000000000000 + n)


USERS = {
    "alice": _id(1),
    "bob": _id(2),
    "carol": _id(3),
}
AGENTS = [
    # id, owner, name, system instructions
    (_id(11), "alice", "Research Assistant", "You research topics and summarise sources."),
    (_id(12), "bob", "Support Triage", "You sort support tickets by urgency."),
    (_id(13), "carol", "Release Writer", "You write release notes for engineers."),
]
# Legacy single-instruction tasks: id, owner, agent, name, status, instructions.
LEGACY_TASKS = [
    (
        _id(21),
        "alice",
        _id(11),
        "Daily news digest",
        "active",
        "Collect today's AI infrastructure news and summarise the five most important items.",
    ),
    (
        _id(22),
        "alice",
        _id(11),
        "Weekly competitor scan",
        "paused",
        "List pricing changes announced by the three main competitors this week.",
    ),
    (
        _id(23),
        "alice",
        _id(11),
        "",
        "active",
        "Check the status page of every vendor we depend on and report any incident.",
    ),
    (
        _id(24),
        "bob",
        _id(12),
        "Triage new tickets",
        "active",
        "Read tickets opened in the last hour and tag each as urgent, normal or low.",
    ),
    (
        _id(25),
        "bob",
        _id(12),
        "Close stale tickets",
        "completed",
        "Close tickets without a customer reply for 30 days, with a polite note.",
    ),
    (_id(26), "bob", _id(12), "Placeholder", "failed", "   "),
]
WORKFLOW_TASK = (
    _id(31),
    "carol",
    _id(13),
    "Draft release notes",
    "active",
    "Write the release notes for version 2.4.",
)
# The 4-step workflow carol saves through save_task_steps, as the UI does.
WORKFLOW_STEPS = [
    {
        "step_name": "Collect merged changes",
        "instructions": "List the pull requests merged since version 2.3, one line each.",
        "context_data": {"repository": "acme/app", "since": "v2.3.0"},
    },
    {
        "step_name": "Group by theme",
        "instructions": "Group the changes into features, fixes and internal work.",
        "include_previous_context": True,
        "context_mode": "previous",
    },
    {
        "step_name": "Draft the notes",
        "instructions": "Write release notes from the grouped changes, features first.",
        "include_previous_context": True,
        "context_mode": "selective",
        "context_paths": ["$.steps[1].output", "$.task.name"],
        "max_attempts": 3,
        "retry_backoff_seconds": 1,
    },
    {
        "step_name": "Review tone",
        "instructions": "Make the notes friendly and concise; keep every item.",
        "include_previous_context": True,
        "context_mode": "custom",
        "context_template": "Draft to review ({{task.name}}):\n{{previous.output}}",
        "context_data": {"audience": "customers"},
    },
]


@dataclass(frozen=True)
class DemoData:
    workflow_task: uuid.UUID
    legacy_task: uuid.UUID  # the legacy task the demo runs after the backfill
    owner_of: dict[uuid.UUID, uuid.UUID]


def load_legacy_data(conn: psycopg.Connection) -> None:
    """Users, agents and single-instruction tasks, inserted the way the app does today."""
    for name, user_id in USERS.items():
        conn.execute(
            "insert into auth.users (id, email) values (%s, %s) on conflict do nothing",
            [user_id, f"{name}@example.com"],
        )
    for agent_id, owner, name, system in AGENTS:
        conn.execute(
            "insert into public.agents (id, user_id, name, system_instructions)"
            " values (%s, %s, %s, %s) on conflict do nothing",
            [agent_id, USERS[owner], name, system],
        )
    for task_id, owner, agent_id, name, status, instructions in [*LEGACY_TASKS, WORKFLOW_TASK]:
        conn.execute(
            "insert into public.agent_tasks"
            " (id, user_id, agent_id, name, status, instructions, cron_expression)"
            " values (%s, %s, %s, %s, %s, %s, '0 8 * * *') on conflict do nothing",
            [task_id, USERS[owner], agent_id, name, status, instructions],
        )


def save_workflow(conn: psycopg.Connection) -> None:
    """Carol saves her 4-step workflow through the same RPC and role the UI uses."""
    task_id, owner = WORKFLOW_TASK[0], USERS[WORKFLOW_TASK[1]]
    claims = json.dumps({"sub": str(owner), "role": "authenticated"})
    with conn.transaction():
        conn.execute("set local role authenticated")
        conn.execute("select set_config('request.jwt.claims', %s, true)", [claims])
        conn.execute("select public.save_task_steps(%s, %s)", [task_id, Jsonb(WORKFLOW_STEPS)])


def demo_data() -> DemoData:
    owners = {task[0]: USERS[task[1]] for task in [*LEGACY_TASKS, WORKFLOW_TASK]}
    return DemoData(workflow_task=WORKFLOW_TASK[0], legacy_task=LEGACY_TASKS[0][0], owner_of=owners)
