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
