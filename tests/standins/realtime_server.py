"""A stand-in for the Supabase Realtime server, fed by real changes from a test database.

It speaks what the supabase-py client speaks to the hosted server: a websocket at
``/realtime/v1/websocket?apikey=<key>&vsn=1.0.0`` carrying Phoenix channel frames in the
v1 JSON serializer (``{topic, event, payload, ref, join_ref}``):

- ``heartbeat`` on topic ``phoenix`` is answered with ``phx_reply`` ok;
- ``phx_join`` with a ``postgres_changes`` config is answered at once with ``phx_reply``
  ``{status: ok, response: {postgres_changes: [{id, event, schema, table, filter}]}}``
  (bindings in the order asked), then, :attr:`subscribe_delay` seconds later (the real
  server takes 1–3 s, 5–10 s after errors), the ``system`` message "Subscribed to
  PostgreSQL"; changes committed before that message are not sent to the channel, as on
  the real server, whose database subscription does not exist yet. A filter it cannot
  parse is refused with ``{status: error, response: {reason}}``;
- a change is sent as ``postgres_changes`` ``{ids, data: {schema, table,
  commit_timestamp, type, columns, record, old_record, errors}}`` to every binding whose
  event, table and filter match. ``old_record`` holds only the primary key unless the
  table has ``REPLICA IDENTITY FULL``, as on the real server.
- a wrong ``apikey`` is refused at the handshake (401), as the Supabase gateway does.

Changes come from the database, not from the test: :meth:`RealtimeStandIn.start`
installs a capture trigger (schema ``realtime_standin``, test databases only) on the
watched tables, and the stand-in ``LISTEN``s for what it sends, so a frame goes out only
after a real transaction committed a real row, and only for tables in the
``supabase_realtime`` publication (the real server streams that publication).

RLS per subscriber, as the real server applies it: a channel joined with the service-role
key as ``access_token`` sees every change (service_role bypasses RLS); one joined with a
user's JWT (HS256, signed with ``jwt_secret``) gets an INSERT or UPDATE only if that user
can SELECT the row, checked by reading it back as ``authenticated`` with the token's
claims in ``request.jwt.claims`` — exactly how PostgREST evaluates the same policies.
DELETE events are not checked, as on the real server. A bad token is refused at join.

Tests steer it: :meth:`drop_connections` cuts every socket without a close frame,
:attr:`refusing` turns new handshakes away (a server that is down), :meth:`inject`
sends raw frames (malformed or unknown ones included), :attr:`subscribe_delay` holds
back "Subscribed to PostgreSQL" after a join, and :meth:`stop_capture` /
:meth:`resume_capture` restart the change capture the way the real server's does: changes
are dropped in between, and resuming sends "Subscribed to PostgreSQL" again on the same
sockets. :attr:`announcements` records when each of those messages went out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
from psycopg import sql
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

log = logging.getLogger(__name__)

WEBSOCKET_PATH = "/realtime/v1/websocket"
NOTIFY_CHANNEL = "realtime_standin_changes"
FILTER_OPERATORS = ("eq", "neq", "lt", "lte", "gt", "gte", "in")

CAPTURE_SQL = f"""
create schema if not exists realtime_standin;
create or replace function realtime_standin.capture() returns trigger
language plpgsql set search_path = '' as $$
declare
    change jsonb := jsonb_build_object(
        'schema', tg_table_schema,
        'table', tg_table_name,
        'type', tg_op,
        'commit_timestamp', to_char(clock_timestamp() at time zone 'utc',
                                    'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'record', case when tg_op <> 'DELETE' then to_jsonb(new) end,
        'old_record', case when tg_op <> 'INSERT' then to_jsonb(old) end);
begin
    -- pg_notify payloads stop at 8000 bytes; the real server also drops big values.
    if octet_length(change::text) > 7500 then
        change := change
            || jsonb_build_object('record', (select jsonb_object_agg(key, value)
                from jsonb_each(change -> 'record') where octet_length(value::text) <= 64))
            || jsonb_build_object('old_record', (select jsonb_object_agg(key, value)
                from jsonb_each(change -> 'old_record') where octet_length(value::text) <= 64))
            || jsonb_build_object('errors', jsonb_build_array('Error 413: Payload Too Large'));
    end if;
    perform pg_notify('{NOTIFY_CHANNEL}', change::text);
    return null;
end
$$;
"""


@dataclass
class Binding:
    id: int
    event: str
    schema: str
    table: str | None
    filter: str | None
    condition: tuple[str, str, Any] | None  # (column, operator, value)

    def reply(self) -> dict[str, Any]:
        answer = {"id": self.id, "event": self.event, "schema": self.schema}
        if self.table is not None:
            answer["table"] = self.table
        if self.filter is not None:
            answer["filter"] = self.filter
        return answer

    def matches(self, change: dict[str, Any]) -> bool:
        if self.event not in ("*", change["type"]):
            return False
        if self.schema not in ("*", change["schema"]):
            return False
        if self.table not in (None, "*", change["table"]):
            return False
        if self.condition is None or change["type"] == "DELETE":
            return True  # DELETE events cannot be filtered
        column, operator, expected = self.condition
        return _compare((change.get("record") or {}).get(column), operator, expected)


@dataclass
class Subscriber:
    socket: ServerConnection
    # topic → (join ref, bindings, JWT claims of the subscriber or None for service_role)
    channels: dict[str, tuple[str | None, list[Binding], dict | None]] = field(default_factory=dict)
    # Topics whose "Subscribed to PostgreSQL" went out since the join or the last capture
    # restart: only these receive changes.
    flowing: set[str] = field(default_factory=set)


def make_jwt(secret: str, claims: dict[str, Any]) -> str:
    """An HS256 JWT, as Supabase Auth issues them (tests sign their users' tokens)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = part(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(signature)}"


def verify_jwt(secret: str, token: str) -> dict[str, Any]:
    try:
        head, body, signature = token.split(".")
        expected = hmac.new(secret.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        given = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        if not hmac.compare_digest(expected, given):
            raise ValueError("bad signature")
        return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, TypeError) as exc:
        raise ValueError(f"InvalidJWTToken: {exc}") from None


class RealtimeStandIn:
    def __init__(
        self,
        database_url: str,
        apikey: str,
        *,
        anon_key: str | None = None,
        jwt_secret: str | None = None,
        tables: tuple[str, ...] = ("public.task_step_executions", "public.agent_task_executions"),
    ) -> None:
        self.database_url = database_url
        self.apikey = apikey  # the service-role key
        self.anon_key = anon_key
        self.jwt_secret = jwt_secret
        self.tables = tables
        self.refusing = False
        self.joins: list[dict[str, Any]] = []  # every phx_join payload received
        self.handshakes = 0  # accepted websocket connections
        self.refused = 0  # handshakes turned away (down, bad apikey, bad path)
        self.heartbeats = 0
        self.frames_sent: list[dict[str, Any]] = []  # postgres_changes frames sent
        # Seconds between a join's reply and its "Subscribed to PostgreSQL".
        self.subscribe_delay = 0.0
        # (time.monotonic(), topic) of every "Subscribed to PostgreSQL" sent.
        self.announcements: list[tuple[float, str]] = []
        # Changes a joined channel matched but did not get: its capture was not running.
        self.dropped: list[dict[str, Any]] = []
        self._capturing = True
        self._announcers: set[asyncio.Task] = set()
        self._subscribers: dict[ServerConnection, Subscriber] = {}
        self._binding_ids = itertools.count(31_000_001)
        self._server: Server | None = None
        self._listener: asyncio.Task | None = None
        self._columns: dict[tuple[str, str], list[dict[str, str]]] = {}
        self._primary_keys: dict[tuple[str, str], list[str]] = {}
        self._replica_full: dict[tuple[str, str], bool] = {}
        self._listening = asyncio.Event()
        self.changed = asyncio.Condition()

    # --- lifecycle -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The project URL a client is configured with (``SUPABASE_URL``)."""
        assert self._server is not None, "start the stand-in first"
        host, port = next(iter(self._server.sockets)).getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> RealtimeStandIn:
        await self._install_capture()
        self._listener = asyncio.create_task(self._listen_for_changes())
        await self._listening.wait()
        self._server = await serve(
            self._serve_socket, "127.0.0.1", 0, process_request=self._check_handshake
        )
        return self

    async def stop(self) -> None:
        for task in self._announcers:
            task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener

    async def __aenter__(self) -> RealtimeStandIn:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- test controls ---------------------------------------------------------------------
    def drop_connections(self) -> int:
        """Cut every socket without a close frame, as a crashed node or a network cut would."""
        sockets = list(self._subscribers)
        for socket in sockets:
            socket.transport.abort()
        return len(sockets)

    async def inject(self, frame: str | bytes | dict[str, Any]) -> None:
        """Send a raw frame to every connected client."""
        text = json.dumps(frame) if isinstance(frame, dict) else frame
        for socket in list(self._subscribers):
            with contextlib.suppress(ConnectionClosed):
                await socket.send(text)

    def stop_capture(self) -> None:
        """The change capture stops (the real server restarts it on replication errors):
        sockets and channels stay, changes are dropped until :meth:`resume_capture`."""
        self._capturing = False
        for subscriber in self._subscribers.values():
            subscriber.flowing.clear()

    async def resume_capture(self) -> None:
        """The capture runs again: every joined channel gets "Subscribed to PostgreSQL"
        once more, and changes flow from here on."""
        self._capturing = True
        for subscriber in list(self._subscribers.values()):
            for topic, (_ref, bindings, _claims) in list(subscriber.channels.items()):
                if bindings:
                    await self._announce(subscriber, topic)

    def binding_ids(self) -> list[int]:
        return [
            b.id
            for sub in self._subscribers.values()
            for _ref, bindings, _claims in sub.channels.values()
            for b in bindings
        ]

    def joined_topics(self) -> list[str]:
        return [topic for sub in self._subscribers.values() for topic in sub.channels]

    async def wait_until(self, predicate, timeout: float = 10) -> None:
        """Wait (without polling) until ``predicate()`` holds; the stand-in's state changed."""
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), timeout)

    # --- database side ------------------------------------------------------------------------
    async def _install_capture(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.database_url, autocommit=True
        ) as conn:
            await conn.execute(CAPTURE_SQL)
            for qualified in self.tables:
                schema, table = qualified.split(".")
                if (await (await conn.execute("select to_regclass(%s)", [qualified])).fetchone())[
                    0
                ] is None:
                    continue
                await conn.execute(
                    sql.SQL(
                        "create or replace trigger realtime_standin_capture after insert or "
                        "update or delete on {} for each row execute function "
                        "realtime_standin.capture()"
                    ).format(sql.Identifier(schema, table))
                )
                cur = await conn.execute(
                    "select a.attname, format_type(a.atttypid, a.atttypmod) from pg_attribute a"
                    " where a.attrelid = %s::regclass and a.attnum > 0 and not a.attisdropped"
                    " order by a.attnum",
                    [qualified],
                )
                self._columns[(schema, table)] = [
                    {"name": name, "type": kind} for name, kind in await cur.fetchall()
                ]
                cur = await conn.execute(
                    "select a.attname from pg_index i join pg_attribute a"
                    " on a.attrelid = i.indrelid and a.attnum = any(i.indkey)"
                    " where i.indrelid = %s::regclass and i.indisprimary",
                    [qualified],
                )
                self._primary_keys[(schema, table)] = [name for (name,) in await cur.fetchall()]
                cur = await conn.execute(
                    "select relreplident = 'f' from pg_class where oid = %s::regclass",
                    [qualified],
                )
                self._replica_full[(schema, table)] = (await cur.fetchone())[0]

    async def _listen_for_changes(self) -> None:
        # Queries cannot run on a connection while it waits for notifications: two of them.
        async with (
            await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as conn,
            await psycopg.AsyncConnection.connect(self.database_url, autocommit=True) as lookup,
        ):
            await conn.execute(f"listen {NOTIFY_CHANNEL}")
            self._listening.set()
            async for notify in conn.notifies():
                change = json.loads(notify.payload)
                if await self._published(lookup, change["schema"], change["table"]):
                    await self._broadcast(change, lookup)

    async def _published(self, conn: psycopg.AsyncConnection, schema: str, table: str) -> bool:
        cur = await conn.execute(
            "select exists (select from pg_publication_tables where pubname = "
            "'supabase_realtime' and schemaname = %s and tablename = %s)",
            [schema, table],
        )
        return (await cur.fetchone())[0]

    async def _visible(
        self, lookup: psycopg.AsyncConnection, change: dict[str, Any], claims: dict | None
    ) -> bool:
        if claims is None or change["type"] == "DELETE":
            return True
        key = (change["schema"], change["table"])
        pk = self._primary_keys[key][0]
        async with lookup.transaction(force_rollback=True):
            await lookup.execute(
                sql.SQL("set local role {}").format(
                    sql.Identifier(claims.get("role", "authenticated"))
                )
            )
            await lookup.execute(
                "select set_config('request.jwt.claims', %s, true)", [json.dumps(claims)]
            )
            cur = await lookup.execute(
                sql.SQL("select exists (select from {} where {} = %s)").format(
                    sql.Identifier(*key), sql.Identifier(pk)
                ),
                [change["record"][pk]],
            )
            return (await cur.fetchone())[0]

    async def _broadcast(self, change: dict[str, Any], lookup: psycopg.AsyncConnection) -> None:
        key = (change["schema"], change["table"])
        data = {
            "schema": change["schema"],
            "table": change["table"],
            "commit_timestamp": change["commit_timestamp"],
            "type": change["type"],
            "columns": self._columns.get(key, []),
            "errors": change.get("errors"),
        }
        if change["type"] != "DELETE":
            data["record"] = change["record"]
        if change["type"] != "INSERT":
            old = change["old_record"] or {}
            if not self._replica_full.get(key):
                old = {k: v for k, v in old.items() if k in self._primary_keys.get(key, [])}
            data["old_record"] = old
        for subscriber in list(self._subscribers.values()):
            for topic, (_join_ref, bindings, claims) in list(subscriber.channels.items()):
                ids = [b.id for b in bindings if b.matches(change)]
                if not ids or not await self._visible(lookup, change, claims):
                    continue
                if topic not in subscriber.flowing:
                    self.dropped.append({"topic": topic, **change})
                    continue
                frame = {
                    "topic": topic,
                    "event": "postgres_changes",
                    "payload": {"ids": ids, "data": data},
                    "ref": None,
                }
                with contextlib.suppress(ConnectionClosed):
                    await subscriber.socket.send(json.dumps(frame))
                    self.frames_sent.append(frame)
        await self._notify_state()

    # --- websocket side -------------------------------------------------------------------------
    async def _check_handshake(self, connection: ServerConnection, request):
        refusal = self._refusal(request)
        if refusal is None:
            return None
        self.refused += 1
        await self._notify_state()
        return connection.respond(*refusal)

    def _refusal(self, request) -> tuple[HTTPStatus, str] | None:
        url = urlsplit(request.path)
        if url.path != WEBSOCKET_PATH:
            return HTTPStatus.NOT_FOUND, "no Realtime endpoint here\n"
        if self.refusing:
            return HTTPStatus.SERVICE_UNAVAILABLE, "Realtime is down\n"
        query = parse_qs(url.query)
        if query.get("apikey") not in ([self.apikey], [self.anon_key]):
            return HTTPStatus.UNAUTHORIZED, '{"message":"Invalid API key"}\n'
        if query.get("vsn") != ["1.0.0"]:
            return HTTPStatus.BAD_REQUEST, "unsupported vsn\n"
        return None

    async def _serve_socket(self, socket: ServerConnection) -> None:
        subscriber = Subscriber(socket)
        self._subscribers[socket] = subscriber
        self.handshakes += 1
        await self._notify_state()
        try:
            async for raw in socket:
                try:
                    frame = json.loads(raw)
                    topic, event = frame["topic"], frame["event"]
                except (ValueError, KeyError, TypeError):
                    log.warning("stand-in ignored a frame it cannot read: %r", raw)
                    continue
                await self._handle(subscriber, topic, event, frame)
        except ConnectionClosed:
            pass
        finally:
            self._subscribers.pop(socket, None)
            await self._notify_state()

    async def _handle(self, subscriber: Subscriber, topic: str, event: str, frame: dict) -> None:
        ref, join_ref = frame.get("ref"), frame.get("join_ref")
        payload = frame.get("payload") or {}
        if topic == "phoenix" and event == "heartbeat":
            self.heartbeats += 1
            await self._reply(subscriber, topic, ref, join_ref, "ok", {})
        elif event == "phx_join":
            await self._join(subscriber, topic, ref, payload)
        elif event == "phx_leave":
            subscriber.channels.pop(topic, None)
            subscriber.flowing.discard(topic)
            await self._reply(subscriber, topic, ref, join_ref, "ok", {})
        elif event == "access_token":
            pass
        elif topic not in subscriber.channels:
            await self._reply(
                subscriber, topic, ref, join_ref, "error", {"reason": "unmatched topic"}
            )
        await self._notify_state()

    async def _join(
        self, subscriber: Subscriber, topic: str, ref: str | None, payload: dict
    ) -> None:
        self.joins.append(payload)
        config = payload.get("config") or {}
        token = payload.get("access_token")
        claims = None
        if token != self.apikey:
            try:
                if not token or not self.jwt_secret:
                    raise ValueError("InvalidJWTToken: no valid access_token")
                claims = verify_jwt(self.jwt_secret, token)
            except ValueError as exc:
                await self._reply(subscriber, topic, ref, ref, "error", {"reason": str(exc)})
                return
        bindings = []
        for wanted in config.get("postgres_changes") or []:
            try:
                bindings.append(self._binding(wanted))
            except ValueError as exc:
                await self._reply(subscriber, topic, ref, ref, "error", {"reason": str(exc)})
                return
        subscriber.channels[topic] = (ref, bindings, claims)
        subscriber.flowing.discard(topic)  # a rejoin waits for its own announcement
        await self._reply(
            subscriber,
            topic,
            ref,
            ref,
            "ok",
            {"postgres_changes": [b.reply() for b in bindings]},
        )
        if not bindings:
            return
        if self.subscribe_delay <= 0:
            if self._capturing:
                await self._announce(subscriber, topic)
            return
        task = asyncio.create_task(self._announce_later(subscriber, topic, ref))
        self._announcers.add(task)
        task.add_done_callback(self._announcers.discard)

    async def _announce_later(self, subscriber: Subscriber, topic: str, ref: str | None) -> None:
        await asyncio.sleep(self.subscribe_delay)
        joined = subscriber.channels.get(topic)
        # Not for a channel left or joined again since, nor while the capture is stopped
        # (resuming it announces every channel).
        if joined is not None and joined[0] == ref and self._capturing:
            await self._announce(subscriber, topic)

    async def _announce(self, subscriber: Subscriber, topic: str) -> None:
        """Send "Subscribed to PostgreSQL": from now on the channel gets its changes."""
        subscriber.flowing.add(topic)
        self.announcements.append((time.monotonic(), topic))
        await self._send(
            subscriber,
            {
                "topic": topic,
                "event": "system",
                "payload": {
                    "message": "Subscribed to PostgreSQL",
                    "status": "ok",
                    "extension": "postgres_changes",
                    "channel": topic.removeprefix("realtime:"),
                },
                "ref": None,
            },
        )
        await self._notify_state()

    def _binding(self, wanted: dict[str, Any]) -> Binding:
        event = wanted.get("event")
        if event not in ("INSERT", "UPDATE", "DELETE", "*"):
            raise ValueError(f"invalid postgres_changes event {event!r}")
        raw_filter = wanted.get("filter")
        return Binding(
            id=next(self._binding_ids),
            event=event,
            schema=wanted.get("schema") or "public",
            table=wanted.get("table"),
            filter=raw_filter,
            condition=_parse_filter(raw_filter) if raw_filter else None,
        )

    async def _reply(self, subscriber, topic, ref, join_ref, status, response) -> None:
        await self._send(
            subscriber,
            {
                "topic": topic,
                "event": "phx_reply",
                "payload": {"status": status, "response": response},
                "ref": ref,
                "join_ref": join_ref,
            },
        )

    async def _send(self, subscriber: Subscriber, frame: dict[str, Any]) -> None:
        with contextlib.suppress(ConnectionClosed):
            await subscriber.socket.send(json.dumps(frame))

    async def _notify_state(self) -> None:
        async with self.changed:
            self.changed.notify_all()


def _parse_filter(text: str) -> tuple[str, str, Any]:
    """``status=eq.queued`` → ("status", "eq", "queued"); ``id=in.(1,2)`` → a list."""
    column, sep, rest = text.partition("=")
    operator, dot, value = rest.partition(".")
    if not sep or not dot or not column or operator not in FILTER_OPERATORS:
        raise ValueError(
            f"Unable to subscribe to changes with given parameters: invalid filter {text!r}"
        )
    if operator == "in":
        if not (value.startswith("(") and value.endswith(")")):
            raise ValueError(f"invalid filter {text!r}: in expects (a,b,…)")
        values = [v.strip() for v in value[1:-1].split(",")]
        if len(values) > 100:
            raise ValueError(f"invalid filter {text!r}: in takes at most 100 values")
        return column, operator, values
    return column, operator, value


def _compare(actual: Any, operator: str, expected: Any) -> bool:
    if actual is None:
        return False
    text = json.dumps(actual) if isinstance(actual, bool) else str(actual)
    if operator == "eq":
        return text == expected
    if operator == "neq":
        return text != expected
    if operator == "in":
        return text in expected
    try:
        left, right = float(text), float(expected)
    except ValueError:
        left, right = text, expected
    return {
        "lt": left < right,
        "lte": left <= right,
        "gt": left > right,
        "gte": left >= right,
    }[operator]
