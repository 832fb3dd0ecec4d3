-- Compensation: undoing what a stopped run's completed steps did.
--
-- A step may carry compensate_instructions (snapshotted into its run like the rest of its
-- definition). When a run stops (a step fails for good with on_failure = stop, or a
-- cancel asks for it), every completed step of the run that has some gets a compensation:
-- a row of its own in task_step_executions (kind = compensation), placed after the
-- steps, the most recent step first. They are ordinary step executions to the engine:
-- queued, claimed, leased, retried and timed out with the settings of the step they undo,
-- one at a time through advance_runs, so nothing on the hot path needs to know about
-- them. A compensation says `continue`, so one failing does not keep the others from
-- running. The run stays running meanwhile, with compensation = running and its
-- error_message saying why it stopped; when the last compensation is over, advance_runs
-- ends it failed (or cancelled) with compensation = completed or failed.
--
-- A compensation's input is the run context in `full` mode (every earlier step, with
-- outputs and errors), and in its context_data under "compensation": the step it undoes
-- (order, name, output) and why the run stopped.

create or replace function stepsync.start_compensation(p_run_id uuid, p_reason text)
returns integer
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    added integer;
begin
    -- The caller holds the run row (lock order: run, then steps). The run's rows are
    -- read by (run_id, step_order).
    insert into public.task_step_executions (
        run_id, task_id, user_id, step_id, kind, step_order, compensates_step_order,
        step_name, instructions, agent_id, include_previous_context, context_mode,
        context_data, on_failure, max_attempts, max_lost_leases, retry_backoff_seconds,
        retry_backoff_max_seconds, timeout_seconds
    )
    select
        s.run_id,
        s.task_id,
        s.user_id,
        s.step_id,
        'compensation',
        last_row.step_order + row_number() over (order by s.step_order desc),
        s.step_order,
        format('Compensate: %s', s.step_name),
        s.compensate_instructions,
        s.agent_id,
        true,
        'full',
        s.context_data || jsonb_build_object(
            'compensation', jsonb_build_object(
                'step', jsonb_build_object(
                    'order', s.step_order,
                    'name', s.step_name,
                    'output', stepsync.truncate_json(s.output, 16384)
                ),
                'reason', p_reason
            )
        ),
        'continue',
        s.max_attempts,
        s.max_lost_leases,
        s.retry_backoff_seconds,
        s.retry_backoff_max_seconds,
        s.timeout_seconds
    from public.task_step_executions as s
    cross join lateral (
        select l.step_order from public.task_step_executions as l
        where l.run_id = p_run_id
        order by l.step_order desc
        limit 1
    ) as last_row
    where
        s.run_id = p_run_id
        and s.kind = 'step'
        and s.status = 'completed'
        and s.compensate_instructions is not null;
    get diagnostics added = row_count;

    if added > 0 then
        update public.agent_task_executions as r
        set
            compensation = 'running',
            error_message = p_reason,
            updated_at = now()
        where r.id = p_run_id;
    end if;
    return added;
end
$$;

comment on function stepsync.start_compensation(uuid, text) is
'For a run that stopped (p_reason: why): adds a pending compensation after the steps for '
'each completed step with compensate_instructions, newest step first, and marks the run '
'compensating. Returns how many; 0 leaves the run alone. The caller holds the run row and '
'moves the run on (advance_runs). Service only.';

revoke all on function stepsync.start_compensation(uuid, text) from public, anon, authenticated;
grant execute on function stepsync.start_compensation(uuid, text) to service_role;
