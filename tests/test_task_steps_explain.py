"""The owner's listing of a 50-step task stays an index scan, with row level security on,
when the table holds 200,000 steps (a plan check, not a timing)."""

from __future__ import annotations

import json

import psycopg

from tests.support import acting_as, make_user, triggers_off


def plan_nodes(plan: dict) -> list[dict]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes += plan_nodes(child)
    return nodes


def test_owner_listing_is_an_index_scan_among_200k_steps(conn: psycopg.Connection) -> None:
    owner = make_user(conn)
    # 4,000 tasks of 50 steps, set-based; triggers off for the bulk set-up only.
    with triggers_off(conn):
        conn.execute(
            "insert into auth.users (id) select gen_random_uuid() from generate_series(1, 200)"
        )
        conn.execute("insert into public.agents (user_id, name) select id, 'Agent' from auth.users")
        conn.execute(
            "insert into public.agent_tasks (agent_id, user_id, name, instructions)"
            " select a.id, a.user_id, 'Task ' || g, 'Work' from public.agents as a"
            " cross join generate_series(1, 20) as g"
        )
        conn.execute(
            "insert into public.task_steps (task_id, step_order, step_name, instructions)"
            " select t.id, o, 'Step ' || o, 'Do part ' || o from public.agent_tasks as t"
            " cross join generate_series(1, 50) as o"
        )
    assert conn.execute("select count(*) from public.task_steps").fetchone()[0] >= 200_000
    task = conn.execute(
        "select t.id from public.agent_tasks as t join public.agents as a on a.id = t.agent_id"
        " where a.user_id = %s limit 1",
        [owner],
    ).fetchone()[0]
    conn.execute("analyze public.task_steps, public.agent_tasks, public.agents")

    with acting_as(conn, "authenticated", owner) as c:
        listed = c.execute(
            "select step_order from public.task_steps where task_id = %s order by step_order",
            [task],
        ).fetchall()
        (plan,) = c.execute(
            "explain (format json) select * from public.task_steps"
            " where task_id = %s order by step_order",
            [task],
        ).fetchone()
    assert listed == [(n,) for n in range(1, 51)]
    if isinstance(plan, str):
        plan = json.loads(plan)
    nodes = plan_nodes(plan[0]["Plan"])
    on_steps = [n["Node Type"] for n in nodes if n.get("Relation Name") == "task_steps"]
    assert on_steps and "Seq Scan" not in on_steps, on_steps
    # Index Scan, or a Bitmap Heap Scan fed by a Bitmap Index Scan: driven by a step index.
    used = {n.get("Index Name") for n in nodes if "Index" in n["Node Type"]}
    assert used & {"task_steps_live_order_unique", "task_steps_task_id_idx"}, nodes
