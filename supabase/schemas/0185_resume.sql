-- Resuming a finished run: a new run of the same task that does not execute again the
-- steps whose recorded outcomes it can reuse.
--
-- The new run is opened like any other (stepsync.open_run: flag, validation, a snapshot
-- of the current live definition, edited instructions included) with the old run's
-- trigger, and linked to it (resumed_from_run_id). Its steps before p_from_step then take
-- the old run's recorded outcomes (status, output, timings, input context), marked with
-- reused_from, before advance_runs moves the run on: to the steps after them, the run
-- context is exactly the one a fresh run with the same results would build, and the
-- step at p_from_step and every later one run with the current definition.
--
-- A step's outcome can be reused when it completed, or was skipped by its skip_if, and
-- was not compensated (its effects were undone). p_from_step defaults to the first step
-- that cannot, and may not go past it. Reusing outcomes only makes sense when the steps
-- before p_from_step are still the same steps in the same places: when one was removed,
-- replaced or moved, the resume is refused unless p_start_over asks for a run of every
-- step from the first (still linked to the old run).

create or replace function stepsync.resume_task_run(
    p_run_id uuid,
    p_from_step integer default null,
    p_start_over boolean default false
)
returns uuid
language plpgsql
volatile
security definer
set enable_seqscan = off
set search_path = ''
as $$
declare
    old_run public.agent_task_executions;
    first_open integer;
    first_open_status text;
    from_step integer;
    new_run_id uuid;
    new_step_count integer;
    moved text;
begin
    select r.* into old_run from public.agent_task_executions as r where r.id = p_run_id;
    if not found
        or (not stepsync.caller_is_service() and old_run.user_id is distinct from auth.uid()) then
        raise exception 'run % not found', p_run_id
            using errcode = 'P0002',
            hint = 'Check the run id; only the run''s owner and the service may resume it.';
    end if;
    if old_run.status in ('pending', 'running') then
        raise exception 'run % is still %: only a run that has ended can be resumed',
            p_run_id, old_run.status
            using errcode = '55000',
            hint = 'Wait for it to end, or cancel it first (cancel_task_run).';
    end if;
    if coalesce(p_start_over, false) and coalesce(p_from_step, 1) <> 1 then
        raise exception 'p_from_step: starting over runs every step from step 1, not from %',
            p_from_step
            using errcode = '22023';
    end if;

    -- The first step whose outcome cannot be reused (none: one past the last step), and
    -- what became of it. A step skipped because the run stopped has no outcome.
    select
        s.step_order,
        case
            when compensated.found then 'was compensated'
            when s.status = 'skipped' then 'was skipped when the run stopped'
            when s.status = 'failed' then 'failed'
            when s.status = 'cancelled' then 'was cancelled'
            else 'did not run'
        end
    into first_open, first_open_status
    from public.task_step_executions as s
    cross join lateral (
        select exists (
            select from public.task_step_executions as c
            where
                c.run_id = s.run_id
                and c.kind = 'compensation'
                and c.compensates_step_order = s.step_order
        ) as found
    ) as compensated
    where
        s.run_id = old_run.id
        and s.kind = 'step'
        and (
            compensated.found
            or s.status not in ('completed', 'skipped')
            or (
                s.status = 'skipped'
                and coalesce(s.skip_reason, '') not like 'skip\_if matched%'
            )
        )
    order by s.step_order
    limit 1;
    if not found then
        first_open := 1 + coalesce(
            (
                select max(s.step_order) from public.task_step_executions as s
                where s.run_id = old_run.id and s.kind = 'step'
            ),
            0
        );
    end if;

    from_step := case
        when coalesce(p_start_over, false) then 1
        else coalesce(p_from_step, first_open)
    end;
    if from_step < 1 then
        raise exception 'p_from_step: % is not a step number (steps count from 1)', from_step
            using errcode = '22023';
    end if;
    if from_step > first_open and first_open_status is not null then
        raise exception 'p_from_step: step % of run % %, so there is no outcome of it to reuse',
            first_open, p_run_id, first_open_status
            using errcode = '22023',
            hint = format('Resume from step %s or an earlier one.', first_open);
    end if;
    if from_step > first_open then
        raise exception 'p_from_step: run % had % steps; % is outside 1..%',
            p_run_id, first_open - 1, from_step, first_open
            using errcode = '22023';
    end if;

    new_run_id := stepsync.open_run(
        (select t from public.agent_tasks as t where t.id = old_run.task_id),
        old_run.trigger_type,
        old_run.trigger_data,
        old_run.id
    );
    new_step_count := (
        select r.step_count from public.agent_task_executions as r where r.id = new_run_id
    );
    if from_step > new_step_count then
        raise exception 'p_from_step: % is outside 1..%: task % has % steps now',
            from_step, new_step_count, old_run.task_id, new_step_count
            using errcode = '22023',
            hint = case
                when p_from_step is null
                    then 'Every step of the run completed; give p_from_step to run the last '
                    || 'ones again.'
                else 'The task has fewer steps than the run had; resume from an earlier one.'
            end;
    end if;

    -- The steps before from_step must still be the steps they were.
    select string_agg(format('step %s', o.step_order), ', ' order by o.step_order)
    into moved
    from public.task_step_executions as o
    left join public.task_step_executions as n
        on n.run_id = new_run_id and n.step_order = o.step_order
    where
        o.run_id = old_run.id
        and o.kind = 'step'
        and o.step_order < from_step
        and (o.step_id is null or n.step_id is distinct from o.step_id);
    if moved is not null then
        raise exception 'the steps of task % before step % changed after run % (%: removed, '
        'replaced or moved), so its results cannot be reused', old_run.task_id, from_step,
        p_run_id, moved
            using errcode = '55000',
            hint = 'Resume with p_start_over => true to run every step again.';
    end if;

    update public.task_step_executions as n
    set
        status = o.status,
        attempt = o.attempt,
        input_context = o.input_context,
        output = o.output,
        error_message = o.error_message,
        skip_reason = o.skip_reason,
        started_at = o.started_at,
        completed_at = o.completed_at,
        duration_ms = o.duration_ms,
        reused_from = o.id,
        updated_at = now()
    from public.task_step_executions as o
    where
        n.run_id = new_run_id
        and n.step_order < from_step
        and o.run_id = old_run.id
        and o.step_order = n.step_order;

    perform from stepsync.advance_runs(array[new_run_id]);
    return new_run_id;
end
$$;

comment on function stepsync.resume_task_run(uuid, integer, boolean) is
'Resumes an ended run for its owner or the service: a new run of the current live steps, '
'linked to it, whose steps before p_from_step (default: the first whose outcome cannot be '
'reused) carry the old run''s recorded outcomes instead of running again. Use '
'public.resume_task_run.';

revoke all on function stepsync.resume_task_run(uuid, integer, boolean) from public;
grant execute on function stepsync.resume_task_run(uuid, integer, boolean)
to authenticated, service_role;

create or replace function public.resume_task_run(
    p_run_id uuid,
    p_from_step integer default null,
    p_start_over boolean default false
)
returns uuid
language sql
volatile
security invoker
set search_path = ''
as $$
    select stepsync.resume_task_run(p_run_id, p_from_step, p_start_over)
$$;

comment on function public.resume_task_run(uuid, integer, boolean) is
'Resumes an ended (failed, cancelled or completed) run and returns the new run''s id: a '
'new run of the same task and trigger with the current live steps (edits included), '
'linked by resumed_from_run_id, that reuses the recorded outcomes of the steps before '
'p_from_step (default: the first step that did not complete) and runs the rest. Refused '
'for a run still going, a step number out of range, or when steps before p_from_step were '
'removed, replaced or moved since, unless p_start_over (run every step again). For the '
'run''s owner and the service.';

revoke all on function public.resume_task_run(uuid, integer, boolean) from public, anon;
grant execute on function public.resume_task_run(uuid, integer, boolean)
to authenticated, service_role;
