"""Security rules read from the catalog, for every object in public and stepsync that the
migrations create (extension members excluded), so they also hold for what later
migrations add: RLS on every table, no exposed SECURITY DEFINER callable by API roles,
a fixed search_path on every function, and definers only with search_path ''."""

from __future__ import annotations

import psycopg

OUR_SCHEMAS = ("public", "stepsync")
NOT_FROM_AN_EXTENSION = (
    "not exists (select from pg_depend as d where d.objid = {oid} and d.deptype = 'e')"
)


def test_every_table_has_row_level_security(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "select c.oid::regclass::text, c.relrowsecurity from pg_class as c"
        " where c.relnamespace::regnamespace::text = any(%s) and c.relkind in ('r', 'p')"
        " and " + NOT_FROM_AN_EXTENSION.format(oid="c.oid") + " order by 1",
        [list(OUR_SCHEMAS)],
    ).fetchall()
    assert {"task_steps", "audit_log", "agent_task_executions"} <= {
        name.split(".")[-1] for name, _ in rows
    }
    assert [name for name, rls in rows if not rls] == []


def functions(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "select p.oid::regprocedure::text, p.pronamespace::regnamespace::text, p.prosecdef,"
        " coalesce(p.proconfig, '{}'),"
        " has_function_privilege('anon', p.oid, 'execute'),"
        " has_function_privilege('authenticated', p.oid, 'execute')"
        " from pg_proc as p where p.pronamespace::regnamespace::text = any(%s)"
        " and " + NOT_FROM_AN_EXTENSION.format(oid="p.oid") + " order by 1",
        [list(OUR_SCHEMAS)],
    ).fetchall()


def test_every_function_has_a_fixed_search_path(conn: psycopg.Connection) -> None:
    found = functions(conn)
    assert len(found) >= 10
    loose = [
        name
        for name, _, _, config, _, _ in found
        if not any(setting.startswith("search_path=") for setting in config)
    ]
    assert loose == []


def test_no_definer_in_an_exposed_schema_is_callable_by_api_roles(conn: psycopg.Connection) -> None:
    exposed = [
        name
        for name, schema, definer, _, anon, authenticated in functions(conn)
        if schema == "public" and definer and (anon or authenticated)
    ]
    assert exposed == []


def test_definers_pin_an_empty_search_path_and_refuse_anon(conn: psycopg.Connection) -> None:
    definers = [row for row in functions(conn) if row[2]]
    assert definers, "the soft delete, audit and restore definers are expected here"
    assert [name for name, _, _, config, _, _ in definers if 'search_path=""' not in config] == []
    assert [name for name, _, _, _, anon, _ in definers if anon] == []


def test_service_only_functions_are_not_callable_by_api_roles(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "select p.oid::regprocedure::text from pg_proc as p"
        " where p.oid = any(array['stepsync.purge_deleted_task_steps(interval, uuid)',"
        " 'stepsync.add_to_realtime_publication(regclass)',"
        " 'stepsync.attach_audit(regclass, text, text[])']::regprocedure[])"
        " and (has_function_privilege('anon', p.oid, 'execute')"
        " or has_function_privilege('authenticated', p.oid, 'execute'))"
    ).fetchall()
    assert rows == []


def test_workflow_tables_are_in_the_realtime_publication(conn: psycopg.Connection) -> None:
    published = conn.execute(
        "select tablename from pg_publication_tables where pubname = 'supabase_realtime'"
        " and schemaname = 'public' order by 1"
    ).fetchall()
    assert {("agent_task_executions",), ("task_steps",)} <= set(published)


def test_no_permissive_policy_is_left_open_to_everyone(conn: psycopg.Connection) -> None:
    open_policies = conn.execute(
        "select tablename, policyname from pg_policies where schemaname = any(%s)"
        " and (qual = 'true' or with_check = 'true')"
        " and not roles <@ array['service_role']::name[]",
        [list(OUR_SCHEMAS)],
    ).fetchall()
    assert open_policies == []


def test_every_object_is_commented(conn: psycopg.Connection) -> None:
    """Tables, functions and triggers in our schemas, and the policies, constraints and
    columns of the workflow tables, each carry a comment."""
    workflow_tables = ["task_steps", "audit_log", "agent_task_executions", "agent_tasks"]
    uncommented = conn.execute(
        "select 'table ' || c.oid::regclass::text from pg_class as c"
        " where c.relnamespace::regnamespace::text = any(%(schemas)s) and c.relkind in ('r', 'p')"
        " and obj_description(c.oid, 'pg_class') is null"
        " union all select 'function ' || p.oid::regprocedure::text from pg_proc as p"
        " where p.pronamespace::regnamespace::text = any(%(schemas)s)"
        " and obj_description(p.oid, 'pg_proc') is null"
        " union all select 'trigger ' || t.tgname from pg_trigger as t"
        " join pg_class as c on c.oid = t.tgrelid where not t.tgisinternal"
        " and c.relnamespace::regnamespace::text = any(%(schemas)s)"
        " and obj_description(t.oid, 'pg_trigger') is null"
        " union all select 'policy ' || p.polname from pg_policy as p"
        " where p.polrelid::regclass::text = any(%(tables)s)"
        " and obj_description(p.oid, 'pg_policy') is null"
        " union all select 'constraint ' || k.conname from pg_constraint as k"
        " where k.conrelid::regclass::text = any(%(new_tables)s) and k.contype in ('c', 'x')"
        " and obj_description(k.oid, 'pg_constraint') is null"
        " union all select 'column ' || a.attrelid::regclass::text || '.' || a.attname"
        " from pg_attribute as a where a.attrelid::regclass::text = any(%(new_tables)s)"
        " and a.attnum > 0 and not a.attisdropped"
        " and col_description(a.attrelid, a.attnum) is null",
        {
            "schemas": list(OUR_SCHEMAS),
            "tables": workflow_tables,
            "new_tables": ["task_steps", "audit_log"],
        },
    ).fetchall()
    assert uncommented == []
