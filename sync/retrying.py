"""Retries and backoff: one policy shape for every place that waits and tries again.

Every retry loop is tenacity's, with one wait: exponential backoff, capped, then jittered
down by up to half, so workers that lost the same server do not all come back in the same
instant. By default only connection errors are retried (``psycopg.OperationalError``,
which includes a pool timeout, a cancelled statement and a serialization failure, and
``OSError``): a statement the database refuses, or a bug, fails the same way on every
try. Each retry is one structured log line: ``retrying`` (what), ``failures`` (in a row),
``retry_in_seconds``, ``error``, plus the caller's own fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from tenacity import (
    AsyncRetrying,
    AttemptManager,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
    stop_never,
)
from tenacity.wait import wait_base

log = logging.getLogger(__name__)

T = TypeVar("T")

CONNECTION_ERRORS = (psycopg.OperationalError, OSError)


def is_connection_error(exc: BaseException) -> bool:
    """Whether trying again may help: the database or the network went away for a while."""
    return isinstance(exc, CONNECTION_ERRORS)


def is_error(exc: BaseException) -> bool:
    """Any error, but not a cancellation (or an exit): for loops that must not die."""
    return isinstance(exc, Exception)


def backoff_seconds(failures: int, initial: float, maximum: float) -> float:
    """Seconds to wait after ``failures`` failures in a row: doubling from ``initial`` up
    to ``maximum``, then jittered down by up to half."""
    base = min(initial * 2 ** (failures - 1), maximum)
    return base * (0.5 + random.random() / 2)


@dataclass(frozen=True)
class Policy:
    """How to retry: the backoff, how many attempts or for how long (None: until stopped
    or cancelled), which errors, and whether each retry logs the error's traceback (our
    own bugs)."""

    initial_seconds: float
    max_seconds: float
    attempts: int | None = None
    give_up_after_seconds: float | None = None
    retry_on: Callable[[BaseException], bool] = is_connection_error
    traceback: bool = False


# A step's result (completion, failure, hand-back), for up to a minute: a database outage
# shorter than that loses no result. The lease may run out meanwhile; the owner's late
# result is still accepted while no other worker has taken the step over, and reapers
# leave it alone for a lease's length after they or the database come back
# (sync/maintenance.py). Waits stay under 2 s, so a result gets through within about two
# seconds of the database's return, well inside that grace.
REPORT = Policy(initial_seconds=0.2, max_seconds=2.0, give_up_after_seconds=60.0)
# A claim: until it works or the service stops; short, so work resumes within about two
# seconds of the database coming back.
CLAIM = Policy(initial_seconds=0.5, max_seconds=2.0)
# A long-lived connection (LISTEN, Realtime): reconnect for as long as the service runs.
RECONNECT = Policy(initial_seconds=0.5, max_seconds=30.0)
# One of the service's background loops raised: a bug. Restart it, with its traceback.
RESTART = Policy(initial_seconds=1.0, max_seconds=10.0, retry_on=is_error, traceback=True)


class WaitBackoff(wait_base):
    """:func:`backoff_seconds` as a tenacity wait."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum

    def __call__(self, retry_state: RetryCallState) -> float:
        return backoff_seconds(retry_state.attempt_number, self.initial, self.maximum)


def loop(
    policy: Policy,
    what: str,
    *,
    fields: Mapping[str, Any] | None = None,
    until: asyncio.Event | None = None,
) -> AsyncRetrying:
    """A tenacity loop for ``policy`` (``async for attempt in …: with attempt: …``).

    It raises the last error when it gives up; ``until`` set stops it too, also during a
    wait (the attempt after that wait still runs: :func:`call` skips it).
    """
    stops: list[Any] = []
    if policy.attempts is not None:
        stops.append(stop_after_attempt(policy.attempts))
    if policy.give_up_after_seconds is not None:
        stops.append(stop_after_delay(policy.give_up_after_seconds))
    if until is not None:
        stops.append(lambda _: until.is_set())
    return AsyncRetrying(
        retry=retry_if_exception(policy.retry_on),
        wait=WaitBackoff(policy.initial_seconds, policy.max_seconds),
        stop=stop_any(*stops) if stops else stop_never,
        sleep=asyncio.sleep if until is None else _sleep_until(until),
        before_sleep=_log_retry(policy, what, dict(fields or {})),
        reraise=True,
    )


async def call(
    fn: Callable[[], Awaitable[T]],
    policy: Policy,
    what: str,
    *,
    fields: Mapping[str, Any] | None = None,
    before_retry: Callable[[], Awaitable[None]] | None = None,
    until: asyncio.Event | None = None,
) -> T:
    """``await fn()``, tried again as ``policy`` says; raises the last error when it gives
    up (attempts used, ``until`` set, or an error the policy does not retry).

    ``before_retry`` runs before each new attempt (e.g. replace broken pooled
    connections). The first attempt runs outside tenacity: it is the one that nearly
    always succeeds, on every step's result, and a retry loop around it would cost tens
    of microseconds per call for nothing.
    """
    try:
        return await fn()
    except BaseException as exc:
        if not policy.retry_on(exc):
            raise
        last = exc
    first = True
    async for attempt in loop(policy, what, fields=fields, until=until):
        with attempt:
            if first:  # the failure above, so tenacity counts, logs and waits for it
                first = False
                raise last
            if until is not None and until.is_set():
                raise last  # stopped during the wait: give up with the last error
            if before_retry is not None:
                await before_retry()
            try:
                return await fn()
            except BaseException as exc:
                last = exc
                raise
    raise AssertionError("unreachable: tenacity returns or raises")


def reset_backoff(attempt: AttemptManager) -> None:
    """A session got through (connected, subscribed): when it is lost, back off from the
    start again rather than from where the failures before it had left the wait."""
    attempt.retry_state.attempt_number = 1


def _sleep_until(until: asyncio.Event) -> Callable[[float], Awaitable[None]]:
    async def sleep(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), seconds)

    return sleep


def _log_retry(
    policy: Policy, what: str, fields: dict[str, Any]
) -> Callable[[RetryCallState], None]:
    def log_retry(retry_state: RetryCallState) -> None:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        log.warning(
            f"{what} failed; retrying",
            extra={
                **fields,
                "retrying": what,
                "failures": retry_state.attempt_number,
                "retry_in_seconds": round(retry_state.next_action.sleep, 2),
                "error": one_line(error),
            },
            exc_info=error if policy.traceback else None,
        )

    return log_retry


def one_line(error: BaseException | None) -> str:
    """An error as one short line for a log field: type when the message is empty."""
    if error is None:
        return ""
    text = " ".join(str(error).split())[:300]
    return text or type(error).__name__
