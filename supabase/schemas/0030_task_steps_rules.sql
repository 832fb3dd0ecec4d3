-- Rules checked on every write of a step that the column constraints cannot express,
-- each failing with a message that names the field.
--
-- - A step stays in its task (task_id never changes).
-- - The agent override must be an agent the task's owner owns. The function runs as the
--   caller, so for an API user a foreign agent is invisible and reported the same way.
-- - step_order 1..50 with a message about the 50-step limit; an insert without one
--   appends the step.
-- - updated_at follows every change.

create or replace function stepsync.check_task_step()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    if tg_op = 'UPDATE' and new.task_id is distinct from old.task_id then
        raise exception 'task_id: a step cannot move to another task'
            using errcode = '23514';
    end if;
    -- A REST insert without a position appends the step after the task's live steps.
    if tg_op = 'INSERT' and new.step_order is null then
        select coalesce(max(s.step_order), 0) + 1 into new.step_order
        from public.task_steps as s
        where s.task_id = new.task_id and s.deleted_at is null;
    end if;
    if new.step_order is not null and new.step_order not between 1 and 50 then
        raise exception 'step_order: % is outside 1..50 (a task has at most 50 steps)',
            new.step_order
            using errcode = '23514';
    end if;
    if new.agent_id is not null
        and (tg_op = 'INSERT' or new.agent_id is distinct from old.agent_id)
        and not exists (
            select
            from public.agents as a
            inner join public.agent_tasks as t on a.user_id = t.user_id
            where a.id = new.agent_id and t.id = new.task_id
        ) then
        raise exception 'agent_id: agent % does not belong to the owner of task %',
            new.agent_id, new.task_id
            using errcode = '23514';
    end if;
    if tg_op = 'UPDATE' then
        new.updated_at := now();
    end if;
    return new;
end
$$;

revoke all on function stepsync.check_task_step() from public;

comment on function stepsync.check_task_step() is
'Trigger: a step stays in its task, its agent override belongs to the task owner, '
'its order is within 1..50 (appended when not given); keeps updated_at current.';

-- On INSERT the trigger only fires when there is something to check, so a bulk insert
-- of plain steps (a backfill batch) pays nothing for it.
create trigger task_steps_check_insert
before insert on public.task_steps
for each row
when (
    new.agent_id is not null
    or new.step_order is null
    or new.step_order not between 1 and 50
)
execute function stepsync.check_task_step();

create trigger task_steps_check_update
before update on public.task_steps
for each row execute function stepsync.check_task_step();

comment on trigger task_steps_check_insert on public.task_steps is
'Checks a new step''s agent override and order (clear errors); appends it when no '
'position is given.';
comment on trigger task_steps_check_update on public.task_steps is
'Checks a changed step''s task, agent override and order; keeps updated_at current.';
