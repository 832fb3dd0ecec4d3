-- Backfill bookkeeping: one row per backfill run (its checkpoint and counters), the steps
-- each run created, and the tasks it had to leave without a step.
--
-- Service-only: RLS is on and only service_role has a policy; the API roles get nothing.

create table if not exists stepsync.backfill_runs (
    id uuid primary key default gen_random_uuid(),
    kind text not null default 'legacy_tasks' check (kind in ('legacy_tasks')),
    status text not null default 'running' check (
        status in ('running', 'completed', 'rolled_back')
    ),
    batch_size integer not null check (batch_size between 1 and 100000),
    last_task_id uuid,
    batches integer not null default 0,
    tasks_scanned bigint not null default 0,
    steps_created bigint not null default 0,
    already_has_steps bigint not null default 0,
    marker_with_steps bigint not null default 0,
    marker_without_steps bigint not null default 0,
    blank_instructions bigint not null default 0,
    oversized_instructions bigint not null default 0,
    long_instructions bigint not null default 0,
    unnamed bigint not null default 0,
    status_paused bigint not null default 0,
    status_completed bigint not null default 0,
    status_failed bigint not null default 0,
    status_cancelled bigint not null default 0,
    tasks_at_start bigint,
    options jsonb not null default '{}'::jsonb,
    started_by text not null default current_user,
    started_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    finished_at timestamptz,
    rolled_back_at timestamptz,
    rolled_back_steps bigint not null default 0,
    rollback_kept_steps bigint not null default 0
);

create table if not exists stepsync.backfill_step_origin (
    -- Not a foreign key: a per-row check would slow the bulk insert of every batch, and
    -- runs are never deleted (no role has delete on backfill_runs).
    backfill_run_id uuid not null,
    task_id uuid not null,
    step_id uuid not null,
    -- A run gives a task at most one step. Keyed by task so a batch (which walks tasks in
    -- id order) appends to the index instead of scattering random step ids over it.
    primary key (backfill_run_id, task_id)
);

create table if not exists stepsync.backfill_exceptions (
    backfill_run_id uuid not null references stepsync.backfill_runs (id),
    task_id uuid not null,
    category text not null check (
        category in ('blank_instructions', 'oversized_instructions', 'marker_without_steps')
    ),
    detail text not null,
    primary key (backfill_run_id, task_id)
);

alter table stepsync.backfill_runs enable row level security;
alter table stepsync.backfill_step_origin enable row level security;
alter table stepsync.backfill_exceptions enable row level security;

revoke all on stepsync.backfill_runs from public, anon, authenticated;
revoke all on stepsync.backfill_step_origin from public, anon, authenticated;
revoke all on stepsync.backfill_exceptions from public, anon, authenticated;
grant select, insert, update on stepsync.backfill_runs to service_role;
grant select, insert, update, delete on stepsync.backfill_step_origin to service_role;
grant select, insert, update, delete on stepsync.backfill_exceptions to service_role;

create policy "Service role manages backfill runs" on stepsync.backfill_runs
for all to service_role using (true) with check (true);
create policy "Service role manages backfill step origins" on stepsync.backfill_step_origin
for all to service_role using (true) with check (true);
create policy "Service role manages backfill exceptions" on stepsync.backfill_exceptions
for all to service_role using (true) with check (true);

comment on table stepsync.backfill_runs is
'One row per legacy-task backfill run: its keyset checkpoint (last_task_id), counters by '
'category, and rollback state. A run whose process died stays running and is resumed.';
comment on column stepsync.backfill_runs.status is
'running (in progress or interrupted), completed, or rolled_back.';
comment on column stepsync.backfill_runs.last_task_id is
'Checkpoint: every agent_tasks.id up to and including this one has been processed.';
comment on column stepsync.backfill_runs.batch_size is 'Tasks per batch transaction.';
comment on column stepsync.backfill_runs.batches is 'Batches committed so far.';
comment on column stepsync.backfill_runs.tasks_scanned is 'Tasks examined so far.';
comment on column stepsync.backfill_runs.steps_created is 'Steps 1 this run created.';
comment on column stepsync.backfill_runs.already_has_steps is
'Tasks skipped because they already had live steps (marker tasks excluded).';
comment on column stepsync.backfill_runs.marker_with_steps is
'Tasks with the earlier multi-step marker text whose steps are present.';
comment on column stepsync.backfill_runs.marker_without_steps is
'Tasks with the earlier multi-step marker text and no live step: cannot be restored.';
comment on column stepsync.backfill_runs.blank_instructions is
'Tasks with empty or whitespace-only instructions and no step: left without one.';
comment on column stepsync.backfill_runs.oversized_instructions is
'Tasks whose instructions exceed a step''s instructions_bytes limit and no step: left '
'without one.';
comment on column stepsync.backfill_runs.long_instructions is
'Created steps whose instructions exceed 10,000 characters (migrated all the same).';
comment on column stepsync.backfill_runs.unnamed is
'Created steps whose task had a blank name (name derived from the instructions).';
comment on column stepsync.backfill_runs.status_paused is 'Created steps of paused tasks.';
comment on column stepsync.backfill_runs.status_completed is 'Created steps of completed tasks.';
comment on column stepsync.backfill_runs.status_failed is 'Created steps of failed tasks.';
comment on column stepsync.backfill_runs.status_cancelled is 'Created steps of cancelled tasks.';
comment on column stepsync.backfill_runs.tasks_at_start is
'Number of agent_tasks rows when the run started (for progress and ETA).';
comment on column stepsync.backfill_runs.options is
'Settings the run was started with (batch size, pause, timeouts).';
comment on column stepsync.backfill_runs.started_by is 'Database role that started the run.';
comment on column stepsync.backfill_runs.started_at is 'When the run started.';
comment on column stepsync.backfill_runs.updated_at is 'When the last batch committed.';
comment on column stepsync.backfill_runs.finished_at is 'When the last batch found no more tasks.';
comment on column stepsync.backfill_runs.rolled_back_at is 'When a rollback of this run finished.';
comment on column stepsync.backfill_runs.rolled_back_steps is 'Steps removed by rollback.';
comment on column stepsync.backfill_runs.rollback_kept_steps is
'Steps rollback kept because their task has other live steps now.';
comment on column stepsync.backfill_runs.kind is 'What was backfilled (legacy_tasks).';

comment on table stepsync.backfill_step_origin is
'Which backfill run created which step: rollback removes exactly these rows'' steps.';
comment on column stepsync.backfill_step_origin.step_id is 'A task_steps.id the run created.';
comment on column stepsync.backfill_step_origin.backfill_run_id is 'The run that created it.';
comment on column stepsync.backfill_step_origin.task_id is
'The step''s task; rollback walks a run''s rows in task order.';

comment on table stepsync.backfill_exceptions is
'Tasks a backfill run could not give a step, with the reason; listed by the CLI.';
comment on column stepsync.backfill_exceptions.backfill_run_id is 'The run that found it.';
comment on column stepsync.backfill_exceptions.task_id is 'The task left without a step.';
comment on column stepsync.backfill_exceptions.category is
'blank_instructions, oversized_instructions or marker_without_steps.';
comment on column stepsync.backfill_exceptions.detail is 'Why no step could be made.';
