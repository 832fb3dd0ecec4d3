-- Step definitions in Supabase Realtime: task_steps joins the supabase_realtime
-- publication (the one the Realtime server streams), beside the run tables
-- (agent_task_executions, task_step_executions) that the run engine publishes.
--
-- task_steps.status and execution_result are the latest run's snapshot the UI shows as
-- status indicators; published, a browser sees them change live. Realtime applies each
-- subscriber's RLS to every change, so a signed-in user hears only rows of its own tasks.

do $publish$
begin
    -- A publication for all tables already covers task_steps (and refuses ADD TABLE).
    if exists (
        select from pg_publication
        where pubname = 'supabase_realtime' and not puballtables
    )
    and not exists (
        select from pg_publication_tables
        where pubname = 'supabase_realtime'
            and schemaname = 'public'
            and tablename = 'task_steps'
    ) then
        alter publication supabase_realtime add table public.task_steps;
    end if;
end
$publish$;
