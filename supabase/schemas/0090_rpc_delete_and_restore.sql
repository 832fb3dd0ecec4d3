-- Deleting and restoring a step from the UI. soft_delete_task_step is SECURITY INVOKER
-- like the other RPCs. The one thing RLS cannot allow an owner (seeing a soft-deleted
-- step to restore it) goes through a definer in schema stepsync with its own ownership
-- check.

create or replace function public.soft_delete_task_step(p_step_id uuid)
returns public.task_steps
language plpgsql
security invoker
set search_path = ''
as $$
declare
    step public.task_steps;
begin
    select s.* into step
    from public.task_steps as s
    where s.id = p_step_id and s.deleted_at is null;
    if not found then
        raise exception 'step % not found', p_step_id using errcode = 'P0002';
    end if;
    perform from public.agent_tasks as t where t.id = step.task_id for update;
    perform pg_catalog.set_config('stepsync.force_soft_delete', 'on', true);
    delete from public.task_steps as s where s.id = p_step_id;
    perform pg_catalog.set_config('stepsync.force_soft_delete', 'off', true);
    step.deleted_at := now();
    step.deleted_by := auth.uid();
    return step;
end
$$;

comment on function public.soft_delete_task_step(uuid) is
'Soft-deletes a live step (the following steps move up); returns the deleted row. '
'A task keeps at least one live step.';

revoke all on function public.soft_delete_task_step(uuid) from public, anon;
grant execute on function public.soft_delete_task_step(uuid) to authenticated, service_role;

create or replace function stepsync.restore_task_step(p_step_id uuid)
returns public.task_steps
language plpgsql
security definer
set search_path = ''
as $$
declare
    step public.task_steps;
    task_owner uuid;
    live_count integer;
    target integer;
    api_caller boolean := coalesce(nullif(current_setting('role', true), 'none'), '')
    in ('anon', 'authenticated')
    or coalesce(auth.role(), '') in ('anon', 'authenticated');
begin
    -- Ownership first, then the lock: waiting on another user's task would tell that
    -- the id exists.
    select s.* into step from public.task_steps as s where s.id = p_step_id;
    select t.user_id into task_owner
    from public.agent_tasks as t
    where t.id = step.task_id;
    if step.id is null or (api_caller and task_owner is distinct from auth.uid()) then
        raise exception 'step % not found', p_step_id using errcode = 'P0002';
    end if;
    perform from public.agent_tasks as t where t.id = step.task_id for update;
    select s.* into step from public.task_steps as s where s.id = p_step_id;
    if step.deleted_at is null then
        raise exception 'step % is not deleted', p_step_id using errcode = '22023';
    end if;
    perform stepsync.close_task_step_gaps(array[step.task_id]);
    select count(*) into live_count
    from public.task_steps as s
    where s.task_id = step.task_id and s.deleted_at is null;
    if live_count >= 50 then
        raise exception 'task % already has 50 steps: step % cannot be restored',
            step.task_id, p_step_id
            using errcode = '23514';
    end if;
    target := least(step.step_order, live_count + 1);
    update public.task_steps as s
    set step_order = s.step_order + 1
    where s.task_id = step.task_id and s.deleted_at is null and s.step_order >= target;
    update public.task_steps as s
    set deleted_at = null, deleted_by = null, step_order = target
    where s.id = p_step_id
    returning s.* into step;
    return step;
end
$$;

revoke all on function stepsync.restore_task_step(uuid) from public, anon;
grant execute on function stepsync.restore_task_step(uuid) to authenticated, service_role;

comment on function stepsync.restore_task_step(uuid) is
'Definer behind public.restore_task_step: owners cannot see soft-deleted rows through RLS. '
'Checks that an API caller owns the step''s task; the service may restore any step.';

create or replace function public.restore_task_step(p_step_id uuid)
returns public.task_steps
language sql
security invoker
set search_path = ''
as $$
    select * from stepsync.restore_task_step(p_step_id)
$$;

comment on function public.restore_task_step(uuid) is
'Brings a soft-deleted step back at its old position (or last), moving the following '
'steps down; refused when the task already has 50 steps. Returns the restored step.';

revoke all on function public.restore_task_step(uuid) from public, anon;
grant execute on function public.restore_task_step(uuid) to authenticated, service_role;
