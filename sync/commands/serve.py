"""``stepsync serve``: run workflow steps until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import typer
from pydantic import ValidationError

from sync import logging as structured_logging
from sync.commands.common import (
    CONFIG_HINT,
    DatabaseUrlOption,
    ListenOption,
    configuration_error,
    fail,
    user_errors,
)
from sync.database import resolve_database_url
from sync.db import DatabaseSetupError
from sync.executors import ExecutorSettingError, executor_from_setting
from sync.service import build_service
from sync.settings import Settings
from sync.wakeups.realtime import RealtimeSettingError

log = logging.getLogger(__name__)


def serve(
    database_url_option: str | None = DatabaseUrlOption,
    poll_only: bool = typer.Option(
        False, "--poll-only", help="No LISTEN: find work by polling only (transaction poolers)."
    ),
    listen: list[str] | None = ListenOption,
    concurrency: int | None = typer.Option(None, help="Steps run at the same time."),
    batch_size: int | None = typer.Option(None, help="Most steps claimed per round trip."),
    lease_seconds: int | None = typer.Option(None, help="Lease length of a claimed step."),
    poll_interval: float | None = typer.Option(
        None, help="Seconds between polls (and reaps, unless STEPSYNC_REAP_INTERVAL_SECONDS)."
    ),
    shutdown_grace: float | None = typer.Option(
        None, help="Seconds running steps get to finish on SIGTERM before being handed back."
    ),
    executor: str | None = typer.Option(
        None,
        help="python:package.module:function | http(s)://… | edge:<function> | "
        "agentopia_chat | demo. Required with a database URL; unset on the embedded "
        "database: demo.",
    ),
    metrics_port: int | None = typer.Option(None, help="Port of /metrics and /healthz; 0 = off."),
    worker_id: str | None = typer.Option(None, help="Name leases are claimed under."),
    scheduler: bool | None = typer.Option(
        None,
        "--scheduler/--no-scheduler",
        help="Start scheduled tasks' runs at their fire times (default STEPSYNC_SCHEDULER, on).",
        show_default=False,
    ),
) -> None:
    """Run workflow steps: wake on LISTEN (and a poll timer), claim, execute, record.

    Every option also reads its STEPSYNC_… environment variable (see docs/service.md);
    an option given here wins.
    """
    overrides: dict[str, Any] = {
        "concurrency": concurrency,
        "batch_size": batch_size,
        "lease_seconds": lease_seconds,
        "poll_interval_seconds": poll_interval,
        "shutdown_grace_seconds": shutdown_grace,
        "executor": executor,
        "metrics_port": metrics_port,
        "worker_id": worker_id,
        "scheduler": scheduler,
        "listen": [] if poll_only else listen,
        "database_url": database_url_option,
    }
    if poll_only and listen:
        raise fail("--poll-only and --listen contradict each other; pick one")
    settings = load_settings({k: v for k, v in overrides.items() if v is not None})
    structured_logging.configure(settings.log_format, settings.log_level)
    try:
        built_executor = executor_from_setting(settings.executor, settings)
    except ExecutorSettingError as exc:
        raise fail(str(exc), CONFIG_HINT) from None
    if not settings.database_url:
        # Said in the log's own format: every line `serve` writes is a log line.
        log.info("using the embedded database", extra={"data_dir": str(settings.data_dir)})
    with user_errors():
        url = resolve_database_url(settings, migrate=True)  # migrates the embedded one only
    try:
        service = build_service(settings, url, executor=built_executor)
    except RealtimeSettingError as exc:
        raise fail(str(exc), CONFIG_HINT) from None
    try:
        asyncio.run(service.run(install_signal_handlers=True))
    except DatabaseSetupError as exc:
        raise fail(str(exc), exc.hint) from None
    except Exception:
        # A bug, not a user's mistake: logged with its traceback as one structured line.
        log.exception("service stopped by an unexpected error")
        raise typer.Exit(code=1) from None


def load_settings(overrides: dict[str, Any]) -> Settings:
    """Settings from env/.env with command-line overrides, all validated together."""
    try:
        return Settings(**overrides)  # keyword values take precedence over the environment
    except ValidationError as exc:
        raise configuration_error(exc) from None
