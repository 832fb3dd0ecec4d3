-- start_task_run: snapshot a task's steps into a new run and make its first step ready.
--
-- stepsync.open_run makes the run and its snapshot; start_task_run and resume_task_run
-- (0185_resume.sql) both open their runs through it, so a resumed run is checked and
-- snapshotted exactly like a new one.
--
-- What a run is given is held to the limits (0015_limits.sql): trigger data has a size
-- and a depth, the task's agent must be its owner's (as a step override must), and an
-- API caller has a quota of open runs per user and per task (stepsync.settings), so one
-- user cannot queue hundreds of runs ahead of everyone. The service (schedules, events it
-- starts itself) is not held to the quotas.

create or replace function stepsync.step_definitions(p_task_id uuid)
returns table (
    step_id uuid,
    step_order integer,
    step_name text,
    instructions text,
    agent_id uuid,
    include_previous_context boolean,
    context_mode public.step_context_mode,
    context_paths jsonpath[],
    context_template text,
    context_data jsonb,
    skip_if jsonpath,
    on_failure public.step_failure_action,
    max_attempts integer,
    retry_backoff_seconds integer,
    retry_backoff_max_seconds integer,
    timeout_seconds integer,
    max_lost_leases integer,
    compensate_instructions text
)
language sql
stable
set search_path = ''
as $$
    select
        s.id, s.step_order, s.step_name, s.instructions, coalesce(s.agent_id, t.agent_id),
        s.include_previous_context, s.context_mode, s.context_paths, s.context_template,
        s.context_data, s.skip_if, s.on_failure, s.max_attempts, s.retry_backoff_seconds,
        s.retry_backoff_max_seconds, s.timeout_seconds, s.max_lost_leases,
        s.compensate_instructions
    from public.task_steps as s
    inner join public.agent_tasks as t on s.task_id = t.id
    where s.task_id = p_task_id and s.deleted_at is null
    union all
    -- A task without live steps is a one-step workflow made of its instructions.
    select
        null, 1, coalesce(nullif(left(btrim(t.name), 200), ''), 'Step 1'), t.instructions,
        t.agent_id, false, 'previous', '{}', null, '{}'::jsonb, null, 'stop', 1, 5, 600, 300, 3,
        null
    from public.agent_tasks as t
    where t.id = p_task_id
        and not exists (
            select from public.task_steps as s
            where s.task_id = p_task_id and s.deleted_at is null
        )
    order by 2
$$;

comment on function stepsync.step_definitions(uuid) is
'The steps a run of the task would snapshot, in order: its live steps (agent defaulting to '
'the task''s), or for a task without steps one step made of its legacy instructions.';

revoke all on function stepsync.step_definitions(uuid) from public;
grant execute on function stepsync.step_definitions(uuid) to service_role;

create or replace function stepsync.check_run_quota(p_task public.agent_tasks)
returns void
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    per_user integer := stepsync.setting('max_active_runs_per_user');
    per_task integer := stepsync.setting('max_active_runs_per_task');
    open_runs integer;
begin
    -- One start at a time per user (transaction lock: fine behind a transaction pooler),
    -- so two starts cannot both see room for one more run.
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended('stepsync.start_task_run:' || p_task.user_id::text, 0)
    );
    if per_task > 0 then
        -- Among the owner's open runs (agent_task_executions_open_by_user_idx): no task
        -- index of its own on the hot table for it.
        select count(*) into open_runs
        from (
            select from public.agent_task_executions as r
            where
                r.user_id = p_task.user_id
                and r.status in ('pending', 'running')
                and r.cancelled_at is null
                and r.task_id = p_task.id
            limit per_task
        ) as open_run;
        if open_runs >= per_task then
            raise exception 'task % already has % open runs, the most allowed at once',
                p_task.id, open_runs
                using
                    errcode = '53400',
                    hint = 'Wait for a run to finish or cancel one (max_active_runs_per_task).';
        end if;
    end if;
    if per_user > 0 then
        select count(*) into open_runs
        from (
            select from public.agent_task_executions as r
            where
                r.user_id = p_task.user_id
                and r.status in ('pending', 'running')
                and r.cancelled_at is null
            limit per_user
        ) as open_run;
        if open_runs >= per_user then
            raise exception 'the owner of task % already has % open runs, the most allowed '
            'at once', p_task.id, open_runs
                using
                    errcode = '53400',
                    hint = 'Wait for a run to finish or cancel one (max_active_runs_per_user).';
        end if;
    end if;
end
$$;

comment on function stepsync.check_run_quota(public.agent_tasks) is
'Refuses (SQLSTATE 53400) a new run of the task when the task or its owner already has '
'max_active_runs_per_task or max_active_runs_per_user open runs (stepsync.settings; 0 = '
'no limit). Serialised per user with a transaction advisory lock.';

revoke all on function stepsync.check_run_quota(public.agent_tasks) from public;
grant execute on function stepsync.check_run_quota(public.agent_tasks) to service_role;

create or replace function stepsync.open_run(
    p_task public.agent_tasks,
    p_trigger_type text,
    p_trigger_data jsonb,
    p_resumed_from_run_id uuid default null
)
returns uuid
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    task public.agent_tasks := p_task;
    live_steps integer;
    problems jsonb;
    new_run_id uuid;
begin
    -- The task's own agent runs every step without an override: it must be its owner's,
    -- as an override must.
    if not exists (
        select from public.agents as a
        where a.id = task.agent_id and a.user_id = task.user_id
    ) then
        raise exception 'task % runs with agent %, which does not belong to the task''s owner',
            task.id, task.agent_id
            using errcode = '22023',
            hint = 'Give the task one of its owner''s agents (agent_tasks.agent_id).';
    end if;

    if not stepsync.caller_is_service() then
        perform stepsync.check_run_quota(task);
    end if;

    if not stepsync.flag_enabled_for('multi_step_workflows', task.user_id) then
        raise exception 'multi-step workflows are not enabled for the owner of task %', task.id
            using errcode = '55000',
            hint = 'The feature flag multi_step_workflows is off for this user.';
    end if;

    -- Hold the live steps still until the run has its snapshot, so that what was
    -- validated is what runs (an edit committed in between would otherwise slip in).
    perform
    from public.task_steps as s
    where s.task_id = task.id and s.deleted_at is null
    for share;
    get diagnostics live_steps = row_count;

    -- A task without steps runs its legacy instructions as one step; a task with steps
    -- must pass the same validation the editor shows.
    if live_steps > 0 then
        problems := public.validate_task_steps(task.id);
        if jsonb_array_length(problems) > 0 then
            raise exception 'task % has invalid steps: %',
                task.id,
                (
                    select string_agg(
                        coalesce('step ' || (p.problem ->> 'step_order') || ': ', '')
                        || (p.problem ->> 'message'),
                        '; '
                    )
                    from jsonb_array_elements(problems) as p (problem)
                )
                using errcode = '22023',
                detail = problems::text,
                hint = 'Fix the steps (see validate_task_steps) and start the run again.';
        end if;
    elsif coalesce(btrim(task.instructions), '') = '' then
        raise exception 'task % has no steps and no instructions', task.id
            using errcode = '22023';
    end if;

    insert into public.agent_task_executions (
        task_id, agent_id, user_id, status, trigger_type, trigger_data, instructions_used,
        started_at, conversation_id, step_count, metadata, resumed_from_run_id
    )
    values (
        task.id,
        task.agent_id,
        task.user_id,
        'running',
        p_trigger_type,
        coalesce(p_trigger_data, '{}'::jsonb),
        '',
        now(),
        task.conversation_id,
        greatest(live_steps, 1),
        jsonb_build_object(
            'engine', 'stepsync',
            'task_name', left(task.name, stepsync.input_limit('task_name_chars'))
        )
        || case
            when p_resumed_from_run_id is null then '{}'::jsonb
            else jsonb_build_object('resumed_from_run_id', p_resumed_from_run_id)
        end,
        p_resumed_from_run_id
    )
    returning id into new_run_id;

    insert into public.task_step_executions (
        run_id, task_id, user_id, step_id, step_order, step_name, instructions, agent_id,
        include_previous_context, context_mode, context_paths, context_template,
        context_data, skip_if, on_failure, max_attempts, retry_backoff_seconds,
        retry_backoff_max_seconds, timeout_seconds, max_lost_leases, compensate_instructions
    )
    select
        new_run_id, task.id, task.user_id, d.step_id, d.step_order, d.step_name,
        d.instructions, d.agent_id, d.include_previous_context, d.context_mode,
        d.context_paths, d.context_template, d.context_data, d.skip_if, d.on_failure,
        d.max_attempts, d.retry_backoff_seconds, d.retry_backoff_max_seconds,
        d.timeout_seconds, d.max_lost_leases, d.compensate_instructions
    from stepsync.step_definitions(task.id) as d;

    -- What the run was asked to do, in the legacy column the app shows: a summary of at
    -- most one step's instructions in size (the steps' own rows hold them in full).
    update public.agent_task_executions as r
    set instructions_used = (
        select left(
            case
                when count(*) = 1 then min(s.instructions)
                else string_agg(
                    format(E'Step %s: %s\n%s', s.step_order, s.step_name, s.instructions),
                    E'\n\n' order by s.step_order
                )
            end,
            stepsync.input_limit('instructions_bytes')
        )
        from public.task_step_executions as s
        where s.run_id = r.id
    )
    where r.id = new_run_id;
    return new_run_id;
end
$$;

comment on function stepsync.open_run(public.agent_tasks, text, jsonb, uuid) is
'Opens a run of p_task: checks the multi_step_workflows flag and validate_task_steps, '
'inserts the run (linked to p_resumed_from_run_id, if given) and snapshots the live steps '
'(or the legacy instructions as one step), all pending. Moving it on is the caller''s '
'(advance_runs). The caller has checked who may run the task.';

revoke all on function stepsync.open_run(public.agent_tasks, text, jsonb, uuid) from public;
grant execute on function stepsync.open_run(public.agent_tasks, text, jsonb, uuid)
to service_role;

create or replace function stepsync.start_task_run(
    p_task_id uuid,
    p_trigger_type text default 'manual',
    p_trigger_data jsonb default '{}'::jsonb
)
returns uuid
language plpgsql
volatile
security definer
set enable_seqscan = off
set search_path = ''
as $$
declare
    problem text;
    new_run_id uuid;
begin
    if p_trigger_type is null or p_trigger_type not in ('manual', 'scheduled', 'event') then
        raise exception 'trigger type must be manual, scheduled or event, not %',
            coalesce(quote_literal(p_trigger_type), 'null')
            using errcode = '22023';
    end if;
    if p_trigger_data is not null and jsonb_typeof(p_trigger_data) <> 'object' then
        raise exception 'trigger data must be a JSON object, not %', jsonb_typeof(p_trigger_data)
            using errcode = '22023';
    end if;
    problem := stepsync.json_problem(p_trigger_data, stepsync.input_limit('trigger_data_bytes'));
    if problem is not null then
        raise exception 'trigger data %', problem using errcode = '22023';
    end if;

    new_run_id := stepsync.open_run(
        stepsync.authorized_task(p_task_id), p_trigger_type, p_trigger_data
    );
    perform from stepsync.advance_runs(array[new_run_id]);
    return new_run_id;
end
$$;

comment on function stepsync.start_task_run(uuid, text, jsonb) is
'Starts a run of a task for its owner or the service: checks the trigger data''s limits, '
'the task''s agent, the open-run quotas (API callers), the multi_step_workflows flag and '
'validate_task_steps, snapshots the live steps (or the legacy instructions as one step) '
'and makes step 1 ready. Use public.start_task_run.';

revoke all on function stepsync.start_task_run(uuid, text, jsonb) from public;
grant execute on function stepsync.start_task_run(uuid, text, jsonb)
to authenticated, service_role;

create or replace function public.start_task_run(
    p_task_id uuid,
    p_trigger_type text default 'manual',
    p_trigger_data jsonb default '{}'::jsonb
)
returns uuid
language sql
volatile
security invoker
set search_path = ''
as $$
    select stepsync.start_task_run(p_task_id, p_trigger_type, p_trigger_data)
$$;

comment on function public.start_task_run(uuid, text, jsonb) is
'Starts a run of the task and returns its id (agent_task_executions.id). For the task''s '
'owner and the service. Refuses when the multi_step_workflows flag is off for the owner, '
'the steps are invalid (the error names the problems), the trigger data breaks its limits, '
'the task''s agent is not its owner''s, or the owner already has as many open runs as the '
'quotas allow (SQLSTATE 53400).';

revoke all on function public.start_task_run(uuid, text, jsonb) from public, anon;
grant execute on function public.start_task_run(uuid, text, jsonb)
to authenticated, service_role;
