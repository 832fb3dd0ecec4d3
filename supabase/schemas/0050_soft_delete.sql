-- Soft delete of steps.
--
-- An API user's DELETE on a step (a plain REST DELETE included) marks it deleted
-- instead: deleted_at, deleted_by, and the task's following live steps move up to close
-- the gap. Roles that bypass row level security (service_role, the database owner) really
-- delete, unless the transaction-local setting stepsync.force_soft_delete is on (the RPCs
-- set it), and so does the cascade from deleting the task: there the parent row is
-- already gone. A task keeps at least one live step when an API user deletes.
--
-- Closing the gap happens once per statement, after it: a BEFORE DELETE trigger that
-- renumbered other rows would collide with a DELETE that goes on to visit them. The
-- trigger notes the task in a transaction-local setting and a statement trigger compacts
-- the noted tasks. An UPDATE that sets deleted_at directly (the service, a test set-up;
-- RLS refuses it to owners, whose row would leave their view) compacts through an AFTER
-- row trigger, which runs once the UPDATE is complete.

create or replace function stepsync.close_task_step_gaps(p_task_ids uuid[])
returns void
language plpgsql
set search_path = ''
as $$
declare
    bypasses_rls boolean := (
        select r.rolsuper or r.rolbypassrls from pg_catalog.pg_roles as r
        where r.rolname = current_user
    );
    empty_task uuid;
begin
    update public.task_steps as s
    set step_order = ranked.position
    from (
        select
            t.id,
            row_number() over (partition by t.task_id order by t.step_order, t.id) as position
        from public.task_steps as t
        where t.task_id = any(p_task_ids) and t.deleted_at is null
    ) as ranked
    where s.id = ranked.id and s.step_order <> ranked.position;

    if not bypasses_rls then
        select t.id into empty_task
        from public.agent_tasks as t
        where
            t.id = any(p_task_ids)
            and not exists (
                select from public.task_steps as s
                where s.task_id = t.id and s.deleted_at is null
            )
        limit 1;
        if found then
            raise exception 'task % needs at least one step: its last step cannot be deleted',
                empty_task
                using errcode = '23514',
                hint = 'Add the new step first, or replace all steps with save_task_steps.';
        end if;
    end if;
end
$$;

revoke all on function stepsync.close_task_step_gaps(uuid[]) from public;
grant execute on function stepsync.close_task_step_gaps(uuid[])
to authenticated, service_role;

comment on function stepsync.close_task_step_gaps(uuid[]) is
'Renumbers the live steps of the given tasks 1..n in their order (one UPDATE); refuses, '
'for API users, to leave a task without live steps. Runs as the caller (RLS applies).';

-- SECURITY DEFINER because the soft-deleted row must leave the owner's view, and RLS
-- does not let an UPDATE hide the row it changes. The trigger only fires for rows the
-- caller's DELETE already reached through RLS, so it acts on nothing else. The caller's
-- role comes from the role setting (SET ROLE), which a definer does not change.
create or replace function stepsync.soft_delete_on_delete()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    caller_bypasses_rls boolean := (
        select r.rolsuper or r.rolbypassrls from pg_catalog.pg_roles as r
        where r.rolname = coalesce(
            nullif(pg_catalog.current_setting('role', true), 'none'), session_user::text
        )
    );
    noted text;
begin
    if old.deleted_at is not null
        or not exists (select from public.agent_tasks as t where t.id = old.task_id)
        or (
            caller_bypasses_rls
            and pg_catalog.current_setting('stepsync.force_soft_delete', true)
            is distinct from 'on'
        ) then
        return old;
    end if;
    update public.task_steps
    set deleted_at = now(), deleted_by = auth.uid()
    where id = old.id;
    noted := coalesce(pg_catalog.current_setting('stepsync.soft_deleted_tasks', true), '');
    if strpos(noted, old.task_id::text) = 0 then
        perform pg_catalog.set_config(
            'stepsync.soft_deleted_tasks', concat_ws(',', nullif(noted, ''), old.task_id::text), true
        );
    end if;
    return null;
end
$$;

revoke all on function stepsync.soft_delete_on_delete() from public;

comment on function stepsync.soft_delete_on_delete() is
'Trigger: turns an API user''s DELETE of a live step into a soft delete; really deletes '
'for roles that bypass RLS (unless stepsync.force_soft_delete is on), soft-deleted rows, '
'and the cascade from the task.';

create or replace function stepsync.close_gaps_after_delete()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
    noted text := nullif(pg_catalog.current_setting('stepsync.soft_deleted_tasks', true), '');
begin
    if noted is not null then
        perform pg_catalog.set_config('stepsync.soft_deleted_tasks', '', true);
        perform stepsync.close_task_step_gaps(
            array(select distinct x::uuid from unnest(string_to_array(noted, ',')) as x)
        );
    end if;
    return null;
end
$$;

revoke all on function stepsync.close_gaps_after_delete() from public;

comment on function stepsync.close_gaps_after_delete() is
'Statement trigger: closes the order gaps left by the soft deletes of one DELETE.';

create or replace function stepsync.close_gaps_after_soft_delete()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    -- Nested under soft_delete_on_delete the enclosing DELETE is still running; its
    -- statement trigger compacts instead.
    if pg_catalog.pg_trigger_depth() = 1 then
        perform stepsync.close_task_step_gaps(array[new.task_id]);
    end if;
    return null;
end
$$;

revoke all on function stepsync.close_gaps_after_soft_delete() from public;

comment on function stepsync.close_gaps_after_soft_delete() is
'Row trigger after an UPDATE that soft-deletes a step: closes the order gap.';

create trigger task_steps_soft_delete
before delete on public.task_steps
for each row execute function stepsync.soft_delete_on_delete();

create trigger task_steps_close_gaps_after_delete
after delete on public.task_steps
for each statement execute function stepsync.close_gaps_after_delete();

create trigger task_steps_close_gaps_after_soft_delete
after update of deleted_at on public.task_steps
for each row
when (old.deleted_at is null and new.deleted_at is not null)
execute function stepsync.close_gaps_after_soft_delete();

comment on trigger task_steps_soft_delete on public.task_steps is
'An API user''s DELETE becomes a soft delete; service role and task cascade really delete.';
comment on trigger task_steps_close_gaps_after_delete on public.task_steps is
'Closes the order gaps of the steps soft-deleted by a DELETE statement.';
comment on trigger task_steps_close_gaps_after_soft_delete on public.task_steps is
'Closes the order gap when an UPDATE soft-deletes a step.';

create index if not exists task_steps_deleted_at_idx on public.task_steps (deleted_at)
where deleted_at is not null;

comment on index public.task_steps_deleted_at_idx is
'Finds soft-deleted steps for the purge without touching live ones.';

create or replace function stepsync.purge_deleted_task_steps(
    p_older_than interval default interval '30 days', p_task_id uuid default null
)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
    purged bigint;
begin
    if p_older_than is null or p_older_than < interval '0' then
        raise exception 'p_older_than must be a non-negative interval' using errcode = '22023';
    end if;
    delete from public.task_steps
    where
        deleted_at is not null
        and deleted_at <= now() - p_older_than
        and (p_task_id is null or task_id = p_task_id);
    get diagnostics purged = row_count;
    return purged;
end
$$;

revoke all on function stepsync.purge_deleted_task_steps(interval, uuid)
from public, anon, authenticated;
grant execute on function stepsync.purge_deleted_task_steps(interval, uuid) to service_role;

comment on function stepsync.purge_deleted_task_steps(interval, uuid) is
'Service only: removes for good the steps soft-deleted at least p_older_than ago '
'(optionally of one task). Returns how many.';
