"""``stepsync flags``: view and change the rollout flags (``stepsync.feature_flags``).

A flag is on for a user when it is enabled, the user is not on its deny-list, and the
user is on its allow-list or inside its rollout percentage (a stable hash of the user id,
so the same users stay in as the percentage grows).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import typer
from psycopg.rows import dict_row
from rich.table import Table

from sync.commands.common import (
    DatabaseUrlOption,
    connector,
    console,
    database_error,
    fail,
    user_errors,
)
from sync.connections import RoleConnection

app = typer.Typer(help="View and change feature flags (gradual rollout).", no_args_is_help=True)

FlagName = typer.Argument(..., help="Flag name, e.g. multi_step_workflows.")
Users = typer.Argument(..., help="One or more user ids (uuid).")
UserOption = typer.Option(None, "--user", help="Also say whether it is on for this user.")

# Every change goes through a function of the migration flag_admin, which checks its input.
SET_FLAG = "select * from stepsync.set_feature_flag(%s, %s::boolean, %s::integer)"
ALLOW_USERS = "select * from stepsync.allow_flag_users(%s, %s::uuid[])"
DENY_USERS = "select * from stepsync.deny_flag_users(%s, %s::uuid[])"
REMOVE_USERS = "select * from stepsync.remove_flag_users(%s, %s, %s::uuid[])"


@contextmanager
def flags_connection(option: str | None) -> Iterator[RoleConnection]:
    """A connection whose statements run in ``conn.acting()`` (as the service role)."""
    with user_errors():
        database = connector(option, application_name="stepsync flags", migrate=True)
    try:
        with database.connect(row_factory=dict_row) as conn:
            with conn.acting():
                table = conn.execute("select to_regclass('stepsync.feature_flags') as t")
                missing = table.fetchone()["t"] is None
            if missing:
                raise fail("stepsync.feature_flags does not exist", "run `stepsync db push` first")
            yield conn
    except psycopg.OperationalError as exc:
        raise database_error(exc) from None


def known_flag(conn: RoleConnection, name: str) -> dict:
    with conn.acting():
        row = conn.execute(
            "select * from stepsync.feature_flags where name = %s", [name]
        ).fetchone()
        if row is None:
            names = conn.execute("select name from stepsync.feature_flags order by 1").fetchall()
    if row is None:
        known = ", ".join(r["name"] for r in names)
        raise fail(f"no flag named {name!r}", f"known flags: {known or 'none'}")
    return row


def change(conn: RoleConnection, query: str, params: list[Any]) -> None:
    """Run one of the flag functions and show the flag as it now is; the function's
    refusal (unknown flag, bad percentage) becomes the error line."""
    try:
        with conn.acting():
            flag = conn.execute(query, params).fetchone()
    except (psycopg.errors.NoDataFound, psycopg.errors.InvalidParameterValue) as exc:
        raise fail(exc.diag.message_primary or str(exc), exc.diag.message_hint) from None
    print_flag(flag)


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
    with flags_connection(database_url_option) as conn, conn.acting():
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
            with conn.acting():
                on = conn.execute(
                    "select stepsync.flag_enabled_for(%s, %s) as on", [name, user]
                ).fetchone()["on"]
            console.print(f"{name} is {'ON' if on else 'OFF'} for user {user}")


@app.command()
def enable(name: str = FlagName, database_url_option: str | None = DatabaseUrlOption) -> None:
    """Switch a flag on (for the users its percentage and lists select)."""
    with flags_connection(database_url_option) as conn:
        change(conn, SET_FLAG, [name, True, None])


@app.command()
def disable(name: str = FlagName, database_url_option: str | None = DatabaseUrlOption) -> None:
    """Switch a flag off for everyone, allow-list included."""
    with flags_connection(database_url_option) as conn:
        change(conn, SET_FLAG, [name, False, None])


@app.command("set-percent")
def set_percent(
    name: str = FlagName,
    percent: int = typer.Argument(..., min=0, max=100, help="Share of users, 0 to 100."),
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """Roll out to a stable share of users."""
    with flags_connection(database_url_option) as conn:
        change(conn, SET_FLAG, [name, None, percent])


@app.command()
def allow(
    name: str = FlagName,
    users: list[uuid.UUID] = Users,
    remove: bool = typer.Option(False, "--remove", help="Take the users off the allow-list."),
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """Put users on the allow-list (and off the deny-list), or take them off with --remove."""
    with flags_connection(database_url_option) as conn:
        if remove:
            change(conn, REMOVE_USERS, [name, "allow", users])
        else:
            change(conn, ALLOW_USERS, [name, users])


@app.command()
def deny(
    name: str = FlagName,
    users: list[uuid.UUID] = Users,
    remove: bool = typer.Option(False, "--remove", help="Take the users off the deny-list."),
    database_url_option: str | None = DatabaseUrlOption,
) -> None:
    """Put users on the deny-list (and off the allow-list), or take them off with --remove."""
    with flags_connection(database_url_option) as conn:
        if remove:
            change(conn, REMOVE_USERS, [name, "deny", users])
        else:
            change(conn, DENY_USERS, [name, users])
