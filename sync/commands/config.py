"""``stepsync config``: the effective configuration, or its reference as Markdown."""

from __future__ import annotations

import typer
from pydantic import AliasChoices, SecretStr, ValidationError
from rich.table import Table

from sync.commands.common import console, fail
from sync.devdb import redact_url
from sync.settings import Settings


def env_name(field, default: str) -> str:
    """The variable a setting is read from: its alias when it has one (SUPABASE_URL)."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        alias = next((choice for choice in alias.choices if isinstance(choice, str)), None)
    return alias.upper() if isinstance(alias, str) else default


def reference_markdown() -> str:
    """One table row per setting, generated from the settings model (the README embeds it)."""
    prefix = Settings.model_config.get("env_prefix", "")
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr) or default is None:
            default = ""
        shown = f"`{default}`" if default != "" else "—"
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{env_name(field, prefix + name.upper())}` | {shown} | {description} |")
    return "\n".join(rows) + "\n"


def config(
    reference: bool = typer.Option(
        False, "--reference", help="Print every setting as a Markdown table instead."
    ),
) -> None:
    """Show the configuration in effect (secrets hidden), validated as `serve` does."""
    if reference:
        typer.echo(reference_markdown(), nl=False)
        return
    try:
        settings = Settings()
    except ValidationError as exc:
        raise fail(str(exc).replace("\n", " "), "see `stepsync config --reference`") from None
    table = Table("setting", "value")
    for name, value in settings.model_dump().items():
        if isinstance(value, str) and "://" in value:
            value = redact_url(value)
        table.add_row(name, str(value))
    console.print(table)
