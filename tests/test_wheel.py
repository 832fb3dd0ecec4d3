"""The built wheel is the whole product: installed into a fresh virtualenv outside the
repository, its ``stepsync`` migrates a fresh database with the migrations it carries."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.helpers.provision import Server, bootstrap_supabase, create_database, drop_database

ROOT = Path(__file__).resolve().parents[1]
MIGRATIONS = sorted(path.name for path in (ROOT / "supabase" / "migrations").glob("*.sql"))

pytestmark = pytest.mark.slow


def run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """A command with no stepsync configuration and nothing of this checkout on its path."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("STEPSYNC_", "SUPABASE_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["COLUMNS"] = "200"
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of what it is made of (a build inside the checkout
    would reuse its build/ directory, stale files included)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "sync", source / "sync", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "supabase" / "migrations", source / "supabase" / "migrations")
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", dist, source, cwd=dist)
    (built,) = dist.glob("stepsync-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv outside the repository with the wheel and its dependencies
    installed (from the package index, through pip's cache); returns its bin directory."""
    venv = tmp_path_factory.mktemp("venv")
    assert ROOT not in venv.parents
    run(sys.executable, "-m", "venv", venv, cwd=venv)
    run(venv / "bin" / "pip", "install", "--quiet", "--disable-pip-version-check", wheel, cwd=venv)
    return venv / "bin"


@pytest.fixture
def fresh_url(pg_server: Server) -> Iterator[str]:
    """A new database with only what a Supabase project has before stepsync."""
    name = f"stepsync_wheel_{uuid.uuid4().hex[:12]}"
    url = create_database(pg_server.url, name)
    try:
        bootstrap_supabase(url)
        yield url
    finally:
        drop_database(pg_server.url, name)


def test_the_wheel_carries_every_module_and_migration(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    modules = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "sync").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert modules - names == set()
    assert {f"sync/sql_migrations/{name}" for name in MIGRATIONS} <= names
    assert "sync/sql/supabase_compat.sql" in names
    assert not any(name.startswith("tests/") for name in names)


def test_an_installed_wheel_migrates_a_fresh_database(
    installed: Path, fresh_url: str, tmp_path: Path
) -> None:
    where = run(
        installed / "python", "-c", "import sync; print(sync.__file__)", cwd=tmp_path
    ).stdout
    assert Path(where.strip()).is_relative_to(installed.parent)
    # Test-only packages stay out of a user's install.
    listed = run(installed / "pip", "list", "--format=freeze", cwd=tmp_path).stdout.lower()
    assert "testcontainers" not in listed and "pytest" not in listed

    pushed = run(installed / "stepsync", "db", "push", "--database-url", fresh_url, cwd=tmp_path)
    assert f"{len(MIGRATIONS)} migration(s) applied." in pushed.stdout

    status = run(installed / "stepsync", "db", "status", "--database-url", fresh_url, cwd=tmp_path)
    assert f"{len(MIGRATIONS)} applied, 0 pending" in status.stdout
    with psycopg.connect(fresh_url) as conn:
        recorded = [
            f"{version}_{name}.sql"
            for version, name in conn.execute(
                "select version, name from supabase_migrations.schema_migrations order by 1"
            )
        ]
    assert recorded == MIGRATIONS
