"""What every command shares: settings, the database it talks to, one-line errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
import typer
from pydantic import ValidationError
from rich.console import Console

from sync.connections import Connector, SessionStateError
from sync.database import resolve_database_url
from sync.db import CONNECT_HINT, DatabaseSetupError
from sync.embedded import EmbeddedServerError
from sync.messages import redact_url
from sync.migrations import MigrationError
from sync.settings import ConnectionSettings, Settings, describe_validation_error

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

CONFIG_HINT = "see `stepsync config --reference`"

DatabaseUrlOption = typer.Option(
    None,
    "--database-url",
    envvar="STEPSYNC_DATABASE_URL",
    help="PostgreSQL URL; unset uses the embedded database in STEPSYNC_DATA_DIR.",
    show_default=False,
)
ListenOption = typer.Option(
    None,
    "--listen",
    help="Wake-up source besides polling: postgres, realtime (repeatable or comma "
    "separated); default STEPSYNC_LISTEN.",
    show_default=False,
)


def settings_for(database_url: str | None, **options: object) -> Settings:
    """The service's settings from env/.env, validated as ``serve`` does (for the commands
    that check or show them); command-line options given (not None) win."""
    settings = Settings(**{name: value for name, value in options.items() if value is not None})
    if database_url:
        settings = settings.model_copy(update={"database_url": database_url})
    return settings


def connection_settings(database_url: str | None) -> ConnectionSettings:
    """What a command needs to reach the database; the service's settings are not read,
    so a bad one does not stop this command. Bad values become one line."""
    try:
        settings = ConnectionSettings()
    except ValidationError as exc:
        raise configuration_error(exc) from None
    if database_url:
        settings = settings.model_copy(update={"database_url": database_url})
    return settings


def fail(message: str, hint: str | None = None) -> typer.Exit:
    """Print one clear error line (and a hint) and return the exit to raise."""
    message = " ".join(message.split())  # libpq spreads one error over several lines
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    if hint:
        err_console.print(f"[dim]hint:[/] {hint}", highlight=False)
    return typer.Exit(code=1)


def database_error(exc: psycopg.Error) -> typer.Exit:
    """``fail`` with the first line of a database error, any password in it hidden.

    An error without a SQLSTATE is the connection itself failing, so the hint is about
    the URL."""
    hint = CONNECT_HINT if exc.sqlstate is None else None
    return fail(redact_url(str(exc).strip().splitlines()[0]), hint)


def configuration_error(exc: ValidationError) -> typer.Exit:
    """``fail`` naming each bad setting the way it is set (secrets not echoed)."""
    return fail(
        f"invalid configuration: {describe_validation_error(exc)}",
        CONFIG_HINT,
    )


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line instead of a traceback."""
    try:
        yield
    except (MigrationError, EmbeddedServerError, DatabaseSetupError, SessionStateError) as exc:
        hint = getattr(exc, "hint", None)
        if hint is None and "cannot connect" in str(exc):
            hint = CONNECT_HINT
        raise fail(str(exc), hint) from None


def connector(option: str | None, *, application_name: str, migrate: bool = False) -> Connector:
    """How this command connects: the database ``option`` or the settings name (or the
    embedded one), the role to act as and the pooler rules. Call inside ``user_errors``."""
    settings = connection_settings(option)
    url = settings_database_url(settings, migrate=migrate)
    return Connector.from_settings(settings, url, application_name=application_name)


def settings_database_url(settings: ConnectionSettings, *, migrate: bool = False) -> str:
    """The database ``settings`` name, or the embedded one (announced on stderr)."""
    if not settings.database_url:
        err_console.print(f"[dim]using the embedded database in {settings.data_dir}/[/]")
    return resolve_database_url(settings, migrate=migrate)
