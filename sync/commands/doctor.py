"""``stepsync doctor``: check the configuration before deploying, say how to fix it."""

from __future__ import annotations

import typer
from pydantic import ValidationError

from sync import doctor as checks
from sync.commands.common import ListenOption, configuration_error, console, settings_for

MARKS = {
    "ok": "[green]✓ ok  [/]",
    "warn": "[yellow]! warn[/]",
    "fail": "[bold red]✗ fail[/]",
    "skip": "[dim]- skip[/]",
}


def doctor(
    database_url_option: str | None = typer.Option(
        None,
        "--database-url",
        envvar="STEPSYNC_DATABASE_URL",
        help="PostgreSQL URL the service will use (the embedded database is not checked).",
        show_default=False,
    ),
    listen: list[str] | None = ListenOption,
) -> None:
    """Check the database, migrations, pooler mode, Realtime and the executor endpoint."""
    try:
        settings = settings_for(database_url_option, listen=listen)
    except ValidationError as exc:
        raise configuration_error(exc) from None
    results = checks.run_checks(settings)
    for check in results:
        console.print(
            f"{MARKS[check.verdict]}  [bold]{check.name:<10}[/] {check.detail}",
            highlight=False,
            soft_wrap=True,
        )
        if check.fix and check.verdict in ("warn", "fail"):
            console.print(f"{'':19}fix: {check.fix}", highlight=False, soft_wrap=True)
    failed = [c.name for c in results if c.verdict == "fail"]
    warned = [c.name for c in results if c.verdict == "warn"]
    if failed:
        console.print(f"[bold red]{len(failed)} check(s) failed:[/] {', '.join(failed)}")
        raise typer.Exit(code=1)
    console.print(f"[green]ready[/] ({len(warned)} warning(s))" if warned else "[green]ready[/]")
