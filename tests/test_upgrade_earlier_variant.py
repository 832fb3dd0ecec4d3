"""Upgrade in place from the earlier task_steps variant: every row and value kept (the
execution columns folded into execution_result), every function of that variant gone,
and the schema identical to a fresh install's."""

from __future__ import annotations

import shutil
from pathlib import Path

import psycopg
import pytest

from sync import migrations
from tests.support import make_agent, make_task, make_user

FIXTURE = Path(__file__).parent / "fixtures" / "earlier_variant.sql"
BASELINE = "20261126000100_legacy_baseline.sql"

CATALOG_QUERIES = {
    "columns": """
        select c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
            pg_get_expr(d.adbin, d.adrelid)
        from pg_attribute as a
        join pg_class as c on c.oid = a.attrelid
        left join pg_attrdef as d on d.adrelid = a.attrelid and d.adnum = a.attnum
        where c.relnamespace::regnamespace::text in ('public', 'stepsync')
            and c.relkind in ('r', 'p', 'v') and a.attnum > 0 and not a.attisdropped
        order by 1, 2""",
    "constraints": """
        select conrelid::regclass::text, conname, pg_get_constraintdef(oid), condeferrable
        from pg_constraint
        where connamespace::regnamespace::text in ('public', 'stepsync') and conrelid <> 0
        order by 1, 2""",
    "indexes": """
        select tablename, indexname, indexdef from pg_indexes
        where schemaname in ('public', 'stepsync') order by 1, 2""",
    "functions": """
        select p.oid::regprocedure::text, p.prosecdef, p.proconfig, md5(p.prosrc),
            pg_get_function_result(p.oid), p.proacl::text
        from pg_proc as p
        where p.pronamespace::regnamespace::text in ('public', 'stepsync')
        order by 1""",
    "policies": """
        select tablename, policyname, permissive, roles, cmd, qual, with_check
        from pg_policies where schemaname in ('public', 'stepsync') order by 1, 2""",
    "triggers": """
        select tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) from pg_trigger
        where not tgisinternal
            and tgrelid::regclass::text not like 'auth.%%'
        order by 1, 2""",
    "enums": """
        select t.typname, array_agg(e.enumlabel order by e.enumsortorder)
        from pg_enum as e join pg_type as t on t.oid = e.enumtypid
        where t.typnamespace::regnamespace::text = 'public' group by 1 order by 1""",
    "table privileges": """
        select c.oid::regclass::text, c.relacl::text, c.relrowsecurity from pg_class as c
        where c.relnamespace::regnamespace::text in ('public', 'stepsync')
            and c.relkind in ('r', 'p') order by 1""",
    "publication": """
        select schemaname, tablename from pg_publication_tables
        where pubname = 'supabase_realtime' order by 1, 2""",
}


def catalog(url: str) -> dict[str, list[tuple]]:
    with psycopg.connect(url) as conn:
        return {name: conn.execute(sql).fetchall() for name, sql in CATALOG_QUERIES.items()}


def earlier_variant_database(url: str, tmp_path: Path) -> dict:
    """Baseline, then the earlier variant with data in every shape it allowed."""
    baseline_only = tmp_path / "baseline"
    baseline_only.mkdir()
    shutil.copy(migrations.MIGRATIONS_DIR / BASELINE, baseline_only / BASELINE)
    migrations.push(url, baseline_only)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(FIXTURE.read_text())
        owner = make_user(conn)
        agent = make_agent(conn, owner)
        multi = make_task(conn, owner, agent, instructions="Multi-step task with 3 steps...")
        single = make_task(conn, owner, agent)
        conn.execute(
            "update public.agent_tasks set is_multi_step = true, step_count = 3 where id = %s",
            [multi],
        )
        conn.execute(
            """
            insert into public.task_steps (task_id, step_order, step_name, instructions,
                include_previous_context, context_data, status, execution_result,
                execution_started_at, execution_completed_at, execution_duration_ms,
                error_message, retry_count, created_at, updated_at)
            values
                (%(multi)s, 1, 'Fetch', 'Fetch the inbox', false, '{"folder": "in"}',
                 'completed', '{"text": "12 mails"}', '2025-08-01 10:00:00+00',
                 '2025-08-01 10:00:02+00', 2000, null, 0,
                 '2025-07-01 09:00:00+00', '2025-08-01 10:00:02+00'),
                (%(multi)s, 2, 'Summarise', 'Summarise them', true, null, 'failed', null,
                 '2025-08-01 10:00:02+00', '2025-08-01 10:00:09+00', 7000, 'model timeout', 2,
                 '2025-07-01 09:00:00+00', '2025-08-01 10:00:09+00'),
                (%(multi)s, 3, 'Send', 'Send the summary', null, '{}', 'pending', null,
                 null, null, null, null, 0,
                 '2025-07-01 09:00:00+00', '2025-07-01 09:00:00+00'),
                (%(single)s, 1, 'Task Step 1', 'Summarise the inbox', false, '{}', 'skipped',
                 '"plain text result"', null, null, null, null, null,
                 '2025-07-02 09:00:00+00', null),
                (%(single)s, 3, 'Gap after', 'Second step at 3', false, '[1, 2]', null, '{}',
                 null, null, null, null, 0, null, '2025-07-03 09:00:00+00')
            """,
            {"multi": multi, "single": single},
        )
        ids = dict(
            conn.execute(
                "select task_id::text || ':' || step_order, id from public.task_steps"
            ).fetchall()
        )
    return {"owner": owner, "multi": multi, "single": single, "ids": ids}


def test_upgrade_keeps_every_row_and_value(blank_db_url: str, tmp_path: Path) -> None:
    before = earlier_variant_database(blank_db_url, tmp_path)
    migrations.push(blank_db_url)
    multi, single = before["multi"], before["single"]
    with psycopg.connect(blank_db_url) as conn:
        rows = conn.execute(
            "select task_id::text || ':' || step_order, id, step_name, instructions,"
            " include_previous_context, context_data, status::text, execution_result,"
            " created_at::text, updated_at::text, deleted_at"
            " from public.task_steps order by task_id = %s desc, step_order",
            [multi],
        ).fetchall()
    ids = before["ids"]
    utc = "+00"
    assert rows == [
        (
            f"{multi}:1",
            ids[f"{multi}:1"],
            "Fetch",
            "Fetch the inbox",
            False,
            {"folder": "in"},
            "completed",
            {
                "text": "12 mails",
                "legacy_execution": {
                    "started_at": "2025-08-01T10:00:00+00:00",
                    "completed_at": "2025-08-01T10:00:02+00:00",
                    "duration_ms": 2000,
                },
            },
            f"2025-07-01 09:00:00{utc}",
            f"2025-08-01 10:00:02{utc}",
            None,
        ),
        (
            f"{multi}:2",
            ids[f"{multi}:2"],
            "Summarise",
            "Summarise them",
            True,
            {},
            "failed",
            {
                "legacy_execution": {
                    "started_at": "2025-08-01T10:00:02+00:00",
                    "completed_at": "2025-08-01T10:00:09+00:00",
                    "duration_ms": 7000,
                    "error_message": "model timeout",
                    "retry_count": 2,
                }
            },
            f"2025-07-01 09:00:00{utc}",
            f"2025-08-01 10:00:09{utc}",
            None,
        ),
        (
            f"{multi}:3",
            ids[f"{multi}:3"],
            "Send",
            "Send the summary",
            False,
            {},
            "pending",
            {},
            f"2025-07-01 09:00:00{utc}",
            f"2025-07-01 09:00:00{utc}",
            None,
        ),
        (
            f"{single}:1",
            ids[f"{single}:1"],
            "Task Step 1",
            "Summarise the inbox",
            False,
            {},
            "skipped",
            {"value": "plain text result"},
            f"2025-07-02 09:00:00{utc}",
            f"2025-07-02 09:00:00{utc}",
            None,
        ),
        (
            f"{single}:3",
            ids[f"{single}:3"],
            "Gap after",
            "Second step at 3",
            False,
            {"value": [1, 2]},
            "pending",
            {},
            f"2025-07-03 09:00:00{utc}",
            f"2025-07-03 09:00:00{utc}",
            None,
        ),
    ]


def test_upgraded_schema_equals_a_fresh_install(
    blank_db_url: str, db_url: str, tmp_path: Path
) -> None:
    earlier_variant_database(blank_db_url, tmp_path)
    migrations.push(blank_db_url)
    upgraded, fresh = catalog(blank_db_url), catalog(db_url)
    for part in CATALOG_QUERIES:
        assert upgraded[part] == fresh[part], part


def test_no_function_of_the_earlier_variant_survives(blank_db_url: str, tmp_path: Path) -> None:
    earlier_variant_database(blank_db_url, tmp_path)
    migrations.push(blank_db_url)
    with psycopg.connect(blank_db_url) as conn:
        left = conn.execute(
            "select oid::regprocedure::text from pg_proc where pronamespace = 'public'::regnamespace"
            " and proname in ('execute_sql', 'create_task_step', 'update_task_step',"
            " 'delete_task_step', 'get_task_steps_with_context', 'update_step_execution',"
            " 'get_task_step_count', 'get_next_pending_step', 'get_previous_step_context',"
            " 'update_task_steps_updated_at', 'reorder_task_steps')"
        ).fetchall()
    assert left == [("reorder_task_steps(uuid,uuid[])",)]


def test_rows_the_new_rules_cannot_hold_stop_the_upgrade_cleanly(
    blank_db_url: str, tmp_path: Path
) -> None:
    before = earlier_variant_database(blank_db_url, tmp_path)
    with psycopg.connect(blank_db_url, autocommit=True) as conn:
        conn.execute(
            "insert into public.task_steps (task_id, step_order, step_name, instructions)"
            " values (%s, 51, 'Far', 'away')",
            [before["single"]],
        )
    with pytest.raises(migrations.MigrationError, match=r"step_order 51 is outside 1\.\.50"):
        migrations.push(blank_db_url)
    with psycopg.connect(blank_db_url) as conn:
        still_there = conn.execute(
            "select count(*) from information_schema.columns"
            " where table_name = 'task_steps' and column_name = 'retry_count'"
        ).fetchone()
    assert still_there == (1,)  # nothing changed; fix the row and run it again
