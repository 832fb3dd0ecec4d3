"""The migrations and ``supabase/schemas`` describe the same database.

One database is built from the migrations, one from the legacy baseline plus the schema
files (each applied the way a reader would, file by file); both get the Supabase
bootstrap first. Their catalogs are dumped object by object (functions with their full
definition, relations, columns, constraints, indexes, policies, triggers, views, types,
privileges, comments, publication members, seed rows) and must be equal. A change made
in one place only shows up here as a named difference.
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from sync import migrations

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS_DIR = ROOT / "supabase" / "migrations"
SCHEMAS_DIR = ROOT / "supabase" / "schemas"
BUILD_SCRIPT = ROOT / "scripts" / "build_schema_migration.py"
BASELINE = "20261126000100_legacy_baseline.sql"

# Every schema but PostgreSQL's own and the migration history, so a migration that
# touches a Supabase schema (auth, extensions) is compared too. Extension members are
# left out: they come from the extension, not from us.
IN_SCOPE = """
    {namespace}::regnamespace::text not in ('pg_catalog', 'information_schema',
        'supabase_migrations')
    and {namespace}::regnamespace::text !~ '^pg_(toast|temp)'
"""
NOT_FROM_AN_EXTENSION = """
    not exists (select from pg_depend as dep where dep.objid = {oid} and dep.deptype = 'e')
"""
# An ACL as a sorted list of grants; a null ACL is spelled out as the default it means.
ACL = """
    (select coalesce(string_agg(grants.grant_text, ', ' order by grants.grant_text), '(none)')
     from (
        select format('%s=%s/%s%s',
            case when a.grantee = 0 then 'PUBLIC' else a.grantee::regrole::text end,
            a.privilege_type, a.grantor::regrole::text,
            case when a.is_grantable then ' with grant option' else '' end) as grant_text
        from aclexplode(coalesce({acl}, acldefault(({kind})::"char", {owner}))) as a
     ) as grants)
"""
COLUMN_ACL = """
    (select string_agg(grants.grant_text, ', ' order by grants.grant_text)
     from (
        select format('%s=%s/%s',
            case when a.grantee = 0 then 'PUBLIC' else a.grantee::regrole::text end,
            a.privilege_type, a.grantor::regrole::text) as grant_text
        from aclexplode({acl}) as a
     ) as grants)
"""
RELATION_ACL = ACL.format(
    acl="c.relacl", kind="case when c.relkind = 'S' then 's' else 'r' end", owner="c.relowner"
)
CONSTRAINT_NOT_FROM_AN_EXTENSION = NOT_FROM_AN_EXTENSION.format(
    oid="coalesce(nullif(k.conrelid, 0), k.contypid)"
)

# Each query returns (key, field, value, ...) columns: the first column names the object,
# the others are its fields, compared one by one.
CATALOG_QUERIES: dict[str, str] = {
    "schemas": f"""
        select n.nspname, n.nspowner::regrole::text as owner,
            {ACL.format(acl="n.nspacl", kind="'n'", owner="n.nspowner")} as acl,
            obj_description(n.oid, 'pg_namespace') as comment
        from pg_namespace as n
        where {IN_SCOPE.format(namespace="n.oid")}""",
    "extensions": """
        select e.extname, e.extnamespace::regnamespace::text as schema from pg_extension as e""",
    "relations": f"""
        select c.oid::regclass::text, c.relkind::text as kind, c.relowner::regrole::text as owner,
            c.relpersistence::text as persistence, c.relrowsecurity::text as row_security,
            c.relforcerowsecurity::text as forced_row_security,
            c.relreplident::text as replica_identity,
            array_to_string(c.reloptions, ', ') as options,
            {RELATION_ACL} as acl,
            obj_description(c.oid, 'pg_class') as comment,
            case when c.relkind in ('v', 'm') then pg_get_viewdef(c.oid) end as definition,
            (select format('%s start %s increment %s min %s max %s cache %s cycle %s',
                    s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
                    s.seqcache, s.seqcycle)
                from pg_sequence as s where s.seqrelid = c.oid) as sequence
        from pg_class as c
        where {IN_SCOPE.format(namespace="c.relnamespace")}
            and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')
            and {NOT_FROM_AN_EXTENSION.format(oid="c.oid")}""",
    "columns": f"""
        select c.oid::regclass::text || '.' || a.attname,
            row_number() over (partition by c.oid order by a.attnum)::text as position,
            format_type(a.atttypid, a.atttypmod) as type, a.attnotnull::text as not_null,
            pg_get_expr(d.adbin, d.adrelid) as default, nullif(a.attidentity, '') as identity,
            nullif(a.attgenerated, '') as generated,
            case when a.attcollation <> t.typcollation then a.attcollation::regcollation::text
            end as collation,
            {COLUMN_ACL.format(acl="a.attacl")} as acl,
            col_description(c.oid, a.attnum) as comment
        from pg_attribute as a
        join pg_class as c on c.oid = a.attrelid
        join pg_type as t on t.oid = a.atttypid
        left join pg_attrdef as d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where {IN_SCOPE.format(namespace="c.relnamespace")}
            and c.relkind in ('r', 'p', 'v', 'm', 'f', 'c')
            and a.attnum > 0 and not a.attisdropped
            and {NOT_FROM_AN_EXTENSION.format(oid="c.oid")}
            and {NOT_FROM_AN_EXTENSION.format(oid="c.reltype")}""",
    "constraints": f"""
        select coalesce(nullif(k.conrelid, 0)::regclass::text, k.contypid::regtype::text)
                || '.' || k.conname,
            k.contype::text as kind, pg_get_constraintdef(k.oid) as definition,
            k.condeferrable::text as deferrable, k.condeferred::text as deferred,
            k.convalidated::text as validated,
            obj_description(k.oid, 'pg_constraint') as comment
        from pg_constraint as k
        where {IN_SCOPE.format(namespace="k.connamespace")}
            and {CONSTRAINT_NOT_FROM_AN_EXTENSION}""",
    "indexes": f"""
        select i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) as definition,
            obj_description(i.indexrelid, 'pg_class') as comment
        from pg_index as i
        join pg_class as c on c.oid = i.indexrelid
        where {IN_SCOPE.format(namespace="c.relnamespace")}
            and {NOT_FROM_AN_EXTENSION.format(oid="i.indrelid")}""",
    "policies": f"""
        select p.polrelid::regclass::text || '.' || p.polname,
            p.polpermissive::text as permissive, p.polcmd::text as command,
            (select string_agg(roles.name, ', ' order by roles.name)
                from (select case when r = 0 then 'PUBLIC' else r::regrole::text end as name
                    from unnest(p.polroles) as r) as roles) as roles,
            pg_get_expr(p.polqual, p.polrelid) as using,
            pg_get_expr(p.polwithcheck, p.polrelid) as with_check,
            obj_description(p.oid, 'pg_policy') as comment
        from pg_policy as p
        join pg_class as c on c.oid = p.polrelid
        where {IN_SCOPE.format(namespace="c.relnamespace")}""",
    "triggers": f"""
        select t.tgrelid::regclass::text || '.' || t.tgname,
            pg_get_triggerdef(t.oid) as definition, t.tgenabled::text as enabled,
            obj_description(t.oid, 'pg_trigger') as comment
        from pg_trigger as t
        join pg_class as c on c.oid = t.tgrelid
        where not t.tgisinternal and {IN_SCOPE.format(namespace="c.relnamespace")}""",
    "rules": f"""
        select r.ev_class::regclass::text || '.' || r.rulename,
            pg_get_ruledef(r.oid) as definition,
            obj_description(r.oid, 'pg_rewrite') as comment
        from pg_rewrite as r
        join pg_class as c on c.oid = r.ev_class
        where r.rulename <> '_RETURN' and {IN_SCOPE.format(namespace="c.relnamespace")}""",
    "functions": f"""
        select p.oid::regprocedure::text, p.proowner::regrole::text as owner,
            case when p.prokind = 'a' then 'aggregate'
                else pg_get_functiondef(p.oid) end as definition,
            {ACL.format(acl="p.proacl", kind="'f'", owner="p.proowner")} as acl,
            obj_description(p.oid, 'pg_proc') as comment
        from pg_proc as p
        where {IN_SCOPE.format(namespace="p.pronamespace")}
            and {NOT_FROM_AN_EXTENSION.format(oid="p.oid")}""",
    "types": f"""
        select t.oid::regtype::text, t.typtype::text as kind,
            t.typowner::regrole::text as owner,
            (select string_agg(e.enumlabel, ', ' order by e.enumsortorder)
                from pg_enum as e where e.enumtypid = t.oid) as labels,
            case when t.typtype = 'd' then format_type(t.typbasetype, t.typtypmod) end
                as base_type,
            case when t.typtype = 'd' then t.typnotnull::text end as not_null,
            t.typdefault as default,
            {ACL.format(acl="t.typacl", kind="'T'", owner="t.typowner")} as acl,
            obj_description(t.oid, 'pg_type') as comment
        from pg_type as t
        left join pg_class as c on c.oid = t.typrelid
        where {IN_SCOPE.format(namespace="t.typnamespace")}
            and t.typtype in ('b', 'c', 'd', 'e', 'm', 'r')
            and (t.typrelid = 0 or c.relkind = 'c')
            and not (t.typcategory = 'A' and t.typelem <> 0)
            and {NOT_FROM_AN_EXTENSION.format(oid="t.oid")}""",
    "default privileges": f"""
        select format('%s in %s on %s', d.defaclrole::regrole,
                coalesce(d.defaclnamespace::regnamespace::text, 'all schemas'), d.defaclobjtype),
            {COLUMN_ACL.format(acl="d.defaclacl")} as acl
        from pg_default_acl as d""",
    "publications": """
        select p.pubname, p.puballtables::text as all_tables,
            concat_ws(', ', case when p.pubinsert then 'insert' end,
                case when p.pubupdate then 'update' end,
                case when p.pubdelete then 'delete' end,
                case when p.pubtruncate then 'truncate' end) as actions
        from pg_publication as p""",
    "publication members": """
        select t.pubname || ': ' || t.schemaname || '.' || t.tablename,
            array_to_string(t.attnames, ', ') as columns, t.rowfilter as row_filter
        from pg_publication_tables as t""",
}

# Rows the migrations seed. Timestamps taken at apply time are left out.
SEED_QUERIES: dict[str, str] = {
    "feature flags": """
        select f.name, f.enabled::text as enabled, f.rollout_percent::text as rollout_percent,
            f.allow_list::text as allow_list, f.deny_list::text as deny_list,
            f.description
        from stepsync.feature_flags as f""",
}

Catalog = dict[str, dict[str, dict[str, str | None]]]


@dataclass(frozen=True)
class Difference:
    part: str
    key: str
    field: str  # "(missing)" when the object exists on one side only
    left: str | None
    right: str | None

    def __str__(self) -> str:
        where = f"{self.part} {self.key}"
        if self.field == "(missing)":
            return f"{where}: only in the {'schemas' if self.left is None else 'migrations'}"
        if "\n" in f"{self.left}{self.right}":
            lines = difflib.unified_diff(
                (self.left or "").splitlines(),
                (self.right or "").splitlines(),
                "migrations",
                "schemas",
                lineterm="",
            )
            return f"{where} [{self.field}]:\n" + "\n".join(lines)
        return f"{where} [{self.field}]: {self.left!r} (migrations) != {self.right!r} (schemas)"


def dump_catalog(url: str) -> Catalog:
    """Every object in scope, keyed by part and name, with its fields as text."""
    catalog: Catalog = {}
    with psycopg.connect(url) as conn:
        # Names and definitions come out schema-qualified, whatever the search_path.
        conn.execute("set search_path = pg_catalog")
        queries = dict(CATALOG_QUERIES)
        if conn.execute("select to_regclass('stepsync.feature_flags')").fetchone()[0]:
            queries |= SEED_QUERIES
        for part, query in queries.items():
            cursor = conn.execute(query)
            fields = [column.name for column in cursor.description][1:]
            objects: dict[str, dict[str, str | None]] = {}
            for key, *values in cursor.fetchall():
                assert key not in objects, f"{part}: {key} is listed twice"
                objects[key] = {
                    field: None if value is None else str(value)
                    for field, value in zip(fields, values, strict=True)
                }
            catalog[part] = objects
    return catalog


def compare_catalogs(left: Catalog, right: Catalog) -> list[Difference]:
    """What differs between two dumps, object by object and field by field."""
    found = []
    for part in sorted(left.keys() | right.keys()):
        ours, theirs = left.get(part, {}), right.get(part, {})
        for key in sorted(ours.keys() | theirs.keys()):
            if key not in ours or key not in theirs:
                found.append(
                    Difference(
                        part,
                        key,
                        "(missing)",
                        None if key not in ours else "present",
                        None if key not in theirs else "present",
                    )
                )
                continue
            for field in ours[key]:
                if ours[key][field] != theirs[key][field]:
                    found.append(Difference(part, key, field, ours[key][field], theirs[key][field]))
    return found


def apply_schemas(url: str, tmp_path: Path) -> None:
    """The legacy baseline (a migration), then each schema file in its own transaction."""
    baseline_only = tmp_path / "baseline"
    baseline_only.mkdir()
    shutil.copy(MIGRATIONS_DIR / BASELINE, baseline_only / BASELINE)
    migrations.push(url, baseline_only)
    with psycopg.connect(url, autocommit=True) as conn:
        for path in sorted(SCHEMAS_DIR.glob("*.sql")):
            with conn.transaction():
                for statement in migrations.split_statements(path.read_text()):
                    conn.execute(statement, prepare=False)


@pytest.fixture
def schemas_db_url(blank_db_url: str, tmp_path: Path) -> str:
    apply_schemas(blank_db_url, tmp_path)
    return blank_db_url


def assert_no_difference(differences: list[Difference]) -> None:
    assert not differences, "the migrations and supabase/schemas differ:\n" + "\n".join(
        str(difference) for difference in differences
    )


def test_schema_files_are_numbered_in_apply_order() -> None:
    names = [path.name for path in sorted(SCHEMAS_DIR.glob("*.sql"))]
    assert len(names) > 10
    assert all(name[:4].isdigit() and name[4] == "_" for name in names), names
    assert len({name[:4] for name in names}) == len(names), "two files share a number"


def test_migrations_and_schemas_build_the_same_catalog(db_url: str, schemas_db_url: str) -> None:
    from_migrations, from_schemas = dump_catalog(db_url), dump_catalog(schemas_db_url)
    assert len(from_migrations["functions"]) > 60
    assert_no_difference(compare_catalogs(from_migrations, from_schemas))


def test_a_changed_comment_is_reported_as_exactly_that(db_url: str, schemas_db_url: str) -> None:
    with psycopg.connect(schemas_db_url, autocommit=True) as conn:
        before = conn.execute(
            "select obj_description('stepsync.queue_depth()'::regprocedure, 'pg_proc')"
        ).fetchone()[0]
        conn.execute("comment on function stepsync.queue_depth() is 'drifted'")
    differences = compare_catalogs(dump_catalog(db_url), dump_catalog(schemas_db_url))
    assert differences == [
        Difference("functions", "stepsync.queue_depth()", "comment", before, "drifted")
    ]
    assert "drifted" in str(differences[0])


def test_a_changed_grant_is_reported_as_exactly_that(db_url: str, schemas_db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("grant execute on function stepsync.queue_depth() to authenticated")
    differences = compare_catalogs(dump_catalog(db_url), dump_catalog(schemas_db_url))
    assert [(d.part, d.key, d.field) for d in differences] == [
        ("functions", "stepsync.queue_depth()", "acl")
    ]
    assert "authenticated=EXECUTE" in differences[0].left
    assert "authenticated" not in differences[0].right


def test_a_changed_function_body_is_reported_with_a_readable_diff(
    db_url: str, schemas_db_url: str
) -> None:
    with psycopg.connect(schemas_db_url, autocommit=True) as conn:
        definition = conn.execute(
            "select pg_get_functiondef('stepsync.queue_depth()'::regprocedure)"
        ).fetchone()[0]
        conn.execute(definition.replace("r.status = 'running'", "r.status = 'pending'"))
    differences = compare_catalogs(dump_catalog(db_url), dump_catalog(schemas_db_url))
    assert [(d.part, d.key, d.field) for d in differences] == [
        ("functions", "stepsync.queue_depth()", "definition")
    ]
    report = str(differences[0])
    assert "--- migrations" in report and "+++ schemas" in report
    assert "+" in report and "r.status = 'pending'" in report


def test_a_missing_object_is_reported_as_exactly_that(db_url: str, schemas_db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("drop index public.task_step_executions_lease_idx")
    differences = compare_catalogs(dump_catalog(db_url), dump_catalog(schemas_db_url))
    assert differences == [
        Difference("indexes", "public.task_step_executions_lease_idx", "(missing)", None, "present")
    ]
    assert str(differences[0]).endswith("only in the schemas")


def run_build_script(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def repository_copy(tmp_path: Path) -> Path:
    """The schema files and migrations, copied where the build script may change them."""
    shutil.copytree(SCHEMAS_DIR, tmp_path / "supabase" / "schemas")
    shutil.copytree(MIGRATIONS_DIR, tmp_path / "supabase" / "migrations")
    return tmp_path


def test_the_stepsync_migration_is_the_schema_files_in_order() -> None:
    checked = run_build_script(ROOT, "--check")
    assert checked.returncode == 0, checked.stderr
    text = (MIGRATIONS_DIR / "20261126002000_stepsync.sql").read_text()
    positions = [text.index(path.read_text()) for path in sorted(SCHEMAS_DIR.glob("*.sql"))]
    assert positions == sorted(positions)


def test_check_fails_on_a_schema_edit_until_the_migration_is_rebuilt(
    repository_copy: Path,
) -> None:
    schema = sorted((repository_copy / "supabase" / "schemas").glob("*.sql"))[-1]
    schema.write_text(schema.read_text() + "\nselect 1;\n")
    checked = run_build_script(repository_copy, "--check")
    assert checked.returncode == 1
    assert "differs from supabase/schemas" in checked.stderr
    assert "+select 1;" in checked.stderr

    assert run_build_script(repository_copy).returncode == 0
    assert run_build_script(repository_copy, "--check").returncode == 0
    migration = repository_copy / "supabase/migrations/20261126002000_stepsync.sql"
    assert migration.read_text().endswith("\nselect 1;\n")


def test_once_a_later_migration_exists_the_stepsync_migration_is_not_rewritten(
    repository_copy: Path,
) -> None:
    (repository_copy / "supabase/migrations/20261201000000_later.sql").write_text("select 1;\n")
    schema = sorted((repository_copy / "supabase" / "schemas").glob("*.sql"))[-1]
    schema.write_text(schema.read_text() + "\nselect 1;\n")
    migration = repository_copy / "supabase/migrations/20261126002000_stepsync.sql"
    before = migration.read_text()
    refused = run_build_script(repository_copy)
    assert refused.returncode == 1
    assert "put the change in a new migration" in refused.stderr
    assert migration.read_text() == before
    assert run_build_script(repository_copy, "--check").returncode == 0
