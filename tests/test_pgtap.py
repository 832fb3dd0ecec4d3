"""Run the pgTAP suite in supabase/tests through pg_prove, as `supabase test db` does."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

PGTAP_DIR = Path(__file__).resolve().parent.parent / "supabase" / "tests"


def pgtap_available(url: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("select 1 from pg_available_extensions where name = 'pgtap'").fetchone()
    return row is not None and shutil.which("pg_prove") is not None


@pytest.mark.parametrize("test_file", sorted(PGTAP_DIR.glob("*.sql")), ids=lambda p: p.name)
def test_pgtap_file(db_url: str, test_file: Path) -> None:
    if not pgtap_available(db_url):
        if os.environ.get("STEPSYNC_REQUIRE_PGTAP"):
            pytest.fail("pgTAP or pg_prove is missing but STEPSYNC_REQUIRE_PGTAP is set")
        pytest.skip("pgTAP is not installed for this server (the PostgreSQL 15 pass runs it)")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("create extension if not exists pgtap with schema extensions")
    url = urlsplit(db_url)
    result = subprocess.run(
        [
            "pg_prove",
            "--verbose",
            "--host",
            url.hostname,
            "--port",
            str(url.port),
            "--username",
            url.username,
            "--dbname",
            url.path.lstrip("/"),
            str(test_file),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All tests successful" in result.stdout
