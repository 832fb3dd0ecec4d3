-- agent_task_executions shipped with `FOR ALL USING (true)`: any signed-in or anonymous
-- caller could read, change or delete every user's run history. Owners now read the runs
-- of their own tasks; writes belong to the service (and to functions that check
-- ownership themselves).

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
