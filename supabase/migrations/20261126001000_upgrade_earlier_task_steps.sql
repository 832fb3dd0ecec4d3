-- Upgrade in place from the earlier task_steps variant, which some databases hold: a
-- task_steps table with a hard UNIQUE(task_id, step_order), per-definition execution
-- columns and no soft delete, a task_step_status enum without 'queued' and 'cancelled',
-- functions beside it (execute_sql among them) and task counters on agent_tasks.
--
-- On a database without that variant (a fresh one included) this migration changes
-- nothing. On one with it, it leaves the table with the variant's rows and base columns
-- and nothing else of the variant: 20261126002000_stepsync.sql then adds the columns,
-- constraints, indexes, policies and triggers of the current definition, so an upgraded
-- database ends with the same schema as a new one.
--
-- It is a migration of its own because PostgreSQL refuses to use an enum value added in
-- the same transaction to a type that existed before it (the stepsync migration's
-- partial index on status = 'queued' would fail), and every migration is one transaction.

do $enum$
begin
    if to_regtype('public.task_step_status') is not null then
        alter type public.task_step_status add value if not exists 'queued' after 'pending';
        alter type public.task_step_status add value if not exists 'cancelled';
    end if;
end
$enum$;

-- Every row is kept: the execution columns are folded into execution_result before they
-- are dropped, and the earlier constraints, indexes, policies and triggers are dropped.
-- The variant has no deleted_at column; a database without the table, or with the
-- current one, is left alone. Rows the new rules cannot hold stop the migration (it
-- changes nothing) with a list.
do $upgrade$
declare
    problems text;
    problem_count integer;
    item record;
begin
    if to_regclass('public.task_steps') is null
        or exists (
            select from pg_attribute
            where
                attrelid = to_regclass('public.task_steps')
                and attname = 'deleted_at'
                and not attisdropped
        ) then
        return;
    end if;

    select
        count(*),
        string_agg(
            format('step %s of task %s: %s', checked.id, checked.task_id, checked.problem),
            '; '
        ) filter (where checked.position <= 20)
    into problem_count, problems
    from (
        select
            s.id,
            s.task_id,
            row_number() over (order by s.task_id, s.step_order) as position,
            -- The rules of 0020_task_steps.sql and 0015_limits.sql (blank: nothing but
            -- Unicode whitespace, as stepsync.is_blank, which does not exist yet here).
            case
                when s.step_order is null or s.step_order not between 1 and 50
                    then format('step_order %s is outside 1..50', s.step_order)
                when coalesce(char_length(s.step_name), 0) not between 1 and 200
                    or s.step_name !~ (
                        '[^[:space:]\u0085\u00a0\u1680\u180e\u2000-\u200f\u2028\u2029'
                        || '\u202f\u205f\u2060-\u2064\u3000\ufeff]'
                    )
                    then 'step_name must have 1 to 200 characters and not be blank'
                when coalesce(s.instructions, '') !~ (
                    '[^[:space:]\u0085\u00a0\u1680\u180e\u2000-\u200f\u2028\u2029'
                    || '\u202f\u205f\u2060-\u2064\u3000\ufeff]'
                )
                    then 'instructions are blank'
                when octet_length(s.instructions) > 100000
                    then 'instructions are longer than 100000 bytes'
            end as problem
        from public.task_steps as s
    ) as checked
    where checked.problem is not null;
    if problem_count > 0 then
        raise exception 'cannot upgrade task_steps: % step(s) break the new rules', problem_count
            using
                errcode = '23514',
                detail = problems,
                hint = 'Fix or delete these steps, then apply the migration again.';
    end if;

    -- The earlier triggers first: one of them would touch updated_at below.
    for item in
        select t.tgname, t.tgfoid::regprocedure as fn
        from pg_trigger as t
        where t.tgrelid = 'public.task_steps'::regclass and not t.tgisinternal
    loop
        execute format('drop trigger %I on public.task_steps', item.tgname);
        if not exists (select from pg_trigger as t where t.tgfoid = item.fn::oid)
            and item.fn::text ilike '%task_step%' then
            execute format('drop function %s', item.fn);
        end if;
    end loop;
    for item in
        select p.policyname from pg_policies as p
        where p.schemaname = 'public' and p.tablename = 'task_steps'
    loop
        execute format('drop policy %I on public.task_steps', item.policyname);
    end loop;
    for item in
        select c.conname from pg_constraint as c
        where c.conrelid = 'public.task_steps'::regclass and c.contype not in ('p', 'n')
    loop
        execute format('alter table public.task_steps drop constraint %I', item.conname);
    end loop;
    for item in
        select i.indexrelid::regclass as index_name
        from pg_index as i
        where i.indrelid = 'public.task_steps'::regclass and not i.indisprimary
    loop
        execute format('drop index %s', item.index_name);
    end loop;
    if exists (
        select from pg_constraint
        where
            conrelid = 'public.task_steps'::regclass
            and contype = 'p'
            and conname <> 'task_steps_pkey'
    ) then
        execute format(
            'alter table public.task_steps rename constraint %I to task_steps_pkey',
            (
                select conname from pg_constraint
                where conrelid = 'public.task_steps'::regclass and contype = 'p'
            )
        );
    end if;

    -- Fold the per-definition execution columns into the latest-run snapshot.
    update public.task_steps as s
    set execution_result = (
        case
            when jsonb_typeof(s.execution_result) = 'object' then s.execution_result
            when s.execution_result is null or s.execution_result = 'null'::jsonb
                then '{}'::jsonb
            else jsonb_build_object('value', s.execution_result)
        end
    ) || case
        when folded.legacy = '{}'::jsonb then '{}'::jsonb
        else jsonb_build_object('legacy_execution', folded.legacy)
    end
    from (
        select
            t.id,
            jsonb_strip_nulls(jsonb_build_object(
                'started_at', r.row_json -> 'execution_started_at',
                'completed_at', r.row_json -> 'execution_completed_at',
                'duration_ms', r.row_json -> 'execution_duration_ms',
                'error_message', r.row_json -> 'error_message',
                'retry_count', nullif(r.row_json -> 'retry_count', '0'::jsonb)
            )) as legacy
        from public.task_steps as t
        cross join lateral (select to_jsonb(t) as row_json) as r
    ) as folded
    where
        folded.id = s.id
        and (
            folded.legacy <> '{}'::jsonb
            or s.execution_result is null
            or jsonb_typeof(s.execution_result) <> 'object'
        );

    update public.task_steps
    set
        include_previous_context = coalesce(include_previous_context, false),
        context_data = case
            when jsonb_typeof(context_data) = 'object' then context_data
            when context_data is null or context_data = 'null'::jsonb then '{}'::jsonb
            else jsonb_build_object('value', context_data)
        end,
        status = coalesce(status, 'pending'),
        created_at = coalesce(created_at, updated_at, now()),
        updated_at = coalesce(updated_at, created_at, now())
    where
        include_previous_context is null
        or context_data is null
        or jsonb_typeof(context_data) <> 'object'
        or status is null
        or created_at is null
        or updated_at is null;

    alter table public.task_steps
    drop column if exists execution_started_at,
    drop column if exists execution_completed_at,
    drop column if exists execution_duration_ms,
    drop column if exists error_message,
    drop column if exists retry_count,
    alter column id set default gen_random_uuid(),
    alter column task_id set not null,
    alter column step_order type integer,
    alter column step_order set not null,
    alter column step_order drop default,
    alter column step_name type text,
    alter column step_name set not null,
    alter column step_name drop default,
    alter column instructions type text,
    alter column instructions set not null,
    alter column instructions drop default,
    alter column include_previous_context set default false,
    alter column include_previous_context set not null,
    alter column context_data set default '{}'::jsonb,
    alter column context_data set not null,
    alter column status set default 'pending',
    alter column status set not null,
    alter column execution_result set default '{}'::jsonb,
    alter column execution_result set not null,
    alter column created_at set default now(),
    alter column created_at set not null,
    alter column updated_at set default now(),
    alter column updated_at set not null,
    add constraint task_steps_task_id_fkey foreign key (task_id)
    references public.agent_tasks (id) on delete cascade;
end
$upgrade$;

-- What the variant left beside the table: its functions (every overload, so none shadows
-- a new signature in PostgREST) and its task counters. execute_sql(text) was a SECURITY
-- DEFINER granted to authenticated; the others were definers without ownership checks or
-- are replaced by the RPCs of supabase/schemas. The agent_tasks columns is_multi_step and
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
