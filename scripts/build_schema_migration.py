"""Write (or, with ``--check``, verify) the stepsync migration from ``supabase/schemas``.

``supabase/migrations/20261126002000_stepsync.sql`` is a short header followed by the
schema files in file order, each separated from the next by one blank line: the schema
files are where the SQL is read and edited, the migration is what gets applied.

That holds while it is the newest migration. Once a later migration exists, it is
history that databases have applied: it is never rewritten again, every change is a new
migration plus the same edit in ``supabase/schemas``, and the catalog-equivalence test
(tests/test_schema_equivalence.py) checks that the two still build the same database.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS_DIR = ROOT / "supabase" / "schemas"
MIGRATIONS_DIR = ROOT / "supabase" / "migrations"
MIGRATION = MIGRATIONS_DIR / "20261126002000_stepsync.sql"
HEADER = """\
-- stepsync: schema stepsync, the workflow tables and every function, trigger, policy,
-- grant and comment of the engine, on top of the legacy baseline.
--
-- Written by scripts/build_schema_migration.py from supabase/schemas/*.sql, in file
-- order: read and edit those files (see supabase/schemas/README.md), not this one.
"""


def schema_files() -> list[Path]:
    files = sorted(SCHEMAS_DIR.glob("*.sql"))
    if not files:
        raise SystemExit(f"no schema files in {SCHEMAS_DIR}")
    return files


def expected_migration() -> str:
    parts = [HEADER]
    for path in schema_files():
        text = path.read_text()
        if not text.endswith("\n"):
            raise SystemExit(f"{path.relative_to(ROOT)}: the file must end with a newline")
        parts.append(text)
    return "\n".join(parts)


def later_migrations() -> list[str]:
    return sorted(p.name for p in MIGRATIONS_DIR.glob("*.sql") if p.name > MIGRATION.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="fail when the migration differs; write nothing"
    )
    args = parser.parse_args()

    later = later_migrations()
    if later:
        if args.check:
            print(
                f"{MIGRATION.name} is followed by {len(later)} later migration(s): "
                "tests/test_schema_equivalence.py checks them against supabase/schemas."
            )
            return 0
        print(
            f"{MIGRATION.name} is applied history ({later[0]} follows it): put the change "
            "in a new migration and make the same edit in supabase/schemas.",
            file=sys.stderr,
        )
        return 1

    expected = expected_migration()
    current = MIGRATION.read_text() if MIGRATION.exists() else ""
    if not args.check:
        if current != expected:
            MIGRATION.write_text(expected)
            print(f"wrote {MIGRATION.relative_to(ROOT)}")
        return 0
    if current == expected:
        return 0
    diff = difflib.unified_diff(
        current.splitlines(),
        expected.splitlines(),
        str(MIGRATION.relative_to(ROOT)),
        "supabase/schemas/*.sql",
        lineterm="",
        n=1,
    )
    print(
        f"{MIGRATION.relative_to(ROOT)} differs from supabase/schemas: run "
        "scripts/build_schema_migration.py",
        file=sys.stderr,
    )
    print("\n".join(list(diff)[:40]), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
