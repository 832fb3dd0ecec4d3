-- Taking over from the legacy task-executor, user by user.
--
-- For users in the multi_step_workflows rollout stepsync runs every task (schedules:
-- 0250, events: 0260, manual: start_task_run); for the others the legacy Edge Function
-- goes on as it is, still deployed and unchanged. Its scheduled pass reads the due tasks
-- (task_type scheduled, status active, next_run_at <= its now), then for each one inserts
-- a run (status running, none of stepsync's columns: step_count 0), calls the agent,
-- marks the run completed or failed and writes the task's counters and next_run_at from
-- the row it read at the start. Nothing it reads can hide a task from it (it acts as the
-- service role, which bypasses RLS, and the app shows next_run_at), so the line is drawn
-- where it starts a run:
--
-- * its insert locks the task (the lock stepsync's claim takes too, so the two wait for
--   each other) and is refused when the owner is in the rollout, or, for a scheduled run,
--   when the task is no longer due by the executor's own clock (started_at): someone fired
--   this fire time since the executor read the task. Refused, the executor moves on to
--   its next task without calling the agent or writing any counter;
-- * stepsync's scheduler does not start a fire time the legacy executor already ran
--   (fire_schedules: a legacy scheduled run started at or after it).
--
-- Counters: every finished run counts once. stepsync's runs are counted when they finish
-- (finish_runs). A legacy run is counted here when the executor marks it completed or
-- failed; the executor's own counter update that follows is a read-modify-write of values
-- read before the run, so through the service role counters only go up: its update
-- writes what is already there, and one written from an older read (another run finished
-- in between) cannot take counts away.

create or replace function stepsync.guard_legacy_run()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    task public.agent_tasks;
begin
    select t.* into task
    from public.agent_tasks as t
    where t.id = new.task_id
    for no key update;
    if not found then
        return new;  -- the foreign key refuses it
    end if;
    if stepsync.flag_enabled_for('multi_step_workflows', task.user_id) then
        raise exception 'task % is run by stepsync: its owner is in the multi_step_workflows '
            'rollout', task.id
            using errcode = '55000',
            hint = 'Start it with start_task_run or emit_task_event; stepsync starts its '
            || 'scheduled runs itself.';
    end if;
    if new.trigger_type = 'scheduled'
        and (
            task.status <> 'active'
            or task.next_run_at is null
            or task.next_run_at > coalesce(new.started_at, now())
        ) then
        raise exception 'task % is not due (status %, next run %): its fire time was taken '
            'since it was read', task.id, task.status, task.next_run_at
            using errcode = '55000';
    end if;
    return new;
end
$$;

comment on function stepsync.guard_legacy_run() is
'Trigger: a run another executor inserts already running (the legacy task-executor) is '
'refused when the task''s owner is in the multi_step_workflows rollout, or, scheduled, '
'when the task is no longer due at the run''s started_at. Locks the task first, as the '
'scheduler''s claim does.';

revoke all on function stepsync.guard_legacy_run() from public;

create or replace trigger agent_task_executions_guard_legacy
before insert on public.agent_task_executions
for each row
when (new.step_count = 0 and new.status = 'running')
execute function stepsync.guard_legacy_run();

comment on trigger agent_task_executions_guard_legacy on public.agent_task_executions is
'Keeps the legacy executor off tasks stepsync runs and off fire times already taken.';

create or replace function stepsync.count_legacy_run()
returns trigger
language plpgsql
security definer
set enable_seqscan = off
set search_path = ''
as $$
begin
    update public.agent_tasks as t
    set
        total_executions = t.total_executions + 1,
        successful_executions
        = t.successful_executions + (new.status = 'completed')::integer,
        failed_executions = t.failed_executions + (new.status = 'failed')::integer,
        last_run_at = now(),
        updated_at = now()
    where t.id = new.task_id;
    return null;
end
$$;

comment on function stepsync.count_legacy_run() is
'Trigger: a run without steps (written by the legacy executor) that finishes adds itself '
'to its task''s execution counters, atomically.';

revoke all on function stepsync.count_legacy_run() from public;

create or replace trigger agent_task_executions_count_legacy
after update of status on public.agent_task_executions
for each row
when (
    new.step_count = 0
    and old.status in ('pending', 'running')
    and new.status in ('completed', 'failed')
)
execute function stepsync.count_legacy_run();

comment on trigger agent_task_executions_count_legacy on public.agent_task_executions is
'Counts each legacy run once, when it finishes (stepsync''s runs: finish_runs).';

create or replace function stepsync.keep_task_counters()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    new.total_executions := greatest(new.total_executions, old.total_executions);
    new.successful_executions := greatest(new.successful_executions, old.successful_executions);
    new.failed_executions := greatest(new.failed_executions, old.failed_executions);
    new.last_run_at := greatest(new.last_run_at, old.last_run_at);
    return new;
end
$$;

comment on function stepsync.keep_task_counters() is
'Trigger: through the service role the execution counters and last_run_at only go up, so '
'the legacy executor''s counter update, computed from the row it read before its run, '
'cannot take away runs counted since.';

revoke all on function stepsync.keep_task_counters() from public;

create or replace trigger agent_tasks_keep_counters
before update of total_executions, successful_executions, failed_executions, last_run_at
on public.agent_tasks
for each row
when (
    current_setting('role') = 'service_role'
    and (
        new.total_executions < old.total_executions
        or new.successful_executions < old.successful_executions
        or new.failed_executions < old.failed_executions
        or new.last_run_at < old.last_run_at
    )
)
execute function stepsync.keep_task_counters();

comment on trigger agent_tasks_keep_counters on public.agent_tasks is
'Counters written back from an older read (the legacy executor) do not go down; owners '
'and database administrators may still set them.';
