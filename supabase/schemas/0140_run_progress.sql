-- Run progress: how a run moves forward between steps, the bookkeeping every step
-- transition does (run counters), and what a finished run leaves behind (the task's
-- counters, the definition's latest-run snapshot).
--
-- Lock order, everywhere: the run row first (for no key update), then its step rows.
-- cancel, complete, fail and the reaper all follow it, so they cannot deadlock.
--
-- A finished run leaves three writes behind: the run row, the task's counters and the
-- definitions' latest-run snapshot (task_steps), the last two audited. The snapshot is
-- written when the run ends, not at every step transition: every statement on task_steps
-- runs its checks and is audited. finish_runs makes each of the three writes one
-- statement for all the runs it is given (complete_steps hands it every run its batch
-- ended), with one audit statement each; every changed row still gets its own audit row.
-- finish_run is finish_runs for one run, so both follow one code path.

create or replace function stepsync.finish_runs(
    p_run_ids uuid[],
    p_status public.task_execution_status_enum,
    p_error text default null
)
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    finishing uuid[];
begin
    -- Lock order: runs in id order, then tasks in id order, then definitions (the same
    -- order as one run at a time, so batches and single calls wait instead of
    -- deadlocking). Runs already over are left alone.
    select array_agg(open_run.id) into finishing
    from (
        select r.id
        from unnest(p_run_ids) as given (id)
        inner join public.agent_task_executions as r on given.id = r.id
        where r.status in ('pending', 'running')
        order by r.id
        for no key update of r
    ) as open_run;
    if finishing is null then
        return;
    end if;

    -- A run's output is the output of its last completed step (text, as the app shows
    -- it: a JSON string verbatim, anything else as JSON).
    update public.agent_task_executions as r
    set
        status = p_status,
        completed_at = now(),
        duration_ms = (extract(epoch from now() - coalesce(r.started_at, r.created_at)) * 1000)::integer,
        output = case
            when jsonb_typeof(last_step.output) = 'string' then last_step.output #>> '{}'
            else last_step.output::text
        end,
        error_message = coalesce(p_error, r.error_message),
        updated_at = now()
    from unnest(finishing) as finished (id)
    left join lateral (
        select s.output
        from public.task_step_executions as s
        where s.run_id = finished.id and s.status = 'completed'
        order by s.step_order desc
        limit 1
    ) as last_step on true
    where r.id = finished.id;

    -- The tasks' counters, as the legacy executor kept them. Cancelled runs are not
    -- executions that succeeded or failed, so they count nowhere.
    if p_status in ('completed', 'failed') then
        perform from unnest(finishing) as finished (id)
        inner join public.agent_task_executions as r on finished.id = r.id
        inner join public.agent_tasks as t on r.task_id = t.id
        order by t.id
        for no key update of t;

        update public.agent_tasks as t
        set
            total_executions = t.total_executions + per_task.runs,
            successful_executions
            = t.successful_executions + per_task.runs * (p_status = 'completed')::integer,
            failed_executions
            = t.failed_executions + per_task.runs * (p_status = 'failed')::integer,
            last_run_at = now(),
            updated_at = now()
        from (
            select r.task_id, count(*)::integer as runs
            from unnest(finishing) as finished (id)
            inner join public.agent_task_executions as r on finished.id = r.id
            group by r.task_id
        ) as per_task
        where t.id = per_task.task_id;
    end if;

    -- The definitions keep their task's latest run's final status and result for the UI
    -- (live progress is on task_step_executions). An older run finishing late does not
    -- overwrite a newer one's; a row already holding exactly this is not rewritten.
    update public.task_steps as d
    set
        status = snapshot.status,
        execution_result = snapshot.result
    from (
        select
            s.step_id,
            s.status,
            jsonb_build_object(
                'run_id', s.run_id,
                'step_execution_id', s.id,
                'status', s.status,
                'attempt', s.attempt,
                'output', s.output,
                'error', s.error_message,
                'started_at', s.started_at,
                'completed_at', s.completed_at,
                'duration_ms', s.duration_ms
            ) as result
        from unnest(finishing) as finished (id)
        inner join public.agent_task_executions as run on finished.id = run.id
        inner join public.task_step_executions as s on run.id = s.run_id
        where
            not exists (
                select from public.agent_task_executions as newer
                where newer.task_id = run.task_id and newer.created_at > run.created_at
            )
            and s.step_id is not null
            and s.status in ('completed', 'failed', 'skipped', 'cancelled')
    ) as snapshot
    where
        d.id = snapshot.step_id
        and (d.status, d.execution_result)
        is distinct from (snapshot.status, snapshot.result);
end
$$;

comment on function stepsync.finish_runs(uuid[], public.task_execution_status_enum, text) is
'Ends the given pending/running runs with p_status, one statement per write for all of '
'them: each run''s output from its last completed step and its timings, the tasks'' '
'execution counters (completed and failed runs only) and, for runs no newer run of their '
'task exists for, the definitions'' latest-run snapshot (task_steps.status, '
'execution_result). Runs already over are left alone.';

revoke all on function stepsync.finish_runs(uuid[], public.task_execution_status_enum, text)
from public, anon, authenticated;
grant execute on function stepsync.finish_runs(uuid[], public.task_execution_status_enum, text)
to service_role;

create or replace function stepsync.finish_run(
    p_run_id uuid,
    p_status public.task_execution_status_enum,
    p_error text default null
)
returns void
language sql
volatile
set search_path = ''
as $$
    select stepsync.finish_runs(array[p_run_id], p_status, p_error)
$$;

comment on function stepsync.finish_run(uuid, public.task_execution_status_enum, text) is
'Ends a pending/running run with p_status (finish_runs for one run): output from its last '
'completed step, timings, the task''s execution counters (completed and failed runs only) '
'and, unless a newer run of the task exists, the definitions'' latest-run snapshot.';

revoke all on function stepsync.finish_run(
    uuid, public.task_execution_status_enum, text
) from public;
grant execute on function stepsync.finish_run(
    uuid, public.task_execution_status_enum, text
) to service_role;

create or replace function stepsync.advance_run(p_run_id uuid)
returns void
language plpgsql
set search_path = ''
as $$
declare
    run_status public.task_execution_status_enum;
    next_step public.task_step_executions;
begin
    select r.status into run_status
    from public.agent_task_executions as r
    where r.id = p_run_id
    for no key update;
    if run_status is distinct from 'running' then
        return;
    end if;

    loop
        -- Steps run one at a time, in order, so the first unfinished step says it all:
        -- queued or running means one is in flight (nothing to do), pending is the next
        -- one. One probe of the (run_id, step_order) index. No row lock is needed: a
        -- pending step only changes under the run lock, which this transaction holds.
        select s.* into next_step
        from public.task_step_executions as s
        where s.run_id = p_run_id and s.status in ('pending', 'queued', 'running')
        order by s.step_order
        limit 1;

        if not found then
            perform stepsync.finish_run(p_run_id, 'completed');
            return;
        end if;
        if next_step.status <> 'pending' then
            return;
        end if;

        if next_step.skip_if is not null
            and stepsync.should_skip(
                stepsync.context_before(stepsync.run_context(p_run_id), next_step.step_order),
                next_step.skip_if
            ) then
            update public.task_step_executions as s
            set
                status = 'skipped',
                skip_reason = format('skip_if matched: %s', next_step.skip_if),
                completed_at = now(),
                updated_at = now()
            where s.id = next_step.id;
        else
            update public.task_step_executions as s
            set
                status = 'queued',
                run_after = now(),
                queued_at = now(),
                updated_at = now()
            where s.id = next_step.id;
            return;
        end if;
    end loop;
end
$$;

comment on function stepsync.advance_run(uuid) is
'Moves a running run forward: queues its next pending step (skipping those whose skip_if '
'holds) or, when none is left, completes the run. No-op while a step is in flight.';

revoke all on function stepsync.advance_run(uuid) from public;
grant execute on function stepsync.advance_run(uuid) to service_role;

create or replace function stepsync.on_step_status_change()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    -- Run counters follow final step statuses (cancelled steps are not counted). The run
    -- row is already locked by whoever moves the step (lock order: run, then steps).
    update public.agent_task_executions as r
    set
        steps_completed = r.steps_completed + (new.status = 'completed')::integer,
        steps_failed = r.steps_failed + (new.status = 'failed')::integer,
        steps_skipped = r.steps_skipped + (new.status = 'skipped')::integer,
        updated_at = now()
    where r.id = new.run_id;
    return null;
end
$$;

comment on function stepsync.on_step_status_change() is
'Trigger: after a step execution reaches a counted final status (completed, failed, '
'skipped), add it to its run''s step counters.';

revoke all on function stepsync.on_step_status_change() from public;
grant execute on function stepsync.on_step_status_change() to service_role;

create or replace trigger task_step_executions_status_change
after update of status on public.task_step_executions
for each row
when (
    old.status is distinct from new.status
    and new.status in ('completed', 'failed', 'skipped')
)
execute function stepsync.on_step_status_change();

comment on trigger task_step_executions_status_change on public.task_step_executions is
'Keeps the run''s step counters in step with final step statuses.';
