"""A real PgBouncer in transaction mode in front of a test server (what Supabase's port
6543 is): Debian's ``pgbouncer`` binary, started for the tests and stopped after them.

Every database of the server is reachable through it under its own name, with trust
authentication as on the server itself. PgBouncer refuses to run as root, so it runs as
the account the local cluster runs as.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sync.embedded import server_account

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"

CONFIG = """\
[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen_port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/userlist.txt
pool_mode = transaction
max_client_conn = 1000
default_pool_size = {pool_size}
ignore_startup_parameters = extra_float_digits
server_reset_query =
"""


def available() -> bool:
    return Path(PGBOUNCER).exists()


def through(url: str, listen_port: int) -> str:
    """``url`` with its host and port replaced by PgBouncer's."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{listen_port}"))


@contextmanager
def pgbouncer(server_url: str, directory: Path, *, pool_size: int = 10) -> Iterator[int]:
    """Run PgBouncer in transaction mode in front of the server at ``server_url``; yields
    the port it listens on."""
    server = urlsplit(server_url)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        listen_port = sock.getsockname()[1]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "userlist.txt").write_text('"postgres" ""\n')
    (directory / "pgbouncer.ini").write_text(
        CONFIG.format(
            host=server.hostname,
            port=server.port,
            listen_port=listen_port,
            directory=directory,
            pool_size=pool_size,
        )
    )
    account = server_account()
    kwargs = {}
    if account is not None:
        for path in (directory, directory / "userlist.txt", directory / "pgbouncer.ini"):
            os.chown(path, account.pw_uid, account.pw_gid)
        kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    log = (directory / "pgbouncer.log").open("w")
    process = subprocess.Popen(
        [PGBOUNCER, str(directory / "pgbouncer.ini")],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd="/",
        **kwargs,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", listen_port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "pgbouncer did not start: " + (directory / "pgbouncer.log").read_text()
                    ) from None
                time.sleep(0.05)
        yield listen_port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
