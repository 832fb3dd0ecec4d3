-- Remove what the earlier task_steps variant left beside the table: its functions (every
-- overload, so none shadows a new signature in PostgREST) and its task counters.
--
-- execute_sql(text) was a SECURITY DEFINER granted to authenticated; the others were
-- definers without ownership checks or are replaced by the RPCs in
-- 20261126001400_task_steps_rpcs.sql. The agent_tasks columns is_multi_step and
-- step_count duplicated what the live steps say; counting them is one indexed query.
do $cleanup$
declare
    item record;
begin
    for item in
        select p.oid::regprocedure as signature
        from pg_proc as p
        where
            p.pronamespace = 'public'::regnamespace
            and p.proname in (
                'execute_sql',
                'create_task_step',
                'update_task_step',
                'delete_task_step',
                'reorder_task_steps',
                'get_task_steps_with_context',
                'update_step_execution',
                'get_task_step_count',
                'get_next_pending_step',
                'get_previous_step_context',
                'update_task_steps_updated_at'
            )
    loop
        execute format('drop function %s', item.signature);
    end loop;
end
$cleanup$;

alter table public.agent_tasks
drop column if exists is_multi_step,
drop column if exists step_count;
