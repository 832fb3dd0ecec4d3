-- Rules checked on every write of a step that the column constraints cannot express,
-- each failing with a message that names the field.
--
-- - A step stays in its task (task_id never changes).
-- - The agent override must be an agent the task's owner owns. The function runs as the
--   caller, so for an API user a foreign agent is invisible and reported the same way.
-- - step_order 1..50 with a message about the 50-step limit; an insert without one
--   appends the step.
-- - The limits a column constraint cannot check cheaply (0015_limits.sql): context_data
--   size and depth, skip_if and context_paths inside the jsonpath subset, the template's
--   placeholders. They are checked when the value is written or changed, not again when
--   the engine writes a step's latest-run snapshot.
-- - updated_at follows every change.

create or replace function stepsync.check_task_step()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
    problem text;
    path_index integer;
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
    if tg_op = 'INSERT' or new.context_data is distinct from old.context_data then
        problem := stepsync.json_problem(
            new.context_data, stepsync.input_limit('context_data_bytes')
        );
        if problem is not null then
            raise exception 'context_data: %', problem using errcode = '23514';
        end if;
    end if;
    if tg_op = 'INSERT' or new.skip_if::text is distinct from old.skip_if::text then
        problem := stepsync.jsonpath_problem(new.skip_if, stepsync.input_limit('skip_if_chars'));
        if problem is not null then
            raise exception 'skip_if: %', problem using errcode = '23514';
        end if;
    end if;
    if tg_op = 'INSERT' or new.context_paths::text is distinct from old.context_paths::text then
        for path_index in 1 .. coalesce(cardinality(new.context_paths), 0) loop
            problem := stepsync.jsonpath_problem(
                new.context_paths[path_index], stepsync.input_limit('jsonpath_chars')
            );
            if problem is not null then
                raise exception 'context_paths[%]: %', path_index - 1, problem
                    using errcode = '23514';
            end if;
        end loop;
    end if;
    if tg_op = 'INSERT' or new.context_template is distinct from old.context_template then
        problem := stepsync.template_problem(new.context_template);
        if problem is not null then
            raise exception 'context_template: %', problem using errcode = '23514';
        end if;
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
'its order is within 1..50 (appended when not given), its context_data, skip_if, '
'context_paths and template are within the limits (checked when written or changed); '
'keeps updated_at current.';

-- On INSERT the trigger only fires when there is something to check, so a bulk insert
-- of plain steps (a backfill batch) pays nothing for it; the limits of plain columns are
-- column constraints (0020_task_steps.sql).
create trigger task_steps_check_insert
before insert on public.task_steps
for each row
when (
    new.agent_id is not null
    or new.step_order is null
    or new.step_order not between 1 and 50
    or new.context_data <> '{}'::jsonb
    or new.skip_if is not null
    or cardinality(new.context_paths) > 0
    or new.context_template is not null
)
execute function stepsync.check_task_step();

create trigger task_steps_check_update
before update on public.task_steps
for each row execute function stepsync.check_task_step();

comment on trigger task_steps_check_insert on public.task_steps is
'Checks a new step''s agent override, order and JSON/jsonpath/template limits (clear '
'errors); appends it when no position is given.';
comment on trigger task_steps_check_update on public.task_steps is
'Checks a changed step''s task, agent override and order; keeps updated_at current.';
