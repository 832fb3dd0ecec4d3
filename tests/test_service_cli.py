"""``stepsync run --wait``, ``runs`` and ``show`` against a real worker process."""

from __future__ import annotations

import signal
import uuid

from typer.testing import CliRunner

from sync.cli import app
from tests.support import make_agent, make_task, make_user, replace_steps, run_statuses
from tests.workers import HOLD_ENV, create_step_log, wait_until, workers

runner = CliRunner(env={"COLUMNS": "160"})


def test_run_wait_follows_a_run_to_the_end_and_runs_and_show_report_it(conn, db_url, tmp_path):
    create_step_log(conn)
    user_id = make_user(conn)
    task_id = make_task(conn, user_id, make_agent(conn, user_id), name="Weekly digest")
    replace_steps(
        conn,
        task_id,
        [
            {"step_name": "Collect", "instructions": "Collect the news"},
            {
                "step_name": "Summarise",
                "instructions": "Summarise them",
                "include_previous_context": True,
            },
            {"step_name": "Break", "instructions": "fail"},
        ],
    )
    with workers(db_url, tmp_path, 1):
        result = runner.invoke(app, ["run", str(task_id), "--wait", "--database-url", db_url])
    # The third step fails on purpose: the run fails and the command says so by exit code.
    assert result.exit_code == 1, result.output
    run_id = uuid.UUID(result.output.split()[1])
    for text in ("Weekly digest", "Collect", "Summarise", "completed", "failed"):
        assert text in result.output
    assert "step 3 fails on purpose" in result.output

    listing = runner.invoke(app, ["runs", "--database-url", db_url])
    assert listing.exit_code == 0, listing.output
    assert str(run_id) in listing.output and "2/3" in listing.output

    shown = runner.invoke(app, ["show", str(run_id), "--database-url", db_url])
    assert shown.exit_code == 1
    assert "Summarise" in shown.output and "step 3 fails on purpose" in shown.output

    detailed = runner.invoke(app, ["show", str(run_id), "--context", "--database-url", db_url])
    assert "step 2: Summarise" in detailed.output
    assert '"mode": "previous"' in detailed.output  # step 2's input context, as received
    assert '"worker": "w0"' in detailed.output  # and the outputs


def test_run_names_a_task_that_cannot_run(db_url):
    missing = uuid.uuid4()
    result = runner.invoke(app, ["run", str(missing), "--database-url", db_url])
    assert result.exit_code == 1
    assert f"cannot start a run of task {missing}" in result.output

    bad = runner.invoke(app, ["show", "not-a-uuid", "--database-url", db_url])
    assert bad.exit_code == 1 and "'not-a-uuid' is not a valid run id" in bad.output


def test_cancel_stops_a_running_run(conn, db_url, tmp_path):
    create_step_log(conn)
    user_id = make_user(conn)
    task_id = make_task(conn, user_id, make_agent(conn, user_id))
    replace_steps(conn, task_id, [{"instructions": "hold"}, {"instructions": "noop"}])
    with workers(db_url, tmp_path, 1, env={HOLD_ENV: "3600"}) as (worker,):
        started = runner.invoke(app, ["run", str(task_id), "--database-url", db_url])
        run_id = started.output.split()[1]
        wait_until(
            lambda: conn.execute("select 1 from public.test_step_log").fetchone(),
            what="step 1 to start",
        )
        result = runner.invoke(app, ["cancel", run_id, "--database-url", db_url])
        assert result.exit_code == 0, result.output
        assert f"run {run_id} cancelled" in result.output
        worker.wait_for_log(lambda e: e.get("msg") == "lease lost; execution cancelled")
        again = runner.invoke(app, ["cancel", run_id, "--database-url", db_url])
        worker.signal(signal.SIGTERM)
        assert worker.proc.wait(30) == 0
    assert again.exit_code == 1 and "was not cancelled (already finished?)" in again.output
    assert run_statuses(conn, [uuid.UUID(run_id)]) == {"cancelled": 1}
    executed = conn.execute("select step_order from public.test_step_log").fetchall()
    assert executed == [(1,)]
