"""``stepsync config``: the effective configuration, or its reference as Markdown."""

from __future__ import annotations

import typer
from pydantic import AliasChoices, SecretStr, ValidationError
from rich.table import Table

from sync.commands.common import configuration_error, console
from sync.messages import redact_url
from sync.settings import Settings


def env_names(field, default: str) -> str:
    """The variables a setting is read from: its aliases when it has some (SUPABASE_URL)."""
    alias = field.validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [alias]
    names = [f"`{choice.upper()}`" for choice in choices if isinstance(choice, str)]
    return " or ".join(names) or f"`{default}`"


def reference_markdown() -> str:
    """One table row per setting, generated from the settings model (the README embeds it)."""
    prefix = Settings.model_config.get("env_prefix", "")
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if default != field.get_default(call_default_factory=True):
            shown = "computed"  # e.g. the worker id: host and process, different every time
        elif default in (None, "", []) or isinstance(default, SecretStr):
            shown = "—"
        else:
            shown = f"`{','.join(default) if isinstance(default, list) else default}`"
        description = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| {env_names(field, prefix + name.upper())} | {shown} | {description} |")
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
        raise configuration_error(exc) from None
    table = Table("setting", "value")
    for name, value in settings.model_dump().items():
        if isinstance(value, str) and "://" in value:
            value = redact_url(value)
        table.add_row(name, str(value))
    console.print(table)
