-- Run and step status for Supabase Realtime: the workflow tables join the
-- supabase_realtime publication, the one the Realtime server streams.
--
-- Realtime applies each subscriber's RLS to every change, so a browser signed in as a
-- user hears only the runs and steps its SELECT policies let it read; the service
-- subscribes with the service-role key, which bypasses RLS, and hears all of them.
-- Tables are added only when present and not already published, so this migration can
-- run on a project where some were published by hand.

do $publish$
declare
    workflow_table text;
begin
    foreach workflow_table in array array[
        'agent_task_executions', 'task_step_executions', 'task_steps'
    ] loop
        if to_regclass(format('public.%I', workflow_table)) is not null
            and not exists (
                select from pg_publication_tables
                where pubname = 'supabase_realtime'
                    and schemaname = 'public'
                    and tablename = workflow_table
            ) then
            execute format(
                'alter publication supabase_realtime add table public.%I', workflow_table
            );
        end if;
    end loop;
end
$publish$;

comment on publication supabase_realtime is
'Streamed by Supabase Realtime: run (agent_task_executions), step run '
'(task_step_executions) and step definition (task_steps) changes, filtered by RLS '
'for each subscriber.';
