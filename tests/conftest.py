"""Fixtures: one PostgreSQL server per test session, one migrated database per test.

The server comes from :func:`tests.helpers.provision.start_server` (``STEPSYNC_DATABASE_URL``, Docker, or a
local cluster). Migrations are applied once to a template database; each test gets its
own copy (``CREATE DATABASE ... TEMPLATE``), which takes milliseconds.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from sync import migrations
from tests.helpers import provision
from tests.workers import create_step_log


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[provision.Server]:
    server = provision.start_server(tmp_path_factory.mktemp("postgres") / "data", fast=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def template_db(pg_server: provision.Server) -> Iterator[str]:
    """A bootstrapped, fully migrated database that every test copies."""
    name = f"stepsync_template_{os.getpid()}"
    provision.drop_database(pg_server.url, name)
    url = provision.create_database(pg_server.url, name)
    provision.bootstrap_supabase(url)
    migrations.push(url)
    yield name
    provision.drop_database(pg_server.url, name)


def _scratch_database(pg_server: provision.Server, template: str | None) -> Iterator[str]:
    name = f"stepsync_test_{uuid.uuid4().hex[:12]}"
    url = provision.create_database(pg_server.url, name, template=template)
    try:
        yield url
    finally:
        provision.drop_database(pg_server.url, name)


@pytest.fixture
def db_url(pg_server: provision.Server, template_db: str) -> Iterator[str]:
    """URL of a fresh, fully migrated database of this test's own."""
    yield from _scratch_database(pg_server, template_db)


@pytest.fixture
def blank_db_url(pg_server: provision.Server) -> Iterator[str]:
    """URL of a fresh database with the Supabase bootstrap and no migration applied."""
    for url in _scratch_database(pg_server, None):
        provision.bootstrap_supabase(url)
        yield url


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection]:
    """A superuser connection (autocommit) to the test's database."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def step_log(conn: psycopg.Connection) -> psycopg.Connection:
    create_step_log(conn)
    return conn
