"""Wake on Supabase Realtime ``postgres_changes``, through supabase-py's async client.

The service subscribes with the service-role key (which bypasses RLS, so it hears every
user's work) on one channel with four bindings:

=====================  ======  =====================  ===============
table                  event   filter                 wakes with
=====================  ======  =====================  ===============
task_step_executions   INSERT  ``status=eq.queued``   ``step_ready``
task_step_executions   UPDATE  ``status=eq.queued``   ``step_ready``
agent_task_executions  INSERT                         ``run_created``
agent_task_executions  UPDATE  ``status=eq.cancelled`` ``run_changed``
=====================  ======  =====================  ===============

Realtime does not guarantee delivery, so the service sweeps (``sweep``) whenever
changes may have been missed; events only say "look now", the database decides what runs.
The server acknowledges a join at once but streams changes only after it has set up its
database subscription, which it announces with a ``system`` message (extension
``postgres_changes``, status ``ok``, "Subscribed to PostgreSQL") seconds later, and again
whenever its change capture restarts, without any socket drop. A change committed
between the acknowledgement and that message is never sent, so the source sweeps on
every such message as well as on every (re)join. A ``system`` message with status
``error`` is logged and treated as a lost subscription.

Reconnection is ours, not the client's: the client's own reconnect gives up for good
after ``max_retries`` failed attempts (inside a background task nobody awaits), after
which it never reconnects. So the client runs with ``auto_reconnect=False``, and any
loss (socket closed, channel error, join refused or timed out, reader task gone) ends
the session; :meth:`RealtimeWakeups.run` then builds a new client after a jittered,
capped exponential backoff and subscribes again.

Frames the client cannot parse are logged by the client (``realtime._async.client``,
formatted like every other log line) and skipped; changes whose ``record`` is unusable
are logged here and ignored. Nothing a server sends can end :meth:`run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from realtime.message import SuccessSystemPayload

from sync.retrying import backoff_seconds
from sync.settings import Settings
from sync.wakeups.base import Wake

log = logging.getLogger(__name__)

CHANNEL_NAME = "stepsync-work"


@dataclass(frozen=True)
class Binding:
    table: str
    event: str
    filter: str | None
    reason: str


BINDINGS = (
    Binding("task_step_executions", "INSERT", "status=eq.queued", "step_ready"),
    Binding("task_step_executions", "UPDATE", "status=eq.queued", "step_ready"),
    Binding("agent_task_executions", "INSERT", None, "run_created"),
    Binding("agent_task_executions", "UPDATE", "status=eq.cancelled", "run_changed"),
)


class RealtimeSettingError(ValueError):
    """``--listen realtime`` without the Supabase settings it needs."""


def realtime_source(settings: Settings) -> RealtimeWakeups:
    """The Realtime wake-up source ``stepsync serve --listen realtime`` runs."""
    if not settings.supabase_url or not settings.supabase_service_role_key:
        raise RealtimeSettingError(
            "--listen realtime needs STEPSYNC_SUPABASE_URL and "
            "STEPSYNC_SUPABASE_SERVICE_ROLE_KEY (or SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY)"
        )
    return RealtimeWakeups(settings.supabase_url, settings.supabase_service_role_key)


def realtime_url(supabase_url: str) -> str:
    """``https://<ref>.supabase.co`` → the client's base URL ``…/realtime/v1``."""
    return f"{supabase_url.rstrip('/')}/realtime/v1"


class RealtimeWakeups:
    name = "realtime"

    def __init__(
        self,
        supabase_url: str,
        service_role_key: SecretStr | str,
        *,
        schema: str = "public",
        initial_backoff_seconds: float = 0.5,
        max_backoff_seconds: float = 30.0,
        timeout_seconds: int = 10,
        heartbeat_seconds: int = 25,
        watchdog_seconds: float = 5.0,
    ) -> None:
        self.url = realtime_url(supabase_url)
        self._key = (
            service_role_key
            if isinstance(service_role_key, SecretStr)
            else SecretStr(service_role_key)
        )
        self.schema = schema
        self.initial_backoff_seconds = initial_backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.watchdog_seconds = watchdog_seconds
        # Set while joined (the server acknowledged the channel).
        self.subscribed = asyncio.Event()
        self.subscriptions = 0  # successful (re)joins so far
        # Set while the server says changes flow (its last "Subscribed to PostgreSQL"),
        # so a caller (the tests) can wait until change events can arrive.
        self.changes_flowing = asyncio.Event()
        self.capture_starts = 0  # "Subscribed to PostgreSQL" messages so far

    async def run(self, wake: Wake) -> None:
        failures = 0
        while True:
            try:
                was_subscribed = await self._session(wake)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure to connect or join: back off, retry
                was_subscribed = False
                log.warning(
                    "realtime connection failed: %s: %s",
                    type(exc).__name__,
                    _one_line(exc),
                )
            failures = 1 if was_subscribed else failures + 1
            delay = backoff_seconds(
                failures, self.initial_backoff_seconds, self.max_backoff_seconds
            )
            log.info("realtime reconnecting in %.1fs", delay)
            await asyncio.sleep(delay)

    async def _session(self, wake: Wake) -> bool:
        """One client, one subscription, until it is lost. Returns whether it subscribed."""
        lost = asyncio.Event()
        state = {"subscribed": False, "over": False}

        def on_state(status: RealtimeSubscribeStates, error: Exception | None) -> None:
            if state["over"]:  # a late timer of a client already thrown away
                return
            if status == RealtimeSubscribeStates.SUBSCRIBED:
                state["subscribed"] = True
                self.subscriptions += 1
                self.subscribed.set()
                log.info("realtime subscribed", extra={"channel": CHANNEL_NAME})
                _safe_wake(wake, "sweep")
            else:
                self.subscribed.clear()
                self.changes_flowing.clear()
                log.warning(
                    "realtime subscription lost: %s%s",
                    status.value,
                    f" ({_one_line(error)})" if error else "",
                )
                lost.set()

        client = AsyncRealtimeClient(
            self.url,
            token=self._key.get_secret_value(),
            auto_reconnect=False,
            hb_interval=self.heartbeat_seconds,
            timeout=self.timeout_seconds,
        )
        channel = client.channel(CHANNEL_NAME)
        channel.on_system(self._on_system(wake, state))
        for binding in BINDINGS:
            channel.on_postgres_changes(
                binding.event,
                callback=self._on_change(binding, wake),
                table=binding.table,
                schema=self.schema,
                filter=binding.filter,
            )
        try:
            await channel.subscribe(on_state)
            watchdog = asyncio.create_task(self._watch_reader(client, lost))
            try:
                await lost.wait()
            finally:
                watchdog.cancel()
        finally:
            state["over"] = True
            self.subscribed.clear()
            self.changes_flowing.clear()
            # The channel's own rejoin and join timeout must not outlive this session.
            channel.rejoin_timer.reset()
            channel.join_push.destroy()
            with contextlib.suppress(Exception):
                await client.close()
        return state["subscribed"]

    async def _watch_reader(self, client: AsyncRealtimeClient, lost: asyncio.Event) -> None:
        # The client reads the socket in a task it never awaits; if that task ends without
        # reporting a closed socket, no frame would ever arrive again.
        while not lost.is_set():
            reader = getattr(client, "_listen_task", None)
            if not client.is_connected or reader is None or reader.done():
                log.warning("realtime reader stopped; reconnecting")
                lost.set()
                return
            await asyncio.sleep(self.watchdog_seconds)

    def _on_system(self, wake: Wake, state: dict[str, bool]) -> Callable[[Any], None]:
        # Called synchronously by the client's reader for ``system`` messages with status
        # ok (the client turns status error into a channel error, which ``on_state``
        # logs and which ends the session). Must never raise.
        def started(payload: SuccessSystemPayload) -> None:
            if state["over"]:
                return
            try:
                extension, message = payload.extension, payload.message
            except AttributeError:
                log.warning("realtime system message ignored: %r", payload)
                return
            if extension != "postgres_changes":
                log.debug("realtime system message: %s (%s)", message, extension)
                return
            self.capture_starts += 1
            self.changes_flowing.set()
            log.info(
                "realtime changes flowing: %s",
                message,
                extra={"channel": CHANNEL_NAME, "capture_starts": self.capture_starts},
            )
            # Whatever was committed before this message was never streamed.
            _safe_wake(wake, "sweep")

        return started

    def _on_change(self, binding: Binding, wake: Wake) -> Callable[[Any], None]:
        # Called synchronously by the client's reader: it must never raise, or the reader
        # task dies with it.
        def deliver(payload: Any) -> None:
            try:
                record = payload["data"]["record"]
                if not isinstance(record, dict):
                    raise TypeError(f"record is {type(record).__name__}")
                if binding.filter and record.get("status") != binding.filter.split(".", 1)[1]:
                    raise ValueError(f"record status {record.get('status')!r} fails the filter")
            except Exception as exc:
                log.warning(
                    "realtime change ignored (%s on %s): %s",
                    binding.event,
                    binding.table,
                    _one_line(exc),
                )
                return
            _safe_wake(wake, binding.reason)

        return deliver


def _safe_wake(wake: Wake, reason: str) -> None:
    try:
        wake(reason)
    except Exception:
        log.exception("wake-up callback failed")


def _one_line(exc: BaseException | None) -> str:
    text = " ".join(str(exc).split()) if exc else ""
    return text[:300] or type(exc).__name__
