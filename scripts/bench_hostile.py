"""The most one signed-in user's single request can cost the database: before and after the
limits, on one server, in server milliseconds and backend memory.

Two databases on one embedded PostgreSQL: "before" migrated with an earlier commit's SQL
(``--before REV``, default the commit the limits were built on), "after" with this
checkout's. Each request is the kind a hostile user found (issue 17), made the way
PostgREST makes it (``set local role authenticated`` and the JWT claims), on a fresh
connection; time is measured around the statement (the server is local), memory is the
backend's peak resident set (``VmHWM`` from ``/proc``) minus its size before the request.

- ``repeated subscripts``: a selective context path that repeats one array item ten times
  per subscript, previewed over a 2,000-item output (the 2.9 GB preview, at two
  subscripts instead of five: memory grows tenfold per subscript);
- ``placeholders``: a custom template with 5,000 placeholders, previewed (the 8 s one had
  20,000: rendering was quadratic);
- ``deep context``: context_data nested 4,000 deep, then the claim that picks it up (it
  failed every claim, for everyone);
- ``largest save`` / ``heaviest preview`` / ``heaviest claim``: the worst a user can
  still do within the limits: 50 steps at every size limit, previewed and claimed over a
  last run whose 49 outputs are each at the output limit, with 10 wildcard paths per step.

Usage: .venv/bin/python scripts/bench_hostile.py [--before REV]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' helpers

from sync import migrations  # noqa: E402
from tests.helpers import provision  # noqa: E402

BASE_REVISION = "6079f2f"
MIGRATIONS = "supabase/migrations"


def migrations_at(revision: str, into: Path) -> Path:
    """The migration files as they were at ``revision``."""
    names = subprocess.run(
        ["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{revision}:{MIGRATIONS}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    into.mkdir(parents=True)
    for name in names:
        text = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{revision}:{MIGRATIONS}/{name}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        (into / name).write_text(text)
    return into


class World:
    """One database: a user with an agent, and the tasks the requests use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.admin = psycopg.connect(url, autocommit=True)
        self.user = uuid.uuid4()
        self.admin.execute(
            "insert into auth.users (id, email) values (%s, 'hostile@example.test')", [self.user]
        )
        self.agent = self.admin.execute(
            "insert into public.agents (user_id, name) values (%s, 'a') returning id", [self.user]
        ).fetchone()[0]
        self.admin.execute(
            "update stepsync.feature_flags set enabled = true, rollout_percent = 100"
        )
        with contextlib.suppress(psycopg.Error):  # the quotas exist after the limits only
            self.admin.execute("update stepsync.settings set value = 0")

    def task(self, name: str) -> uuid.UUID:
        return self.admin.execute(
            "insert into public.agent_tasks (agent_id, user_id, name, instructions)"
            " values (%s, %s, %s, 'x') returning id",
            [self.agent, self.user, name],
        ).fetchone()[0]

    def as_user(self, conn: psycopg.Connection) -> None:
        conn.execute("set local role authenticated")
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            [json.dumps({"role": "authenticated", "sub": str(self.user)})],
        )

    def save(self, task_id: uuid.UUID, steps: str) -> None:
        with self.admin.transaction():
            self.as_user(self.admin)
            self.admin.execute("select public.save_task_steps(%s, %s::jsonb)", [task_id, steps])

    def last_run(self, task_id: uuid.UUID, outputs: list[str]) -> None:
        """A finished run of the task whose first steps output ``outputs`` (the rest
        cancelled), which previews then read."""
        with self.admin.transaction():
            self.admin.execute("set local role service_role")
            run = self.admin.execute("select public.start_task_run(%s)", [task_id]).fetchone()[0]
            self.admin.execute(
                "update public.task_step_executions set status = 'completed', attempt = 1,"
                " output = (%s::jsonb[])[step_order], started_at = now(), completed_at = now()"
                " where run_id = %s and step_order <= %s",
                [outputs, run, len(outputs)],
            )
            self.admin.execute("select public.cancel_task_run(%s)", [run])

    def close(self) -> None:
        self.admin.close()


def backend_memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a backend, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def measure(world: World, request: Callable[[psycopg.Connection], object], *, as_user: bool = True):
    """(milliseconds, peak MB above the start, outcome) of one request on a fresh backend."""
    with psycopg.connect(world.url, autocommit=True) as conn:
        pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        conn.execute("select 1")
        rss_before, _ = backend_memory_kb(pid)
        outcome = "ok"
        started = time.perf_counter()
        try:
            with conn.transaction():
                if as_user:
                    world.as_user(conn)
                else:
                    conn.execute("set local role service_role")
                request(conn)
        except psycopg.Error as exc:
            outcome = f"{exc.sqlstate}: {(exc.diag.message_primary or '')[:70]}"
        elapsed = (time.perf_counter() - started) * 1000
        _, peak = backend_memory_kb(pid)
    return elapsed, max(0, peak - rss_before) / 1024, outcome


def steps_json(steps: list[dict]) -> str:
    return json.dumps(steps)


def scenario_subscripts(world: World) -> Callable:
    task_id = world.task("subscripts")
    path = "$.steps[0].output[*]" + "[0,0,0,0,0,0,0,0,0,0]" * 2
    steps = [
        {"instructions": "make a list"},
        {
            "instructions": "pick",
            "include_previous_context": True,
            "context_mode": "selective",
            "context_paths": [path],
        },
    ]
    try:
        world.save(task_id, steps_json(steps))
    except psycopg.Error:
        # Refused: the request a user can make is the save itself.
        return lambda conn: conn.execute(
            "select public.save_task_steps(%s, %s::jsonb)", [task_id, steps_json(steps)]
        )
    world.last_run(task_id, [json.dumps(["x" * 100] * 2000)])
    return lambda conn: conn.execute("select public.preview_task_run(%s)", [task_id])


def scenario_placeholders(world: World) -> Callable:
    task_id = world.task("placeholders")
    template = " ".join("{{task.name}}" for _ in range(5000))
    steps = [
        {
            "instructions": "render",
            "include_previous_context": True,
            "context_mode": "custom",
            "context_template": template,
        }
    ]
    try:
        world.save(task_id, steps_json(steps))
    except psycopg.Error:
        return lambda conn: conn.execute(
            "select public.save_task_steps(%s, %s::jsonb)", [task_id, steps_json(steps)]
        )
    return lambda conn: conn.execute("select public.preview_task_run(%s)", [task_id])


def scenario_deep(world: World) -> Callable:
    task_id = world.task("deep")
    deep = '{"a": ' * 4000 + '{"token": 1}' + "}" * 4000
    steps = f'[{{"instructions": "x", "context_data": {deep}}}]'
    try:
        world.save(task_id, steps)
    except psycopg.Error:
        return lambda conn: conn.execute(
            "select public.save_task_steps(%s, %s::jsonb)", [task_id, steps]
        )
    with world.admin.transaction():
        world.admin.execute("set local role service_role")
        world.admin.execute("select public.start_task_run(%s)", [task_id])

    def claim(conn: psycopg.Connection) -> None:
        conn.execute("select * from stepsync.claim_steps('bench', 10, 30)")

    return claim


def heavy_steps(count: int, selective: bool) -> list[dict]:
    """``count`` steps at every size limit; selective ones with 10 wildcard paths."""
    template = " ".join(f"{{{{steps[{n % 49}].output[*]}}}}" for n in range(100))
    steps = []
    for n in range(count):
        step = {
            "step_name": f"S{n}".ljust(200, "n"),
            "instructions": "i" * 100_000,
            "context_data": {"notes": "c" * 16_000},
            "include_previous_context": True,
        }
        if selective:
            step["context_mode"] = "selective"
            step["context_paths"] = [f'$.steps[*].output[*] ? (@ == "v{k}")' for k in range(10)]
        else:
            step["context_mode"] = "custom"
            step["context_template"] = template[:19_000]
        steps.append(step)
    return steps


def big_output() -> str:
    """An output at the output limit: an array of short strings (the most items)."""
    return json.dumps(["v" * 10] * 4_400)


def scenario_largest_save(world: World) -> Callable:
    task_id = world.task("largest save")
    steps = steps_json(heavy_steps(50, selective=False))
    return lambda conn: conn.execute(
        "select public.save_task_steps(%s, %s::jsonb)", [task_id, steps]
    )


def scenario_heaviest_preview(world: World) -> Callable:
    task_id = world.task("heaviest preview")
    world.save(task_id, steps_json(heavy_steps(50, selective=True)))
    world.last_run(task_id, [big_output()] * 49)
    return lambda conn: conn.execute("select public.preview_task_run(%s)", [task_id])


def scenario_heaviest_claim(world: World) -> Callable:
    task_id = world.task("heaviest claim")
    world.save(task_id, steps_json(heavy_steps(50, selective=True)))
    with world.admin.transaction():
        world.admin.execute("set local role service_role")
        run = world.admin.execute("select public.start_task_run(%s)", [task_id]).fetchone()[0]
        world.admin.execute(
            "update public.task_step_executions set status = 'completed', attempt = 1,"
            " output = %s::jsonb, started_at = now(), completed_at = now()"
            " where run_id = %s and step_order < 50",
            [big_output(), run],
        )
        fair_order = world.admin.execute(  # the fair claim order came with the limits
            "select exists (select from information_schema.columns"
            " where table_name = 'task_step_executions' and column_name = 'fair_at')"
        ).fetchone()[0]
        world.admin.execute(
            "update public.task_step_executions set status = 'queued', run_after = now()"
            + (", fair_at = now()" if fair_order else "")
            + " where run_id = %s and step_order = 50",
            [run],
        )

    def claim(conn: psycopg.Connection) -> None:
        conn.execute("select * from stepsync.claim_steps('bench', 10, 30)")

    return claim


SCENARIOS: list[tuple[str, Callable[[World], Callable], bool]] = [
    ("repeated subscripts (preview)", scenario_subscripts, True),
    ("5,000 placeholders (preview)", scenario_placeholders, True),
    ("context_data 4,000 deep (the next claim)", scenario_deep, False),
    ("largest save within the limits", scenario_largest_save, True),
    ("heaviest preview within the limits", scenario_heaviest_preview, True),
    ("heaviest claim within the limits", scenario_heaviest_claim, False),
]


@contextlib.contextmanager
def database(server: provision.Server, name: str, source: Path) -> Iterator[str]:
    url = provision.create_database(server.url, name)
    try:
        provision.bootstrap_supabase(url)
        migrations.push(url, source)
        yield url
    finally:
        provision.drop_database(server.url, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BASE_REVISION, help="revision whose SQL is 'before'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        before_sql = migrations_at(args.before, Path(scratch) / "before")
        server = provision.start_server(Path(scratch) / "data", fast=True)
        try:
            print(f"PostgreSQL {provision.server_version(server.url)}; before = {args.before}")
            print(f"{'request':<42} {'version':<7} {'ms':>9} {'peak MB':>8}  outcome")
            for label, build, as_user in SCENARIOS:
                for version, source in (("before", before_sql), ("after", None)):
                    name = f"bench_hostile_{version}_{uuid.uuid4().hex[:6]}"
                    with database(server, name, source or migrations.MIGRATIONS_DIR) as url:
                        world = World(url)
                        try:
                            request = build(world)
                            ms, mb, outcome = measure(world, request, as_user=as_user)
                        finally:
                            world.close()
                    print(f"{label:<42} {version:<7} {ms:9.1f} {mb:8.1f}  {outcome}", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
