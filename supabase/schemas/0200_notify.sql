-- Events: pg_notify in the transaction that makes the change, so the service wakes when
-- there is work instead of polling for it.
--
--   stepsync_step_ready   payload: the step execution id; a step became queued and due.
--                         A retry with a delay is not announced: pollers find it.
--   stepsync_run_changed  payload: {"run_id": ..., "status": ..., "outcome": ...,
--                         "cancelling": ...}; a run was created, changed status, or
--                         was cancelled while its compensations are still to run
--                         (status still running, cancelling true: its running step
--                         must stop now). outcome is set once the run has ended
--                         (succeeded, partial, failed, cancelled).

create or replace function stepsync.notify_step_ready()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    perform pg_notify('stepsync_step_ready', new.id::text);
    return null;
end
$$;

comment on function stepsync.notify_step_ready() is
'Trigger: announces a step that became queued and due on channel stepsync_step_ready.';

revoke all on function stepsync.notify_step_ready() from public;

create or replace trigger task_step_executions_notify_ready
after insert or update of status, run_after on public.task_step_executions
for each row
when (new.status = 'queued' and new.run_after <= now())
execute function stepsync.notify_step_ready();

comment on trigger task_step_executions_notify_ready on public.task_step_executions is
'Wakes the service when a step can be claimed now.';

create or replace function stepsync.notify_run_changed()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    perform pg_notify(
        'stepsync_run_changed',
        json_build_object(
            'run_id', new.id,
            'status', new.status,
            'outcome', new.outcome,
            'cancelling', new.status = 'running' and new.cancelled_at is not null
        )::text
    );
    return null;
end
$$;

comment on function stepsync.notify_run_changed() is
'Trigger: announces a run''s new status (and outcome) on channel stepsync_run_changed.';

revoke all on function stepsync.notify_run_changed() from public;

create or replace trigger agent_task_executions_notify_insert
after insert on public.agent_task_executions
for each row
execute function stepsync.notify_run_changed();

create or replace trigger agent_task_executions_notify_status
after update of status, cancelled_at on public.agent_task_executions
for each row
when (
    old.status is distinct from new.status
    or (
        new.status = 'running'
        and new.compensation = 'running'
        and old.cancelled_at is null
        and new.cancelled_at is not null
    )
)
execute function stepsync.notify_run_changed();

comment on trigger agent_task_executions_notify_insert on public.agent_task_executions is
'Announces a new run on stepsync_run_changed.';
comment on trigger agent_task_executions_notify_status on public.agent_task_executions is
'Announces a run''s status change, or its cancellation while compensations are still to '
'run, on stepsync_run_changed.';
