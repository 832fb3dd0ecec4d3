"""Shared by the tests of what a hostile user can do: what the database holds, to show that
a refused request wrote nothing, and a refusal caught as a PostgREST caller sees it."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from tests.support import acting_as

# Every table a user's request can reach, each read whole: a refused request must leave
# all of them exactly as they were (rows, and the audit log's length).
WRITTEN = """
select
    (select md5(coalesce(string_agg(t::text, ',' order by t.id), '')) from public.task_steps t),
    (select md5(coalesce(string_agg(t::text, ',' order by t.id), '')) from public.agent_tasks t),
    (select md5(coalesce(string_agg(t::text, ',' order by t.id), '')) from public.agents t),
    (select md5(coalesce(string_agg(t::text, ',' order by t.id), ''))
       from public.agent_task_executions t),
    (select md5(coalesce(string_agg(t::text, ',' order by t.id), ''))
       from public.task_step_executions t),
    (select count(*) from public.audit_log)
"""


def written(conn: psycopg.Connection) -> tuple:
    """A fingerprint of everything a request could have written."""
    return conn.execute(WRITTEN).fetchone()


@dataclass
class Refusal:
    """What a refused call raised: SQLSTATE, message, detail, hint."""

    sqlstate: str | None = None
    message: str = ""
    detail: str | None = None
    hint: str | None = None

    @property
    def text(self) -> str:
        return "\n".join(part for part in (self.message, self.detail, self.hint) if part)


@contextlib.contextmanager
def refused(
    conn: psycopg.Connection, role: str, user_id: uuid.UUID | None = None
) -> Iterator[Refusal]:
    """Run the block as a PostgREST caller, expecting it to fail: the transaction rolls
    back as PostgREST's would, and what the error said is in the yielded Refusal. A block
    that does not fail is a test failure."""
    refusal = Refusal()
    try:
        with acting_as(conn, role, user_id):
            yield refusal
    except psycopg.Error as exc:
        refusal.sqlstate = exc.sqlstate
        refusal.message = exc.diag.message_primary or str(exc)
        refusal.detail = exc.diag.message_detail
        refusal.hint = exc.diag.message_hint
    else:
        raise AssertionError("the call was accepted")


def deep_json(levels: int, leaf: str = "1") -> str:
    """JSON text nested ``levels`` objects deep."""
    return '{"a": ' * levels + leaf + "}" * levels
