-- The workflow tables join Supabase Realtime's publication, so a browser subscribed to
-- postgres_changes sees step and run status change live (Realtime applies RLS per
-- subscriber). On a database without the publication nothing happens; a publication for
-- all tables already covers them.

create or replace function stepsync.add_to_realtime_publication(p_table regclass)
returns boolean
language plpgsql
set search_path = ''
as $$
begin
    if not exists (
        select from pg_catalog.pg_publication as p where p.pubname = 'supabase_realtime'
    ) then
        return false;
    end if;
    if exists (
        select from pg_catalog.pg_publication_rel as r
        inner join pg_catalog.pg_publication as p on r.prpubid = p.oid
        where p.pubname = 'supabase_realtime' and r.prrelid = p_table
    ) or exists (
        select from pg_catalog.pg_publication as p
        where p.pubname = 'supabase_realtime' and p.puballtables
    ) then
        return true;
    end if;
    execute format('alter publication supabase_realtime add table %s', p_table);
    return true;
end
$$;

revoke all on function stepsync.add_to_realtime_publication(regclass)
from public, anon, authenticated;

comment on function stepsync.add_to_realtime_publication(regclass) is
'For migrations: adds a table to the supabase_realtime publication when that exists '
'(idempotent). Returns whether the table is now published.';

select stepsync.add_to_realtime_publication('public.task_steps');
select stepsync.add_to_realtime_publication('public.agent_task_executions');
select stepsync.add_to_realtime_publication('public.task_step_executions');
