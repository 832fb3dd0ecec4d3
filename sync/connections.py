"""Every connection stepsync opens, made by one factory that knows the role and the pooler.

The service, the run commands, flags, the backfill, doctor and the migrations connect
through a :class:`Connector`, so these rules hold everywhere:

- The role a command acts as (``STEPSYNC_DB_ROLE``, ``service_role`` by default) is set
  per transaction, ``set local role``: it ends with the transaction, so no server
  connection is ever left acting as it.
- Behind a transaction-mode pooler (PgBouncer or Supavisor, Supabase's port 6543) each
  transaction may run on another server connection, and a server connection serves many
  clients in turn. Nothing may outlive a transaction there: no session ``set role`` (one
  that leaked made the next client's queries run as the wrong role), no prepared
  statements (``prepare_threshold=None``), no ``LISTEN``, no session advisory lock.
- The one session-level role switch is the service's pool on a direct connection: it sets
  the role once per connection (the steps' hot path then needs no extra statement per
  query). It is never made behind a pooler.
- Every statement acting as the role runs under ``statement_timeout``
  (``STEPSYNC_DB_STATEMENT_TIMEOUT_SECONDS``), set where the role is set and in the same
  round trip: per transaction (``set local``), or once per connection for the service's
  pool on a direct connection. A statement that hangs, or that a user's data makes slow,
  ends with an error instead of holding a connection and the locks it took.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from sync.settings import ConnectionSettings

CONNECT_TIMEOUT_SECONDS = 10


class SessionStateError(RuntimeError):
    """Something needs a session of its own, which a transaction pooler cannot give."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} needs a database session of its own, which a transaction pooler "
            "(STEPSYNC_DB_TRANSACTION_POOLER=true) cannot keep"
        )
        self.hint = (
            "use the direct or session-pooler URL (port 5432) for this command, with "
            "STEPSYNC_DB_TRANSACTION_POOLER unset"
        )


@dataclass(frozen=True)
class Connector:
    """How to connect: the URL, the role to act as (None: stay the login role, as the
    migrations do) and whether a transaction pooler sits in between."""

    url: str
    role: str | None = "service_role"
    transaction_pooler: bool = False
    application_name: str = "stepsync"
    # Applies to what runs as the role; None: the server's own setting.
    statement_timeout_seconds: float | None = None

    @classmethod
    def from_settings(
        cls, settings: ConnectionSettings, url: str, *, application_name: str
    ) -> Connector:
        """The connector for ``url`` (the configured one, or the embedded database, which
        is always a direct connection whatever the pooler setting says)."""
        return cls(
            url,
            role=settings.db_role,
            transaction_pooler=settings.db_transaction_pooler and bool(settings.database_url),
            application_name=application_name,
            statement_timeout_seconds=settings.db_statement_timeout_seconds,
        )

    def named(self, application_name: str) -> Connector:
        """The same connector under another name in ``pg_stat_activity``."""
        return replace(self, application_name=application_name)

    def as_login_role(self) -> Connector:
        """The same connector acting as the login role (migrations, doctor's checks), with
        the server's own statement timeout (a migration may take long)."""
        return replace(self, role=None, statement_timeout_seconds=None)

    @property
    def listen_allowed(self) -> bool:
        return not self.transaction_pooler

    def require_session(self, what: str) -> None:
        """Refuse, naming ``what``, when session state would not survive the pooler."""
        if self.transaction_pooler:
            raise SessionStateError(what)

    def connection_options(self) -> dict[str, Any]:
        """Keyword arguments of every connection this connector opens."""
        options: dict[str, Any] = {"autocommit": True, "application_name": self.application_name}
        if self.transaction_pooler:
            options["prepare_threshold"] = None
        return options

    def set_role(self, *, local: bool = True) -> sql.Composed:
        """``set [local] role``, and the statement timeout with it: two statements in one
        round trip (no parameters, so psycopg sends them as one simple query)."""
        if self.role is None:
            raise ValueError("this connector acts as the login role; there is no role to set")
        scope = sql.SQL("local ") if local else sql.SQL("")
        statement = sql.SQL("set {}role {}").format(scope, sql.Identifier(self.role))
        if self.statement_timeout_seconds is not None:
            milliseconds = max(1, round(self.statement_timeout_seconds * 1000))
            statement = sql.SQL("{}; set {}statement_timeout = {}").format(
                statement, scope, sql.Literal(f"{milliseconds}ms")
            )
        return statement

    # --- blocking connections (commands) ---------------------------------------------------

    def connect(
        self, *, row_factory: Any = None, connect_timeout: int = CONNECT_TIMEOUT_SECONDS
    ) -> RoleConnection:
        """An autocommit connection; run statements that need the role in ``acting()``."""
        options = self.connection_options()
        if row_factory is not None:
            options["row_factory"] = row_factory
        conn = RoleConnection.connect(self.url, connect_timeout=connect_timeout, **options)
        conn.connector = self
        return conn

    # --- asyncio connections (service, run commands) ---------------------------------------

    async def connect_async(
        self, *, connect_timeout: int = CONNECT_TIMEOUT_SECONDS
    ) -> psycopg.AsyncConnection:
        """An autocommit connection; run statements that need the role in ``acting_async``."""
        return await psycopg.AsyncConnection.connect(
            self.url, connect_timeout=connect_timeout, **self.connection_options()
        )

    @contextlib.asynccontextmanager
    async def acting_async(
        self, conn: psycopg.AsyncConnection
    ) -> AsyncIterator[psycopg.AsyncConnection]:
        """One transaction acting as the role (``set local role``); commits unless the
        block raises."""
        async with conn.transaction():
            if self.role is not None:
                await conn.execute(self.set_role())
            yield conn

    def session_role_allowed(self) -> bool:
        """Whether a connection may act as the role for its whole life: on a direct
        connection only (see the module docstring for who does)."""
        return self.role is not None and not self.transaction_pooler

    def async_pool(
        self, *, max_size: int, name: str, session_role: bool, **options: Any
    ) -> AsyncConnectionPool:
        """A pool, not yet open. With ``session_role`` (the service's hot path) its
        connections switch role once on connect, if :meth:`session_role_allowed`; else
        queries act as the role through :meth:`acting_async`."""

        async def set_session_role(conn: psycopg.AsyncConnection) -> None:
            await conn.execute(self.set_role(local=False))

        return AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=max_size,
            kwargs={**self.connection_options(), **options},
            configure=set_session_role if session_role and self.session_role_allowed() else None,
            open=False,
            name=name,
        )


class RoleConnection(psycopg.Connection):
    """A blocking connection made by a :class:`Connector`, which it remembers."""

    connector: Connector

    @contextlib.contextmanager
    def acting(self, *, read_only: bool = False) -> Iterator[RoleConnection]:
        """One transaction acting as the connector's role (``set local role``), read-only
        if asked; commits unless the block raises."""
        with self.transaction():
            if read_only:
                self.execute("set transaction read only")  # must come first
            if self.connector.role is not None:
                self.execute(self.connector.set_role())
            yield self
