-- task_steps: the ordered steps of an agent task (the workflow definition).
--
-- Runs never write here except the latest-run snapshot (status, execution_result) the UI
-- shows; each run works on its own copy in task_step_executions.
--
-- The table is created with the columns the earlier task_steps variant also had, and the
-- others are added to it: a database upgraded from that variant
-- (20261126001000_upgrade_earlier_task_steps.sql) already has the table, and ends with the
-- same columns, constraints and indexes as a new one. That upgrade dropped the variant's
-- own constraints and indexes, so they are all added here.

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

-- The columns the earlier variant lacks: workflow settings, agent override, soft delete.
alter table public.task_steps
add column if not exists context_mode public.step_context_mode not null default 'previous',
add column if not exists context_paths jsonpath[] not null default '{}',
add column if not exists context_template text,
add column if not exists skip_if jsonpath,
add column if not exists on_failure public.step_failure_action not null default 'stop',
add column if not exists max_attempts integer not null default 1,
add column if not exists max_lost_leases integer not null default 3,
add column if not exists retry_backoff_seconds integer not null default 5,
add column if not exists retry_backoff_max_seconds integer not null default 600,
add column if not exists timeout_seconds integer not null default 300,
add column if not exists agent_id uuid references public.agents (id) on delete set null,
add column if not exists compensate_instructions text,
add column if not exists deleted_at timestamptz,
add column if not exists deleted_by uuid;

alter table public.task_steps
add constraint task_steps_step_order_range check (step_order between 1 and 50),
add constraint task_steps_step_name_length check (
    char_length(step_name) <= stepsync.input_limit('step_name_chars')
    and not stepsync.is_blank(step_name)
),
add constraint task_steps_instructions_not_blank check (
    not stepsync.is_blank(instructions)
),
add constraint task_steps_instructions_size check (
    octet_length(instructions) <= stepsync.input_limit('instructions_bytes')
),
add constraint task_steps_context_data_object check (jsonb_typeof(context_data) = 'object'),
add constraint task_steps_custom_needs_template check (
    context_mode <> 'custom' or not coalesce(stepsync.is_blank(context_template), true)
),
add constraint task_steps_context_template_size check (
    octet_length(context_template) <= stepsync.input_limit('context_template_bytes')
),
add constraint task_steps_selective_needs_paths check (
    context_mode <> 'selective' or cardinality(context_paths) > 0
),
add constraint task_steps_context_paths_count check (
    cardinality(context_paths) <= stepsync.input_limit('context_paths')
),
add constraint task_steps_max_attempts_range check (max_attempts between 1 and 20),
add constraint task_steps_max_lost_leases_range check (max_lost_leases between 0 and 20),
add constraint task_steps_backoff_range check (
    retry_backoff_seconds between 0 and 3600
    and retry_backoff_max_seconds between retry_backoff_seconds and 86400
),
add constraint task_steps_timeout_range check (timeout_seconds between 1 and 86400),
add constraint task_steps_compensate_not_blank check (btrim(compensate_instructions) <> ''),
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
'What the agent is asked to do in this step: not blank, at most instructions_bytes '
'(stepsync.input_limits()).';
comment on column public.task_steps.include_previous_context is
'Whether the step receives context from earlier steps (shaped by context_mode).';
comment on column public.task_steps.context_data is
'Static JSON object always given to the step with its instructions (at most '
'context_data_bytes of JSON, json_levels deep: checked by stepsync.check_task_step).';
comment on column public.task_steps.status is
'Status of this step in the task''s latest run (a snapshot for the UI).';
comment on column public.task_steps.execution_result is
'Result of this step in the task''s latest run (a snapshot for the UI).';
comment on column public.task_steps.context_mode is
'How earlier steps are summarised when include_previous_context is true.';
comment on column public.task_steps.context_paths is
'jsonpath expressions over the run context, for context_mode = selective; each inside '
'the checked subset (stepsync.jsonpath_problem).';
comment on column public.task_steps.context_template is
'Template with {{…}} placeholders over the run context, for context_mode = custom; '
'placeholders inside the checked jsonpath subset (stepsync.template_problem).';
comment on column public.task_steps.skip_if is
'jsonpath predicate over the run context, inside the checked subset; when true the step '
'is skipped.';
comment on column public.task_steps.on_failure is
'What a failure (attempts exhausted) does to the run: stop or continue.';
comment on column public.task_steps.max_attempts is
'Attempts before the step fails for good (1 = no retry). Counts the step''s own errors '
'and timeouts; a lost lease (its worker died or lost the database) is not one.';
comment on column public.task_steps.max_lost_leases is
'How often the step may lose its lease (its worker died or lost the database) and be '
'queued again without using an attempt; one more loss fails it. Protects the workers '
'from a step that kills whoever runs it.';
comment on column public.task_steps.retry_backoff_seconds is
'Base delay before a retry; doubled each attempt, with jitter.';
comment on column public.task_steps.retry_backoff_max_seconds is
'Upper bound of the retry delay.';
comment on column public.task_steps.timeout_seconds is
'Longest one attempt may run before it counts as failed.';
comment on column public.task_steps.agent_id is
'Optional agent override for this step; must belong to the task''s owner.';
comment on column public.task_steps.compensate_instructions is
'What undoes this step''s effects when a later failure stops its run (or a cancel asks '
'for it): run as a compensation step after the run stops, newest completed step first. '
'Null: the step needs no undoing.';
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
'A step name has at most step_name_chars (200) characters and is not blank (Unicode '
'whitespace and invisible characters count as blank).';
comment on constraint task_steps_instructions_not_blank on public.task_steps is
'Every step says what to do (Unicode whitespace and invisible characters are blank).';
comment on constraint task_steps_instructions_size on public.task_steps is
'Instructions hold at most instructions_bytes (stepsync.input_limits()).';
comment on constraint task_steps_context_template_size on public.task_steps is
'A custom template holds at most context_template_bytes (stepsync.input_limits()).';
comment on constraint task_steps_context_paths_count on public.task_steps is
'A selective step names at most context_paths jsonpaths (stepsync.input_limits()).';
comment on constraint task_steps_context_data_object on public.task_steps is
'Static context is a JSON object.';
comment on constraint task_steps_custom_needs_template on public.task_steps is
'context_mode custom needs a template that is not blank.';
comment on constraint task_steps_selective_needs_paths on public.task_steps is
'context_mode selective needs at least one jsonpath.';
comment on constraint task_steps_max_attempts_range on public.task_steps is
'1 to 20 attempts.';
comment on constraint task_steps_max_lost_leases_range on public.task_steps is
'0 to 20 lost leases before the step fails.';
comment on constraint task_steps_backoff_range on public.task_steps is
'Backoff base 0..3600 s, its cap between the base and 86400 s.';
comment on constraint task_steps_timeout_range on public.task_steps is
'An attempt may run 1 s to 24 h.';
comment on constraint task_steps_compensate_not_blank on public.task_steps is
'A compensation says what to do; no compensation is null.';
