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

-- agent_tasks: the legacy owner policy, rewritten in the recommended form.
drop policy if exists "Users manage their own tasks" on public.agent_tasks;

create policy "Owners manage their tasks" on public.agent_tasks
for all to authenticated
using (user_id = (select auth.uid()))
with check (user_id = (select auth.uid()));

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
'Owners read and write their own tasks.';
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
