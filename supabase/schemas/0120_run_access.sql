-- Who may act on a task's runs: its owner (an API caller whose auth.uid() owns the task)
-- or the service (service_role, or a direct database session that is not an API role).
--
-- The public RPCs are security invoker and hand over to security-definer functions in
-- schema stepsync, which call these checks first. Inside a security-definer function
-- current_user is the function owner, but the `role` setting still names the role the
-- caller switched to (PostgREST does `set local role authenticated`), and API callers
-- cannot change it to a role they are not a member of.

create or replace function stepsync.caller_is_service()
returns boolean
language sql
stable
set search_path = ''
as $$
    select case
        when current_setting('role') in ('anon', 'authenticated', 'authenticator') then false
        when current_setting('role') <> 'none' then true
        else session_user::text not in ('anon', 'authenticated', 'authenticator')
    end
$$;

comment on function stepsync.caller_is_service() is
'True for service_role and direct (non-API) database sessions; false for anon, '
'authenticated and authenticator, even inside a security-definer function.';

create or replace function stepsync.authorized_task(p_task_id uuid)
returns public.agent_tasks
language plpgsql
stable
set search_path = ''
as $$
declare
    task public.agent_tasks;
begin
    select t.* into task from public.agent_tasks as t where t.id = p_task_id;
    -- Someone else's task is reported exactly like a missing one.
    if not found
        or (not stepsync.caller_is_service() and task.user_id is distinct from auth.uid()) then
        raise exception 'task % not found', p_task_id
            using errcode = 'P0002',
            hint = 'Check the task id; only the task''s owner and the service may use it.';
    end if;
    return task;
end
$$;

comment on function stepsync.authorized_task(uuid) is
'The task row, if the caller is its owner or the service; otherwise "task not found" '
'(P0002).';

revoke all on function stepsync.caller_is_service() from public;
revoke all on function stepsync.authorized_task(uuid) from public;
-- authenticated too: invoker triggers that treat API writes differently ask it.
grant execute on function stepsync.caller_is_service() to authenticated, service_role;
grant execute on function stepsync.authorized_task(uuid) to service_role;
