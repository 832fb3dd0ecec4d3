"""Configuration from the environment (prefix ``STEPSYNC_``) and an optional ``.env`` file.

Every setting is validated when the settings are built, so a bad value stops
``stepsync serve`` before it connects anywhere, with a message naming the setting
(see :func:`describe_validation_error`). The other commands read only
:class:`ConnectionSettings`, so a service setting never stops them.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "STEPSYNC_"

# Wake-up sources ``serve`` can listen on besides the poll timer, which always runs.
LISTEN_MODES = ("postgres", "realtime")

_ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def default_worker_id() -> str:
    """host:pid:random, unique per process and readable in ``lease_owner``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class ConnectionSettings(BaseSettings):
    """What every command needs to reach the database. Only these are read (and validated)
    by the commands other than ``serve``, so a bad service setting cannot stop them."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL of the Supabase database (direct or session pooler). "
        "Unset: an embedded PostgreSQL kept in data_dir.",
    )
    data_dir: Path = Field(
        default=Path(".stepsync"),
        description="Where the embedded PostgreSQL keeps its data when no database_url is set.",
    )
    db_role: str = Field(
        default="service_role",
        description="Role the service and the commands act as, set per transaction "
        "(`set local role`); the service's pool on a direct connection sets it once per "
        "connection.",
    )
    db_transaction_pooler: bool = Field(
        default=False,
        description="The database URL goes through a transaction-mode pooler (Supabase "
        "port 6543, PgBouncer `pool_mode=transaction`): no session state anywhere (role per "
        "transaction, no prepared statements, no LISTEN, no session lock, so the backfill "
        "refuses), and listen defaults to poll only.",
    )

    db_statement_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest any statement of the service and the commands may run "
        "(`statement_timeout`, set with the role: per transaction, or per connection for "
        "the service's pool on a direct connection). Migrations keep the server's own.",
    )

    @field_validator("db_role")
    @classmethod
    def _plain_role_name(cls, value: str) -> str:
        if not _ROLE_NAME.match(value):
            raise ValueError(f"{value!r} is not a plain role name (a-z, 0-9, _)")
        return value


class Settings(ConnectionSettings):
    """Everything ``stepsync serve`` reads; validated in full by ``serve`` (and by
    ``doctor`` and ``config``, which check what ``serve`` would run with)."""

    # --- the service (stepsync serve) -------------------------------------------------
    worker_id: str = Field(
        default_factory=default_worker_id,
        min_length=1,
        max_length=200,
        description="Name this process claims leases under (lease_owner).",
    )
    concurrency: int = Field(
        default=10, ge=1, le=1000, description="Steps one process runs at the same time."
    )
    batch_size: int = Field(
        default=10, ge=1, le=500, description="Most steps claimed in one round trip."
    )
    claimers: int = Field(
        default=2,
        ge=1,
        le=16,
        description="Claims one process may have in flight at once (each takes a "
        "connection while the database assembles the claimed steps' context).",
    )
    lease_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="How long a claim is valid without a heartbeat; after it another "
        "worker may take the step over.",
    )
    heartbeat_interval_seconds: float | None = Field(
        default=None,
        gt=0,
        description="How often leases of running steps are extended. "
        "Default: a third of lease_seconds. Must be shorter than lease_seconds.",
    )
    poll_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description="How often to look for work without any notification. With "
        "--poll-only this is the only way work is found.",
    )
    reap_interval_seconds: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="How often expired leases (the steps of a worker that died or "
        "stalled) are handed back to the queue. Default: poll_interval_seconds.",
    )
    shutdown_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        le=86400,
        description="On SIGTERM/SIGINT, how long running steps may finish before they "
        "are handed back to the queue.",
    )
    scheduler: bool = Field(
        default=True,
        description="Start the runs of scheduled tasks (cron) at their fire times, for the "
        "users in the multi_step_workflows rollout. Any number of processes may: each fire "
        "time runs once.",
    )
    schedule_interval_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often the scheduler looks for due tasks: a run starts at most this "
        "long after its fire time.",
    )
    schedule_batch_size: int = Field(
        default=50,
        ge=1,
        le=50,
        description="Most scheduled tasks fired in one transaction (each run start is a "
        "subtransaction; PostgreSQL keeps 64 per transaction cheap).",
    )
    listen: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["postgres"],
        description="Wake-up sources besides the poll timer, comma separated "
        f"({', '.join(LISTEN_MODES)}); empty = poll only. Default: postgres, or poll only "
        "when db_transaction_pooler is on.",
    )
    db_pool_size: int | None = Field(
        default=None,
        ge=1,
        le=500,
        description="Connections in the service's pool. Default: concurrency + claimers + 1.",
    )
    metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Port of the /metrics and /healthz endpoint; 0 turns it off.",
    )
    metrics_host: str = Field(default="0.0.0.0", description="Address the metrics port binds.")
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="json (one object per line) or text (key=value), for the service's "
        "lines and every library's alike.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO",
        description="Level of the service's own logs. Libraries (psycopg and its pool, "
        "httpx, websockets, the Realtime client, asyncio) log from WARNING up, or from "
        "DEBUG when this is DEBUG.",
    )

    # --- executors ----------------------------------------------------------------------
    executor: str | None = Field(
        default=None,
        description="Runs each step: `python:package.module:function`, "
        "an `http(s)://` URL that receives each step as a JSON POST, "
        "`edge:<function>` (a Supabase Edge Function), `agentopia_chat` or `demo` "
        "(made-up outputs). Unset: `demo` on the embedded database; with a database URL "
        "`serve` refuses to start until it is set. An HTTP, Edge Function or chat call "
        "may take as long as the step's own `timeout_seconds`.",
    )

    # --- Supabase (wake-ups over Realtime, Edge Function executors) -----------------------
    # The plain SUPABASE_* names are accepted too, as a Supabase project already sets them.
    supabase_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("STEPSYNC_SUPABASE_URL", "SUPABASE_URL"),
        description="Project URL, e.g. https://<ref>.supabase.co (Realtime and Edge Functions).",
    )
    supabase_service_role_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "STEPSYNC_SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_SERVICE_ROLE_KEY"
        ),
        description="Service-role key: Realtime apikey and Edge Function bearer token.",
    )
    edge_function_name: str = Field(
        default="chat",
        description="Edge Function the `agentopia_chat` executor calls "
        "(`edge:<name>` names its own).",
    )

    @field_validator("listen", mode="before")
    @classmethod
    def _split_listen(cls, value: object) -> object:
        # "postgres,realtime" from the environment, a repeated option, or both mixed.
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(item, str) for item in items):
            return [part.strip() for item in items for part in item.split(",") if part.strip()]
        return value

    @field_validator("listen")
    @classmethod
    def _known_listen_modes(cls, value: list[str]) -> list[str]:
        unknown = [mode for mode in value if mode not in LISTEN_MODES]
        if unknown:
            raise ValueError(
                f"unknown listen mode(s) {', '.join(unknown)}; "
                f"known: {', '.join(LISTEN_MODES)} (empty for poll only)"
            )
        return list(dict.fromkeys(value))

    @field_validator("executor")
    @classmethod
    def _executor_shape(cls, value: str | None) -> str | None:
        # Only the shape is checked here; executor_from_setting imports and builds it.
        if value is None:
            return None
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _no_listen_through_transaction_pooler(self) -> Settings:
        if not self.db_transaction_pooler:
            return self
        if "listen" not in self.model_fields_set:
            # Not chosen by the user: poll only, as LISTEN cannot cross the pooler.
            self.listen = []
        elif "postgres" in self.listen:
            raise ValueError(
                f"{ENV_PREFIX}DB_TRANSACTION_POOLER is on but {ENV_PREFIX}LISTEN includes "
                "'postgres': LISTEN does not work through a transaction pooler; use "
                "--poll-only or another wake-up source"
            )
        return self

    @model_validator(mode="after")
    def _heartbeat_within_lease(self) -> Settings:
        if self.heartbeat_interval_seconds is None:
            self.heartbeat_interval_seconds = self.lease_seconds / 3
        elif self.heartbeat_interval_seconds >= self.lease_seconds:
            raise ValueError(
                f"{ENV_PREFIX}HEARTBEAT_INTERVAL_SECONDS ({self.heartbeat_interval_seconds:g}) "
                f"must be shorter than {ENV_PREFIX}LEASE_SECONDS ({self.lease_seconds}), "
                "or leases expire under running steps"
            )
        return self

    @property
    def reap_every_seconds(self) -> float:
        return self.reap_interval_seconds or self.poll_interval_seconds

    @property
    def pool_size(self) -> int:
        # Each running step needs a connection only briefly (complete/fail); claims,
        # heartbeats and the poll timer need one each at most.
        return self.db_pool_size or self.concurrency + self.claimers + 1


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad setting, named the way the user sets it (``STEPSYNC_…``)."""
    lines = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"] if not isinstance(part, int))
        message = problem["msg"].removeprefix("Value error, ")
        if field:
            value = problem.get("input")
            secret_looking = any(word in field for word in ("key", "secret", "url", "token"))
            shown = (
                f" (got {value!r})"
                if isinstance(value, str | int | float) and not secret_looking
                else ""
            )
            lines.append(f"{ENV_PREFIX}{field.upper()}: {message}{shown}")
        else:
            lines.append(message)
    return "; ".join(lines)
