-- Finishing several runs with one statement per write (service only).
--
-- A finished run leaves three writes behind: the run row, the task's counters and the
-- definition's latest-run snapshot (task_steps), the last two audited. Done one run at a
-- time, each is a statement with its own triggers, audit insert and plan: finishing a run
-- cost more than all of its steps' own transitions together. When a batch of completions
-- (complete_steps) ends several runs, they are now finished together: one statement per
-- write for all of them, with one audit statement each. Every changed row still gets its
-- own audit row; only the statements are shared.
--
-- finish_run, the single-run form, becomes a call of finish_runs so that both follow one
-- code path; complete_steps (…004200) finishes the runs its batch ended with one call.

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

-- Unchanged but for the runs without a step left, which it now finishes in one call.
create or replace function stepsync.complete_steps(
    p_step_execution_ids uuid[],
    p_lease_tokens bigint[],
    p_outputs jsonb[],
    p_worker text default null,
    p_lease_seconds integer default null
)
returns table (step_execution_id uuid, completed boolean, next_step jsonb)
language plpgsql
volatile
set search_path = ''
as $$
declare
    completed_ids uuid[];
    completed_tokens bigint[];
    completed_runs uuid[];
    advanced_runs uuid[];
    plain_steps uuid[];
    plain_runs uuid[];
    finished_runs uuid[];
    handed_off jsonb := '{}'::jsonb;
    advancing uuid;
begin
    if cardinality(p_step_execution_ids) is distinct from cardinality(p_lease_tokens)
        or cardinality(p_step_execution_ids) is distinct from cardinality(p_outputs) then
        raise exception 'step ids, lease tokens and outputs must be arrays of the same length'
            using errcode = '22023';
    end if;

    -- Lock order: the runs first, then their steps. In id order, so that two batches
    -- sharing runs wait for each other instead of deadlocking. Stale tokens take no lock.
    perform from public.agent_task_executions as r
    where r.id in (
        select s.run_id
        from public.task_step_executions as s
        inner join unnest(p_step_execution_ids, p_lease_tokens) as held (id, token)
            on s.id = held.id and s.lease_token = held.token
        where s.status = 'running'
    )
    order by r.id
    for no key update of r;

    with done as (
        update public.task_step_executions as s
        set
            status = 'completed',
            output = coalesce(result.output, 'null'::jsonb),
            error_message = null,
            completed_at = now(),
            duration_ms = (extract(epoch from now() - s.started_at) * 1000)::integer,
            lease_owner = null,
            lease_expires_at = null,
            updated_at = now()
        from unnest(p_step_execution_ids, p_lease_tokens, p_outputs)
            as result (id, token, output)
        where s.id = result.id
            and s.lease_token = result.token
            and s.status = 'running'
        returning s.id, s.lease_token, s.run_id
    )

    select
        array_agg(done.id),
        array_agg(done.lease_token),
        array_agg(done.run_id),
        array_agg(distinct done.run_id)
    into completed_ids, completed_tokens, completed_runs, advanced_runs
    from done;

    -- Most runs simply go on to their next step: a pending one without skip_if. Those
    -- are handed off or queued in one statement. Runs without a step left are finished
    -- together (finish_runs). The others (next step has a skip_if, run no longer running)
    -- take advance_run, which handles every case. All of it runs after the UPDATE above,
    -- as statements of their own, so that it sees the completed steps.
    select
        array_agg(upcoming.id) filter (where upcoming.id is not null),
        array_agg(advanced.run_id) filter (where upcoming.id is not null),
        array_agg(advanced.run_id) filter (where upcoming.run_id is null)
    into plain_steps, plain_runs, finished_runs
    from unnest(advanced_runs) as advanced (run_id)
    inner join public.agent_task_executions as r
        on advanced.run_id = r.id and r.status = 'running'
    left join lateral (
        select s.id, s.run_id, s.status, s.skip_if
        from public.task_step_executions as s
        where s.run_id = advanced.run_id and s.status in ('pending', 'queued', 'running')
        order by s.step_order
        limit 1
    ) as upcoming on true
    where upcoming.run_id is null or (upcoming.status = 'pending' and upcoming.skip_if is null);

    if p_worker is null then
        update public.task_step_executions as s
        set
            status = 'queued',
            run_after = now(),
            queued_at = now(),
            updated_at = now()
        where s.id = any(plain_steps);
    elsif plain_steps is not null then
        select jsonb_object_agg(leased.run_id::text, to_jsonb(leased))
        into handed_off
        from stepsync.lease_steps(plain_steps, p_worker, p_lease_seconds) as leased;
    end if;

    if finished_runs is not null then
        perform stepsync.finish_runs(finished_runs, 'completed');
    end if;

    foreach advancing in array coalesce(advanced_runs, '{}') loop
        if not advancing = any(coalesce(plain_runs, '{}') || coalesce(finished_runs, '{}')) then
            perform stepsync.advance_run(advancing);
        end if;
    end loop;

    return query
    select given.id, done.id is not null, handed_off -> done.run_id::text
    from unnest(p_step_execution_ids, p_lease_tokens) with ordinality
        as given (id, token, position)
    left join unnest(completed_ids, completed_tokens, completed_runs)
        as done (id, token, run_id)
        on given.id = done.id and given.token = done.token
    order by given.position;
end
$$;

revoke all on function stepsync.finish_runs(uuid[], public.task_execution_status_enum, text)
from public, anon, authenticated;
grant execute on function stepsync.finish_runs(uuid[], public.task_execution_status_enum, text)
to service_role;
