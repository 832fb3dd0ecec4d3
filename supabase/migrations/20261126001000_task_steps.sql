-- task_steps: the ordered steps of an agent task (the workflow definition).
--
-- Runs never write here except the latest-run snapshot (status, execution_result) the UI
-- shows; each run works on its own copy in task_step_executions.

create schema if not exists stepsync;
comment on schema stepsync is
'stepsync internals: service-only functions and security-definer helpers. '
'Not exposed by PostgREST.';
revoke all on schema stepsync from public;
grant usage on schema stepsync to service_role, authenticated;

do $types$
begin
    if to_regtype('public.task_step_status') is null then
        create type public.task_step_status as enum (
            'pending', 'running', 'completed', 'failed', 'skipped'
        );
    end if;
    if to_regtype('public.step_context_mode') is null then
        create type public.step_context_mode as enum (
            'full', 'previous', 'selective', 'metadata', 'custom'
        );
    end if;
    if to_regtype('public.step_failure_action') is null then
        create type public.step_failure_action as enum ('stop', 'continue');
    end if;
end
$types$;

-- Values the run snapshot needs beyond the earlier variant's enum.
alter type public.task_step_status add value if not exists 'queued' after 'pending';
alter type public.task_step_status add value if not exists 'cancelled';

comment on type public.task_step_status is
'Status of a step in its latest run (definition snapshot) or of a step execution.';
comment on type public.step_context_mode is
'What a step receives from earlier steps of its run: full, previous, selective (jsonpaths), '
'metadata (no outputs) or custom (a {{…}} template).';
comment on type public.step_failure_action is
'When a step fails for good: stop the run (remaining steps skipped) or continue with the next.';

-- Upgrade in place from the earlier task_steps variant (hard UNIQUE(task_id, step_order),
-- per-definition execution columns, no soft delete). That variant has no deleted_at
-- column; a fresh database has no table at all, so this block does nothing there.
-- Every row is kept: the execution columns are folded into execution_result before they
-- are dropped, and the earlier constraints, indexes, policies and triggers give way to
-- the definitions below, so an upgraded database ends with the same schema as a new one.
-- Rows the new rules cannot hold stop the migration (it changes nothing) with a list.
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
            case
                when s.step_order is null or s.step_order not between 1 and 50
                    then format('step_order %s is outside 1..50', s.step_order)
                when coalesce(char_length(btrim(s.step_name)), 0) not between 1 and 200
                    then 'step_name must have 1 to 200 characters'
                when coalesce(btrim(s.instructions), '') = ''
                    then 'instructions are blank'
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

create table if not exists public.task_steps (
    id uuid primary key default gen_random_uuid(),
    task_id uuid not null references public.agent_tasks (id) on delete cascade,
    step_order integer not null,
    step_name text not null,
    instructions text not null,
    include_previous_context boolean not null default false,
    context_data jsonb not null default '{}'::jsonb,
    status public.task_step_status not null default 'pending',
    execution_result jsonb not null default '{}'::jsonb,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

alter table public.task_steps
add column if not exists context_mode public.step_context_mode not null default 'previous',
add column if not exists context_paths jsonpath[] not null default '{}',
add column if not exists context_template text,
add column if not exists skip_if jsonpath,
add column if not exists on_failure public.step_failure_action not null default 'stop',
add column if not exists max_attempts integer not null default 1,
add column if not exists retry_backoff_seconds integer not null default 5,
add column if not exists retry_backoff_max_seconds integer not null default 600,
add column if not exists timeout_seconds integer not null default 300,
add column if not exists agent_id uuid references public.agents (id) on delete set null,
add column if not exists deleted_at timestamptz,
add column if not exists deleted_by uuid;

alter table public.task_steps
add constraint task_steps_step_order_range check (step_order between 1 and 50),
add constraint task_steps_step_name_length check (
    char_length(btrim(step_name)) between 1 and 200
),
add constraint task_steps_instructions_not_blank check (btrim(instructions) <> ''),
add constraint task_steps_context_data_object check (jsonb_typeof(context_data) = 'object'),
add constraint task_steps_custom_needs_template check (
    context_mode <> 'custom' or coalesce(btrim(context_template), '') <> ''
),
add constraint task_steps_selective_needs_paths check (
    context_mode <> 'selective' or cardinality(context_paths) > 0
),
add constraint task_steps_max_attempts_range check (max_attempts between 1 and 20),
add constraint task_steps_backoff_range check (
    retry_backoff_seconds between 0 and 3600
    and retry_backoff_max_seconds between retry_backoff_seconds and 86400
),
add constraint task_steps_timeout_range check (timeout_seconds between 1 and 86400),
-- Order is unique among live steps only, and checked at the end of each statement so a
-- single UPDATE can permute the order (reorder_task_steps). Its index serves every
-- (task_id, step_order) lookup of live steps; a step number of 1..50 caps a task at
-- 50 live steps.
add constraint task_steps_live_order_unique exclude using btree (
    task_id with =, step_order with =
) where (deleted_at is null) deferrable initially immediate;

create index if not exists task_steps_task_id_idx on public.task_steps (task_id);
create index if not exists task_steps_agent_id_idx on public.task_steps (agent_id)
where agent_id is not null;

alter table public.task_steps enable row level security;

comment on table public.task_steps is
'Ordered steps of an agent task: the workflow definition. 1–50 live steps per task; '
'soft-deleted rows keep deleted_at.';
comment on column public.task_steps.step_order is
'1-based position among the task''s live steps; unique among live rows (deferrable).';
comment on column public.task_steps.step_name is 'Short label shown in the UI.';
comment on column public.task_steps.instructions is
'What the agent is asked to do in this step. Unbounded, like agent_tasks.instructions.';
comment on column public.task_steps.include_previous_context is
'Whether the step receives context from earlier steps (shaped by context_mode).';
comment on column public.task_steps.context_data is
'Static JSON object always given to the step with its instructions.';
comment on column public.task_steps.status is
'Status of this step in the task''s latest run (a snapshot for the UI).';
comment on column public.task_steps.execution_result is
'Result of this step in the task''s latest run (a snapshot for the UI).';
comment on column public.task_steps.context_mode is
'How earlier steps are summarised when include_previous_context is true.';
comment on column public.task_steps.context_paths is
'jsonpath expressions over the run context, for context_mode = selective.';
comment on column public.task_steps.context_template is
'Template with {{…}} placeholders over the run context, for context_mode = custom.';
comment on column public.task_steps.skip_if is
'jsonpath predicate over the run context; when true the step is skipped.';
comment on column public.task_steps.on_failure is
'What a failure (attempts exhausted) does to the run: stop or continue.';
comment on column public.task_steps.max_attempts is
'Attempts before the step fails for good (1 = no retry).';
comment on column public.task_steps.retry_backoff_seconds is
'Base delay before a retry; doubled each attempt, with jitter.';
comment on column public.task_steps.retry_backoff_max_seconds is
'Upper bound of the retry delay.';
comment on column public.task_steps.timeout_seconds is
'Longest one attempt may run before it counts as failed.';
comment on column public.task_steps.agent_id is
'Optional agent override for this step; must belong to the task''s owner.';
comment on column public.task_steps.deleted_at is 'Soft delete: when the step was deleted.';
comment on column public.task_steps.deleted_by is 'Soft delete: who deleted the step.';
comment on column public.task_steps.created_at is 'When the step was created.';
comment on column public.task_steps.updated_at is 'When the step was last changed.';
comment on constraint task_steps_live_order_unique on public.task_steps is
'Live steps of a task have distinct positions; deferrable for one-statement reorders.';
comment on index public.task_steps_task_id_idx is
'Serves the cascade from agent_tasks and RLS lookups that include soft-deleted rows.';
comment on index public.task_steps_agent_id_idx is
'Serves the agent foreign key (on delete set null) without scanning every step.';
comment on column public.task_steps.id is 'Step id.';
comment on column public.task_steps.task_id is 'The agent task this step belongs to.';
comment on constraint task_steps_step_order_range on public.task_steps is
'Positions run 1..50: with unique live positions, at most 50 live steps per task.';
comment on constraint task_steps_step_name_length on public.task_steps is
'A step name has 1 to 200 characters (trimmed).';
comment on constraint task_steps_instructions_not_blank on public.task_steps is
'Every step says what to do.';
comment on constraint task_steps_context_data_object on public.task_steps is
'Static context is a JSON object.';
comment on constraint task_steps_custom_needs_template on public.task_steps is
'context_mode custom needs a template.';
comment on constraint task_steps_selective_needs_paths on public.task_steps is
'context_mode selective needs at least one jsonpath.';
comment on constraint task_steps_max_attempts_range on public.task_steps is
'1 to 20 attempts.';
comment on constraint task_steps_backoff_range on public.task_steps is
'Backoff base 0..3600 s, its cap between the base and 86400 s.';
comment on constraint task_steps_timeout_range on public.task_steps is
'An attempt may run 1 s to 24 h.';
