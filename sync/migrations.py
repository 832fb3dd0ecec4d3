"""Apply ``supabase/migrations`` the way the Supabase CLI does.

The migrations ship inside the package (``sync.sql_migrations``, which is
``supabase/migrations`` in the repository, where the Supabase CLI reads them), so an
installed ``stepsync`` migrates a database from anywhere.

Applied migrations are recorded in ``supabase_migrations.schema_migrations`` (version,
statements, name) exactly as ``supabase db push`` records them, so either tool can
migrate the same database and each sees what the other applied. Each migration runs
in its own transaction: one that fails leaves nothing behind and is not recorded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import psycopg

from sync.connections import Connector
from sync.messages import first_line, redact_url

MIGRATIONS_DIR: Traversable = files("sync.sql_migrations")
FILE_NAME = re.compile(r"^(?P<version>\d+)_(?P<name>.+)\.sql$")

HISTORY_TABLE_DDL = """
create schema if not exists supabase_migrations;
create table if not exists supabase_migrations.schema_migrations (version text not null primary key);
alter table supabase_migrations.schema_migrations add column if not exists statements text[];
alter table supabase_migrations.schema_migrations add column if not exists name text;
"""


class MigrationError(RuntimeError):
    """A migration could not be read or applied; the message says which and why."""


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    path: Traversable

    @property
    def file_name(self) -> str:
        return self.path.name

    def statements(self) -> list[str]:
        return split_statements(self.path.read_text())


@dataclass(frozen=True)
class Status:
    applied: list[str]  # versions recorded in the database
    pending: list[Migration]  # local migrations not yet applied
    unknown: list[str]  # applied versions with no local file


def local_migrations(directory: Traversable = MIGRATIONS_DIR) -> list[Migration]:
    if not directory.is_dir():
        raise MigrationError(f"migrations directory not found: {directory}")
    found = []
    scripts = (path for path in directory.iterdir() if path.name.endswith(".sql"))
    for path in sorted(scripts, key=lambda path: path.name):
        match = FILE_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path.name}: migration files are named <timestamp>_<name>.sql")
        found.append(Migration(match["version"], match["name"], path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a version in {directory}")
    return found


def connect(database: Connector | str) -> psycopg.Connection:
    """A connection as the login role (migrations own what they create), following the
    pooler rules; a plain URL is a direct connection."""
    if isinstance(database, str):
        database = Connector(database)
    connector = database.as_login_role().named("stepsync migrations")
    try:
        return connector.connect()
    except psycopg.OperationalError as exc:
        raise MigrationError(
            f"cannot connect to {redact_url(connector.url)}: {first_line(exc)}"
        ) from exc


def applied_versions(conn: psycopg.Connection) -> list[str]:
    exists = conn.execute(
        "select to_regclass('supabase_migrations.schema_migrations') is not null"
    ).fetchone()[0]
    if not exists:
        return []
    rows = conn.execute("select version from supabase_migrations.schema_migrations order by 1")
    return [version for (version,) in rows]


def status(database: Connector | str, directory: Traversable = MIGRATIONS_DIR) -> Status:
    local = local_migrations(directory)
    with connect(database) as conn:
        applied = applied_versions(conn)
    known = {m.version for m in local}
    return Status(
        applied=applied,
        pending=[m for m in local if m.version not in applied],
        unknown=[v for v in applied if v not in known],
    )


def push(
    database: Connector | str,
    directory: Traversable = MIGRATIONS_DIR,
    *,
    up_to: str | None = None,
    on_apply: Callable[[Migration], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> list[Migration]:
    """Apply pending migrations in version order (through version ``up_to`` if given);
    return the ones applied. ``on_warning`` hears what a migration reports with ``raise
    warning`` (data it found and left for an operator, such as tasks whose agent is not
    their owner's), message, detail and hint on one line each."""
    pending = [
        m for m in status(database, directory).pending if up_to is None or m.version <= up_to
    ]
    if not pending:
        return []
    with connect(database) as conn:
        if on_warning is not None:
            conn.add_notice_handler(lambda notice: _report_warning(notice, on_warning))
        conn.execute(HISTORY_TABLE_DDL)
        for migration in pending:
            if on_apply:
                on_apply(migration)
            apply_one(conn, migration)
    return pending


def _report_warning(notice: psycopg.errors.Diagnostic, on_warning: Callable[[str], None]) -> None:
    if notice.severity_nonlocalized != "WARNING":
        return
    parts = [notice.message_primary, notice.message_detail, notice.message_hint]
    on_warning("\n".join(part for part in parts if part))


def apply_one(conn: psycopg.Connection, migration: Migration) -> None:
    statements = migration.statements()
    try:
        with conn.transaction():
            for statement in statements:
                conn.execute(statement, prepare=False)
            conn.execute(
                "insert into supabase_migrations.schema_migrations (version, statements, name)"
                " values (%s, %s, %s)",
                [migration.version, statements, migration.name],
            )
    except psycopg.Error as exc:
        detail = first_line(exc)
        if (diag := getattr(exc, "diag", None)) and diag.context:
            detail += f" ({diag.context.splitlines()[0]})"
        raise MigrationError(
            f"migration {migration.file_name} failed and was rolled back: {detail}"
        ) from exc


def split_statements(script: str) -> list[str]:
    """Split a SQL script into statements at top-level semicolons.

    Quotes, dollar quotes and comments are respected; statements are trimmed and
    empty ones dropped, as the Supabase CLI records them.
    """
    statements: list[str] = []
    current: list[str] = []
    i, n = 0, len(script)
    while i < n:
        ch = script[i]
        if ch == "-" and script.startswith("--", i):
            end = script.find("\n", i)
            end = n if end == -1 else end
            current.append(script[i:end])
            i = end
        elif ch == "/" and script.startswith("/*", i):
            end = _block_comment_end(script, i)
            current.append(script[i:end])
            i = end
        elif ch in ("'", '"'):
            end = _quoted_end(script, i, ch)
            current.append(script[i:end])
            i = end
        elif ch == "$" and (tag := re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", script[i:])):
            close = script.find(tag.group(0), i + len(tag.group(0)))
            end = n if close == -1 else close + len(tag.group(0))
            current.append(script[i:end])
            i = end
        elif ch == ";":
            _flush(current, statements)
            current = []
            i += 1
        else:
            current.append(ch)
            i += 1
    _flush(current, statements)
    return statements


def _flush(parts: list[str], statements: list[str]) -> None:
    text = "".join(parts).strip()
    if text and not _only_comments(text):
        statements.append(text)


def _only_comments(text: str) -> bool:
    stripped = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    stripped = re.sub(r"--[^\n]*", "", stripped)
    return not stripped.strip()


def _quoted_end(script: str, start: int, quote: str) -> int:
    i = start + 1
    while i < len(script):
        if script[i] == quote:
            if script.startswith(quote * 2, i):
                i += 2
                continue
            return i + 1
        i += 1
    return len(script)


def _block_comment_end(script: str, start: int) -> int:
    depth, i = 0, start
    while i < len(script):
        if script.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif script.startswith("*/", i):
            depth, i = depth - 1, i + 2
            if depth == 0:
                return i
        else:
            i += 1
    return len(script)
