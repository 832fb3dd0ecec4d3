"""The backfill on a live database: a killed process resumes, concurrent legacy writes are
all covered."""

from __future__ import annotations

import os
import pty
import random
import signal
import subprocess
import sys
import threading
import uuid

import psycopg
import pytest

from sync import backfill
from tests.support import (
    acting_as,
    generate_legacy_tasks,
    live_steps,
    make_agent,
    make_user,
    task_instructions,
)
from tests.workers import wait_until

pytestmark = pytest.mark.slow


def cli(db_url: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sync", "backfill", "legacy-tasks", "--database-url", db_url, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_a_killed_run_resumes_from_its_checkpoint(conn: psycopg.Connection, db_url: str) -> None:
    user_id = make_user(conn)
    generate_legacy_tasks(conn, user_id, make_agent(conn, user_id), 1000)
    # Hold task no. 501 so the 11th batch of 50 is caught mid-transaction.
    blocked_id = conn.execute(
        "select id from public.agent_tasks order by id offset 500 limit 1"
    ).fetchone()[0]
    with psycopg.connect(db_url) as holder:
        holder.execute("select from public.agent_tasks where id = %s for update", [blocked_id])
        process = cli(db_url, "--batch-size", "50", "--lock-timeout", "60000")
        backend = wait_until(
            lambda: conn.execute(
                "select pid from pg_stat_activity where application_name = %s"
                " and wait_event_type = 'Lock'",
                [backfill.APPLICATION_NAME],
            ).fetchone(),
            what="the backfill to block on the held task",
        )[0]
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    # The lock is released; the orphaned backend finds its client gone and rolls back.
    wait_until(
        lambda: (
            not conn.execute("select 1 from pg_stat_activity where pid = %s", [backend]).fetchone()
        ),
        what="the killed run's backend to end",
    )

    run = conn.execute(
        "select id, status, tasks_scanned, steps_created from stepsync.backfill_runs"
    ).fetchall()
    assert len(run) == 1
    run_id, status, scanned, created = run[0]
    assert (status, scanned, created) == ("running", 500, 500)
    assert live_steps(conn, blocked_id) == []
    assert conn.execute("select count(*) from public.task_steps").fetchone() == (500,)

    # Starting afresh is refused while a run is unfinished; --resume continues it.
    refused = cli(db_url)
    assert refused.wait(timeout=60) == 1
    assert "--resume" in refused.stderr.read()

    resumed = cli(db_url, "--resume", "--batch-size", "50")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert f"Backfill run {run_id}: completed" in out
    assert conn.execute(
        "select status, tasks_scanned, steps_created from stepsync.backfill_runs"
    ).fetchone() == ("completed", 1000, 1000)
    assert conn.execute(
        "select count(*), count(distinct task_id) from public.task_steps"
    ).fetchone() == (1000, 1000)
    with backfill.connect(db_url) as bf:
        assert backfill.verify(bf, backfill.Settings()).ok


def test_concurrent_legacy_inserts_and_updates_are_all_covered(
    conn: psycopg.Connection, db_url: str
) -> None:
    user_id = make_user(conn)
    agent_id = make_agent(conn, user_id)
    generate_legacy_tasks(conn, user_id, agent_id, 3000)
    existing = [r[0] for r in conn.execute("select id from public.agent_tasks")]
    settings = backfill.Settings(batch_size=100)

    outcome: dict[str, object] = {}

    def run_backfill() -> None:
        try:
            with backfill.connect(db_url) as bf:
                outcome["run"] = backfill.run(bf, backfill.start_run(bf, settings), settings)
        except Exception as exc:
            outcome["error"] = exc

    inserted: list[uuid.UUID] = []
    last_text: dict[uuid.UUID, str] = {}
    during_run = 0
    rng = random.Random(7)
    worker = threading.Thread(target=run_backfill)
    with psycopg.connect(db_url, autocommit=True) as writer:
        worker.start()
        n = 0
        while worker.is_alive() or n < 200:
            n += 1
            if n % 2:
                with acting_as(writer, "authenticated", user_id):
                    inserted.append(
                        writer.execute(
                            "insert into public.agent_tasks (agent_id, user_id, name, instructions)"
                            " values (%s, %s, %s, %s) returning id",
                            [agent_id, user_id, f"New {n}", f"Fresh work {n}"],
                        ).fetchone()[0]
                    )
            else:
                task_id = rng.choice(existing)
                text = f"Edited {n}"
                with acting_as(writer, "authenticated", user_id):
                    writer.execute(
                        "update public.agent_tasks set instructions = %s where id = %s",
                        [text, task_id],
                    )
                last_text[task_id] = text
            scanned = writer.execute("select tasks_scanned from stepsync.backfill_runs").fetchone()
            if scanned and 0 < scanned[0] < 3000:
                during_run += 1
        worker.join()

    assert "error" not in outcome, outcome.get("error")
    assert during_run > 10, "the writes did not overlap the backfill"
    with backfill.connect(db_url) as bf:
        report = backfill.verify(bf, settings)
    assert report.ok, report.exceptions
    assert report.eligible == 3000 + len(inserted)
    for task_id, text in last_text.items():
        assert task_instructions(conn, task_id) == text
        assert [s[2] for s in live_steps(conn, task_id)] == [text]
    assert all(len(live_steps(conn, t)) == 1 for t in inserted)


def test_a_terminal_gets_a_progress_bar_with_rate_and_eta(
    conn: psycopg.Connection, db_url: str
) -> None:
    user_id = make_user(conn)
    generate_legacy_tasks(conn, user_id, make_agent(conn, user_id), 200)
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sync",
            "backfill",
            "legacy-tasks",
            "--database-url",
            db_url,
            "--batch-size",
            "20",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    out = process.stdout.read().decode()
    assert process.wait(timeout=60) == 0
    screen = shown.decode(errors="replace")
    assert "200/200" in screen and "tasks/s" in screen and "ETA" in screen
    # The plain periodic lines are for logs only.
    assert "backfill: 200/200 tasks" not in screen
    assert "completed" in out


def test_ctrl_c_rolls_the_batch_back_and_says_how_to_resume(
    conn: psycopg.Connection, db_url: str
) -> None:
    user_id = make_user(conn)
    generate_legacy_tasks(conn, user_id, make_agent(conn, user_id), 100)
    blocked_id = conn.execute(
        "select id from public.agent_tasks order by id offset 30 limit 1"
    ).fetchone()[0]
    with psycopg.connect(db_url) as holder:
        holder.execute("select from public.agent_tasks where id = %s for update", [blocked_id])
        process = cli(db_url, "--batch-size", "10", "--lock-timeout", "60000")
        wait_until(
            lambda: conn.execute(
                "select 1 from pg_stat_activity where application_name = %s"
                " and wait_event_type = 'Lock'",
                [backfill.APPLICATION_NAME],
            ).fetchone(),
            what="the backfill to block on the held task",
        )
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "resume with --resume" in err
    assert conn.execute("select status, tasks_scanned from stepsync.backfill_runs").fetchone() == (
        "running",
        30,
    )
    assert conn.execute("select count(*) from public.task_steps").fetchone() == (30,)
