"""``stepsync flags``: view and change the rollout flags (``stepsync.feature_flags``).

A flag is on for a user when it is enabled, the user is not on its deny-list, and the
user is on its allow-list or inside its rollout percentage (a stable hash of the user id,
so the same users stay in as the percentage grows).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import typer
from psycopg.rows import dict_row
from rich.table import Table

from sync.commands.common import (
    DatabaseUrlOption,
    console,
    database_error,
    database_url,
    fail,
    user_errors,
)

app = typer.Typer(help="View and change feature flags (gradual rollout).", no_args_is_help=True)

FlagName = typer.Argument(..., help="Flag name, e.g. multi_step_workflows.")
Users = typer.Argument(..., help="One or more user ids (uuid).")
UserOption = typer.Option(None, "--user", help="Also say whether it is on for this user.")


@contextmanager
def flags_connection(option: str | None) -> Iterator[psycopg.Connection]:
    with user_errors():
        url = database_url(option, migrate=True)
    try:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            conn.execute("set role service_role")
            if (
                conn.execute("select to_regclass('stepsync.feature_flags') as t").fetchone()["t"]
                is None
            ):
                raise fail("stepsync.feature_flags does not exist", "run `stepsync db push` first")
            yield conn
    except psycopg.OperationalError as exc:
        raise database_error(exc) from None


def known_flag(conn: psycopg.Connection, name: str) -> dict:
    row = conn.execute("select * from stepsync.feature_flags where name = %s", [name]).fetchone()
    if row is None:
        names = [
            r["name"] for r in conn.execute("select name from stepsync.feature_flags order by 1")
        ]
        raise fail(f"no flag named {name!r}", f"known flags: {', '.join(names) or 'none'}")
    return row


def change(conn: psycopg.Connection, name: str, assignment: str, params: list) -> None:
    known_flag(conn, name)
    row = conn.execute(
        f"update stepsync.feature_flags set {assignment}, updated_at = now()"
        " where name = %s returning *",
        [*params, name],
    ).fetchone()
    print_flag(row)


def edit_list(
    conn: psycopg.Connection,
    name: str,
    users: list[uuid.UUID],
    *,
    listed: str,
    other: str,
    remove: bool,
) -> None:
    """Take ``users`` off the ``listed`` column or put them on it; a user put on one list
    comes off the ``other``, so the two never contradict each other."""
    without = "array(select u from unnest({}) as u where u <> all(%s::uuid[]))"
    if remove:
        change(conn, name, f"{listed} = {without.format(listed)}", [users])
    else:
        change(
            conn,
            name,
            f"{listed} = array(select distinct u from unnest({listed} || %s::uuid[]) as u"
            f" order by u), {other} = {without.format(other)}",
            [users, users],
        )


def print_flag(row: dict) -> None:
    table = Table("field", "value", title=f"flag {row['name']}")
    table.add_row("enabled", "yes" if row["enabled"] else "no")
    table.add_row("rollout percent", f"{row['rollout_percent']}%")
    table.add_row("allow-list", "\n".join(str(u) for u in row["allow_list"]) or "(empty)")
    table.add_row("deny-list", "\n".join(str(u) for u in row["deny_list"]) or "(empty)")
    table.add_row("description", row["description"] or "")
    table.add_row("updated", str(row["updated_at"]))
    console.print(table)


@app.command("list")
def list_flags(database_url_option: str | None = DatabaseUrlOption) -> None:
    """All flags with their state."""
    with flags_connection(database_url_option) as conn:
        rows = conn.execute("select * from stepsync.feature_flags order by name").fetchall()
    table = Table()
    table.add_column("name", no_wrap=True)
    for heading in ("enabled", "percent", "allowed", "denied", "description"):
        table.add_column(heading)
    for row in rows:
        table.add_row(
            row["name"],
            "yes" if row["enabled"] else "no",
            f"{row['rollout_percent']}%",
            str(len(row["allow_list"])),
            str(len(row["deny_list"])),
            row["description"] or "",
        )
    console.print(table)


@app.command()
def show(
    name: str = FlagName,
    user: uuid.UUID | None = UserOption,
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """One flag in full; with --user, whether it is on for that user."""
    with flags_connection(database_url_option) as conn:
        print_flag(known_flag(conn, name))
        if user is not None:
            on = conn.execute(
                "select stepsync.flag_enabled_for(%s, %s) as on", [name, user]
            ).fetchone()["on"]
            console.print(f"{name} is {'ON' if on else 'OFF'} for user {user}")


@app.command()
def enable(name: str = FlagName, database_url_option: str | None = DatabaseUrlOption) -> None:
    """Switch a flag on (for the users its percentage and lists select)."""
    with flags_connection(database_url_option) as conn:
        change(conn, name, "enabled = true", [])


@app.command()
def disable(name: str = FlagName, database_url_option: str | None = DatabaseUrlOption) -> None:
    """Switch a flag off for everyone, allow-list included."""
    with flags_connection(database_url_option) as conn:
        change(conn, name, "enabled = false", [])


@app.command("set-percent")
def set_percent(
    name: str = FlagName,
    percent: int = typer.Argument(..., min=0, max=100, help="Share of users, 0 to 100."),
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """Roll out to a stable share of users."""
    with flags_connection(database_url_option) as conn:
        change(conn, name, "rollout_percent = %s", [percent])


@app.command()
def allow(
    name: str = FlagName,
    users: list[uuid.UUID] = Users,
    remove: bool = typer.Option(False, "--remove", help="Take the users off the allow-list."),
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """Put users on the allow-list (and off the deny-list), or take them off with --remove."""
    with flags_connection(database_url_option) as conn:
        edit_list(conn, name, users, listed="allow_list", other="deny_list", remove=remove)


@app.command()
def deny(
    name: str = FlagName,
    users: list[uuid.UUID] = Users,
    remove: bool = typer.Option(False, "--remove", help="Take the users off the deny-list."),
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """Put users on the deny-list (and off the allow-list), or take them off with --remove."""
    with flags_connection(database_url_option) as conn:
        edit_list(conn, name, users, listed="deny_list", other="allow_list", remove=remove)
