"""What plain PostgreSQL lacks and a Supabase project has: roles, ``auth``, the publication.

The embedded database (and every test database) is plain PostgreSQL, while the migrations
are written for Supabase. :func:`bootstrap_supabase` adds the Supabase roles, the
``auth`` schema and the ``supabase_realtime`` publication where they are missing, so the
same migrations apply to both. It is never part of ``supabase/migrations``: a real
project already has all of it.
"""

from __future__ import annotations

from importlib.resources import files

import psycopg

SCRIPT = files("sync") / "sql" / "supabase_compat.sql"


def bootstrap_supabase(url: str) -> None:
    """Add the Supabase roles, ``auth`` schema and publication where they are missing."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCRIPT.read_text())
