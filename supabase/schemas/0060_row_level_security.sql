-- Row level security for steps and tasks, in the form Supabase recommends for speed:
-- policies scoped `to authenticated`, auth.uid() wrapped in a scalar subquery so it is
-- evaluated once per statement, and the task lookup an uncorrelated IN over the indexed
-- agent_tasks.user_id (a hashed subplan, not a join per row).
--
-- Owners see and change the live steps of their own tasks; soft-deleted steps are
-- invisible to them (restore_task_step brings one back). anon gets nothing. service_role
-- bypasses RLS; its policies only document that it may do everything.

revoke all on public.task_steps from anon;

-- Every column a policy or ownership check looks up is indexed. A live project may
-- already have such an index under another name; one is created only where none leads
-- with the column.
do $policy_indexes$
declare
    wanted record;
begin
    for wanted in
        select *
        from (
            values
            ('agent_tasks', 'user_id', 'idx_agent_tasks_user_id'),
            ('agents', 'user_id', 'idx_agents_user_id'),
            ('agent_task_executions', 'task_id', 'idx_agent_task_executions_task_id')
        ) as w (table_name, column_name, index_name)
    loop
        if not exists (
            select
            from pg_index as i
            inner join pg_attribute as a
                on i.indrelid = a.attrelid and a.attnum = i.indkey[0]
            where
                i.indrelid = ('public.' || wanted.table_name)::regclass
                and a.attname = wanted.column_name
        ) then
            execute format(
                'create index %I on public.%I (%I)',
                wanted.index_name, wanted.table_name, wanted.column_name
            );
        end if;
    end loop;
end
$policy_indexes$;

create policy "Owners read the live steps of their tasks" on public.task_steps
for select to authenticated
using (
    deleted_at is null
    and task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
);

create policy "Owners add steps to their tasks" on public.task_steps
for insert to authenticated
with check (
    deleted_at is null
    and task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
);

-- Soft deleting is a DELETE (the soft-delete trigger does the rest), not an UPDATE.
create policy "Owners change the live steps of their tasks" on public.task_steps
for update to authenticated
using (
    deleted_at is null
    and task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
)
with check (
    deleted_at is null
    and task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
);

create policy "Owners delete the live steps of their tasks" on public.task_steps
for delete to authenticated
using (
    deleted_at is null
    and task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
);

create policy "Service role manages steps" on public.task_steps
for all to service_role
using (true)
with check (true);

-- agent_tasks: the legacy owner policy, rewritten in the recommended form. It checked
-- only user_id, so an owner could point their task at another user's agent, and every
-- run of the task then executed that agent. A task's agent must now be one of its
-- owner's agents: the policy checks it for API users, and stepsync.check_task_agent
-- for every writer (the service included). Tasks written before are listed below and
-- refused by start_task_run, never run.
drop policy if exists "Users manage their own tasks" on public.agent_tasks;

create policy "Owners manage their tasks" on public.agent_tasks
for all to authenticated
using (user_id = (select auth.uid()))
with check (
    user_id = (select auth.uid())
    and agent_id in (
        select a.id from public.agents as a
        where a.user_id = (select auth.uid())
    )
);

create policy "Service role manages tasks" on public.agent_tasks
for all to service_role
using (true)
with check (true);

comment on policy "Owners read the live steps of their tasks" on public.task_steps is
'Owners see the live steps of their own tasks; soft-deleted steps stay hidden.';
comment on policy "Owners add steps to their tasks" on public.task_steps is
'Owners add live steps to their own tasks.';
comment on policy "Owners change the live steps of their tasks" on public.task_steps is
'Owners edit the live steps of their own tasks (a step cannot move to another task).';
comment on policy "Owners delete the live steps of their tasks" on public.task_steps is
'Owners delete (soft-delete, through the trigger) the live steps of their own tasks.';
comment on policy "Service role manages steps" on public.task_steps is
'The service may do everything (it bypasses RLS; stated for clarity).';
comment on policy "Owners manage their tasks" on public.agent_tasks is
'Owners read and write their own tasks, whose agent must be one of their own agents.';
comment on policy "Service role manages tasks" on public.agent_tasks is
'The service may do everything (it bypasses RLS; stated for clarity).';

-- agent_task_executions: the app shipped it with `FOR ALL USING (true)`, which let any
-- signed-in or anonymous caller read, change or delete every user's run history. Owners
-- read the runs of their own tasks; writes belong to the service, and API users change
-- runs only through functions that check ownership themselves (start_task_run,
-- cancel_task_run).

drop policy if exists "System can manage task executions" on public.agent_task_executions;
drop policy if exists "Users can view their task executions" on public.agent_task_executions;

create policy "Owners read the runs of their tasks" on public.agent_task_executions
for select to authenticated
using (
    task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
);

create policy "Service role manages runs" on public.agent_task_executions
for all to service_role
using (true)
with check (true);

revoke all on public.agent_task_executions from anon;

comment on policy "Owners read the runs of their tasks" on public.agent_task_executions is
'Owners read the run history of their own tasks; they write it only through functions.';
comment on policy "Service role manages runs" on public.agent_task_executions is
'The service records and updates runs.';

create or replace function stepsync.check_task_agent()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    -- Runs as the writer: for an API user another user's agent is invisible and reported
    -- the same way as a missing one.
    if not exists (
        select from public.agents as a
        where a.id = new.agent_id and a.user_id = new.user_id
    ) then
        raise exception 'agent_id: agent % does not belong to the task''s owner', new.agent_id
            using errcode = '23514',
            hint = 'A task runs with one of its owner''s agents.';
    end if;
    return new;
end
$$;

revoke all on function stepsync.check_task_agent() from public;

comment on function stepsync.check_task_agent() is
'Trigger: a task''s agent belongs to the task''s owner (every writer, the service too).';

create or replace trigger agent_tasks_check_agent
before insert or update of agent_id, user_id on public.agent_tasks
for each row execute function stepsync.check_task_agent();

comment on trigger agent_tasks_check_agent on public.agent_tasks is
'A task''s own agent must be its owner''s, as a step''s agent override must.';

create or replace function stepsync.tasks_with_foreign_agents()
returns table (task_id uuid, user_id uuid, agent_id uuid, agent_owner uuid)
language sql
stable
set search_path = ''
as $$
    select t.id, t.user_id, t.agent_id, a.user_id
    from public.agent_tasks as t
    left join public.agents as a on t.agent_id = a.id
    where a.user_id is distinct from t.user_id
    order by t.id
$$;

revoke all on function stepsync.tasks_with_foreign_agents() from public, anon, authenticated;
grant execute on function stepsync.tasks_with_foreign_agents() to service_role;

comment on function stepsync.tasks_with_foreign_agents() is
'Tasks whose agent is not their owner''s (written before the rule): start_task_run refuses '
'them until the task is given one of its owner''s agents. Service only.';

-- Reported when the migration runs, not fixed: which agent was meant is the owner's call.
do $foreign_agents$
declare
    found_count bigint;
    listed text;
begin
    select count(*), string_agg(
        format('task %s (owner %s) uses agent %s', f.task_id, f.user_id, f.agent_id), '; '
    ) filter (where f.n <= 20)
    into found_count, listed
    from (
        select t.*, row_number() over (order by t.task_id) as n
        from stepsync.tasks_with_foreign_agents() as t
    ) as f;
    if found_count > 0 then
        raise warning '% task(s) name an agent their owner does not own: start_task_run '
        'refuses them until each is given one of its owner''s agents', found_count
            using
                detail = listed,
                hint = 'List them all with select * from stepsync.tasks_with_foreign_agents().';
    end if;
end
$foreign_agents$;

-- API roles reach these tables through PostgREST, which needs no more than select,
-- insert, update and delete under RLS. TRUNCATE bypasses RLS (and the soft delete), and
-- TRIGGER would let a role attach its own code to every writer's statements.
revoke truncate, references, trigger
on public.task_steps, public.agent_tasks, public.agents, public.agent_task_executions
from public, anon, authenticated;
