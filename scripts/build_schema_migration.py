"""Write (or, with ``--check``, verify) the stepsync migration from ``supabase/schemas``.

``supabase/migrations/20261126002000_stepsync.sql`` is a short header followed by the
schema files in file order, each separated from the next by one blank line: the schema
files are where the SQL is read and edited, the migration is what gets applied.

Every change to the schema is a new migration plus the same edit in ``supabase/schemas``
(supabase/schemas/README.md). While the stepsync migration is the newest one, ``--check``
keeps it equal to the schema files, so an edit there without a migration fails lint.
Once a later migration exists, the stepsync migration is history that databases have
applied and is never rewritten; the catalog-equivalence test
(tests/test_schema_equivalence.py) then checks that migrations and schema files still
build the same database.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIGRATION_NAME = "20261126002000_stepsync.sql"
HEADER = """\
-- stepsync: schema stepsync, the workflow tables and every function, trigger, policy,
-- grant and comment of the engine, on top of the legacy baseline.
--
-- Written by scripts/build_schema_migration.py from supabase/schemas/*.sql, in file
-- order: read and edit those files (see supabase/schemas/README.md), not this one.
"""


def expected_migration(schemas_dir: Path) -> str:
    files = sorted(schemas_dir.glob("*.sql"))
    if not files:
        raise SystemExit(f"no schema files in {schemas_dir}")
    parts = [HEADER]
    for path in files:
        text = path.read_text()
        if not text.endswith("\n"):
            raise SystemExit(f"{path.name}: a schema file must end with a newline")
        parts.append(text)
    return "\n".join(parts)


def build(root: Path, *, check: bool) -> int:
    """Write the migration (or check it); the exit status."""
    migrations_dir = root / "supabase" / "migrations"
    migration = migrations_dir / MIGRATION_NAME
    later = sorted(p.name for p in migrations_dir.glob("*.sql") if p.name > MIGRATION_NAME)
    if later:
        if check:
            print(
                f"{MIGRATION_NAME} is followed by {len(later)} later migration(s): "
                "tests/test_schema_equivalence.py compares them with supabase/schemas."
            )
            return 0
        print(
            f"{MIGRATION_NAME} is applied history ({later[0]} follows it): put the change "
            "in a new migration and make the same edit in supabase/schemas.",
            file=sys.stderr,
        )
        return 1

    expected = expected_migration(root / "supabase" / "schemas")
    current = migration.read_text() if migration.exists() else ""
    if current == expected:
        return 0
    if not check:
        migration.write_text(expected)
        print(f"wrote supabase/migrations/{MIGRATION_NAME}")
        return 0
    diff = difflib.unified_diff(
        current.splitlines(),
        expected.splitlines(),
        f"supabase/migrations/{MIGRATION_NAME}",
        "supabase/schemas/*.sql",
        lineterm="",
        n=1,
    )
    print(
        f"supabase/migrations/{MIGRATION_NAME} differs from supabase/schemas. A change to "
        "the schema also needs a new migration (supabase/schemas/README.md); an edit of "
        "`--` comments only: run scripts/build_schema_migration.py",
        file=sys.stderr,
    )
    print("\n".join(list(diff)[:40]), file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="fail when the migration differs; write nothing"
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="the repository (default: this script's)"
    )
    args = parser.parse_args()
    return build(args.root, check=args.check)


if __name__ == "__main__":
    sys.exit(main())
