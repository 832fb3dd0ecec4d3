-- Runs: agent_task_executions becomes a workflow run; task_step_executions holds one row
-- per step of a run, with a snapshot of the step definition taken when the run starts.
--
-- Writes to both tables go through the run engine functions (start_task_run, claim_steps,
-- complete_step, ...). API users only read their own rows.
--
-- The engine's hot path reads only the rows it works on, whatever the statistics say. The
-- service starts before the work arrives, so its first calls of each engine function are
-- planned, and the plans kept for the connection's life, while these tables are nearly
-- empty; a join planned then stays a loop over whole tables once they hold thousands of
-- queued steps and millions of finished ones. So every hot statement is keyed by
-- construction: the rows it changes are named by primary key (`id = any(array)`), by the
-- claim or lease index, or by (run_id, step_order); any other row it needs comes from a
-- scalar or LATERAL ... LIMIT subquery keyed by a column of the row at hand, which the
-- planner cannot turn into a scan of a whole table. `enable_seqscan = off` on the hot
-- functions keeps a tiny table's sequential scan out of a plan that outlives the tiny
-- table. tests/test_hot_path_plans.py holds every hot statement to this.

-- How a finished run turned out, beyond the legacy status the app reads: a run whose
-- failed steps all said `continue` is `completed` there, and `partial` here.
create type public.task_run_outcome as enum ('succeeded', 'partial', 'failed', 'cancelled');

comment on type public.task_run_outcome is
'How a finished run turned out: succeeded (every step completed or was skipped by its '
'skip_if), partial (completed, but steps marked continue failed), failed, cancelled.';

-- Where a stopped run's compensation stands (see 0175_compensation.sql).
create type public.run_compensation_status as enum (
    'running', 'completed', 'failed', 'cancelled'
);

comment on type public.run_compensation_status is
'Compensation of a stopped run: running, completed (every compensation step completed), '
'failed (some failed for good), cancelled (the run was cancelled while compensating).';

-- A step execution runs a step of the workflow, or undoes one (compensation).
create type public.step_execution_kind as enum ('step', 'compensation');

comment on type public.step_execution_kind is
'step: a step of the workflow; compensation: the compensate_instructions of a completed '
'step, run after its run stopped.';

-- Run rows: owner (for RLS without a join), step progress and cancellation, outcome,
-- compensation, and the run a resumed run continues.
alter table public.agent_task_executions
add column if not exists user_id uuid references auth.users (id) on delete cascade,
add column if not exists step_count integer not null default 0,
add column if not exists steps_completed integer not null default 0,
add column if not exists steps_failed integer not null default 0,
add column if not exists steps_skipped integer not null default 0,
add column if not exists cancelled_at timestamptz,
add column if not exists cancelled_by uuid,
add column if not exists outcome public.task_run_outcome,
add column if not exists compensation public.run_compensation_status,
add column if not exists resumed_from_run_id uuid
references public.agent_task_executions (id) on delete set null;

update public.agent_task_executions as r
set user_id = t.user_id
from public.agent_tasks as t
where r.task_id = t.id and r.user_id is null;

comment on column public.agent_task_executions.user_id is
'Owner of the run (the task owner), filled from the task on insert.';
comment on column public.agent_task_executions.step_count is
'Number of steps snapshotted for this run (0 for runs made before multi-step).';
comment on column public.agent_task_executions.steps_completed is
'Steps of this run that completed.';
comment on column public.agent_task_executions.steps_failed is
'Steps of this run that failed for good (after their last attempt).';
comment on column public.agent_task_executions.steps_skipped is
'Steps of this run that were skipped (skip_if, or after a stopping failure).';
comment on column public.agent_task_executions.cancelled_at is
'When the run was cancelled (cancel_task_run).';
comment on column public.agent_task_executions.cancelled_by is
'Who cancelled the run (auth.uid() of the caller; null for the service).';
comment on column public.agent_task_executions.outcome is
'How the run turned out, set when it ends (null before): succeeded, partial (status '
'completed, but steps marked continue failed: steps_failed > 0), failed, cancelled. '
'Also in metadata.outcome.';
comment on column public.agent_task_executions.compensation is
'Compensation of the run after it stopped: null (none was needed), running, completed, '
'failed or cancelled. Also in metadata.compensation once the run ends.';
comment on column public.agent_task_executions.resumed_from_run_id is
'The run this run resumes (resume_task_run): the steps before its first executed step '
'reuse that run''s recorded outcomes. Null for a run started afresh.';

create or replace function stepsync.fill_run_owner()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    -- Legacy writers (the task-executor Edge Function) do not know the column.
    if new.user_id is null then
        select t.user_id into new.user_id
        from public.agent_tasks as t
        where t.id = new.task_id;
    end if;
    return new;
end
$$;

comment on function stepsync.fill_run_owner() is
'Trigger: a run row without user_id gets its task''s owner.';

create or replace trigger agent_task_executions_fill_owner
before insert on public.agent_task_executions
for each row execute function stepsync.fill_run_owner();

comment on trigger agent_task_executions_fill_owner on public.agent_task_executions is
'Keeps user_id filled for writers that predate the column.';

create index if not exists agent_task_executions_user_id_idx
on public.agent_task_executions (user_id);
create index if not exists agent_task_executions_task_created_idx
on public.agent_task_executions (task_id, created_at desc);
-- The open-run quotas (start_task_run) count a user's open runs without reading their
-- history. An open run is never cancelled, so `cancelled_at is null` changes nothing in
-- what the index holds; it keeps the index out of the engine's statements that look runs
-- up by id and status (status = 'running' alone does not imply this predicate), which a
-- planner without statistics would otherwise send through every open run. For the same
-- reason the status is not an index column (PostgreSQL 18 skip-scans a leading user_id).
create index if not exists agent_task_executions_open_by_user_idx
on public.agent_task_executions (user_id)
where status in ('pending', 'running') and cancelled_at is null;

comment on index public.agent_task_executions_user_id_idx is
'Serves the cascade from auth.users and listings of a user''s runs.';
comment on index public.agent_task_executions_open_by_user_idx is
'Open runs of a user: the max_active_runs_per_user and max_active_runs_per_task quotas.';
comment on index public.agent_task_executions_task_created_idx is
'Latest run of a task (preview, definition snapshot).';

create index if not exists agent_task_executions_resumed_from_idx
on public.agent_task_executions (resumed_from_run_id)
where resumed_from_run_id is not null;

comment on index public.agent_task_executions_resumed_from_idx is
'The resumes of a run; serves on delete set null when a run is removed.';

-- Fencing tokens: every claim takes a new one, so a stale holder can be told apart.
create sequence if not exists stepsync.lease_token_seq as bigint;
revoke all on sequence stepsync.lease_token_seq from public;
grant usage on sequence stepsync.lease_token_seq to service_role;

comment on sequence stepsync.lease_token_seq is
'Monotonic fencing tokens handed out by claim_steps.';

create table if not exists public.task_step_executions (
    id uuid primary key default gen_random_uuid(),
    run_id uuid not null references public.agent_task_executions (id) on delete cascade,
    -- Copied from the run (which cascades from the task and the user) so that RLS and
    -- the audit need no join; no foreign keys of their own, so a step transition
    -- maintains as few indexes as possible.
    task_id uuid not null,
    user_id uuid not null,
    step_id uuid,
    kind public.step_execution_kind not null default 'step',
    -- Snapshot of the definition at run start. Compensations follow the steps.
    step_order integer not null check (step_order between 1 and 100),
    step_name text not null,
    instructions text not null,
    agent_id uuid not null references public.agents (id) on delete cascade,
    include_previous_context boolean not null,
    context_mode public.step_context_mode not null,
    context_paths jsonpath[] not null default '{}',
    context_template text,
    context_data jsonb not null default '{}'::jsonb,
    skip_if jsonpath,
    on_failure public.step_failure_action not null,
    max_attempts integer not null check (max_attempts between 1 and 20),
    max_lost_leases integer not null default 3 check (max_lost_leases between 0 and 20),
    retry_backoff_seconds integer not null check (retry_backoff_seconds >= 0),
    retry_backoff_max_seconds integer not null check (retry_backoff_max_seconds >= 0),
    timeout_seconds integer not null check (timeout_seconds > 0),
    compensate_instructions text,
    compensates_step_order integer,
    reused_from uuid,
    -- Execution state.
    status public.task_step_status not null default 'pending',
    attempt integer not null default 0 check (attempt >= 0),
    lost_leases integer not null default 0 check (lost_leases >= 0),
    run_after timestamptz,
    fair_at timestamptz,
    queued_at timestamptz,
    lease_owner text,
    lease_expires_at timestamptz,
    lease_token bigint,
    input_context jsonb,
    output jsonb,
    error_message text,
    last_error_at timestamptz,
    skip_reason text,
    started_at timestamptz,
    completed_at timestamptz,
    duration_ms integer,
    idempotency_key text generated always as (
        run_id::text || ':' || step_order::text
    ) stored,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint task_step_executions_run_order_unique unique (run_id, step_order),
    constraint task_step_executions_queued_has_run_after check (
        status <> 'queued' or (run_after is not null and fair_at is not null)
    ),
    constraint task_step_executions_running_has_lease check (
        status <> 'running'
        or (lease_owner is not null and lease_expires_at is not null and lease_token is not null)
    ),
    constraint task_step_executions_kind_shape check (
        (kind = 'step' and step_order <= 50 and compensates_step_order is null)
        or (kind = 'compensation' and compensates_step_order between 1 and 50)
    )
);

-- The claim query: queued steps in their fair order (fair_at: each user's queued steps
-- spaced apart, so users take turns), the due ones taken as the walk meets them.
create index if not exists task_step_executions_claim_idx
on public.task_step_executions (fair_at, id)
where status = 'queued';
-- Where a user's next queued step goes: after the last one they already have queued.
create index if not exists task_step_executions_user_queue_idx
on public.task_step_executions (user_id, fair_at)
where status = 'queued';
-- The reaper: running steps by lease expiry.
create index if not exists task_step_executions_lease_idx
on public.task_step_executions (lease_expires_at)
where status = 'running';

alter table public.task_step_executions enable row level security;

create policy "Owners read their step runs" on public.task_step_executions
for select to authenticated
using (user_id = (select auth.uid()));

create policy "Service role manages step runs" on public.task_step_executions
for all to service_role
using (true) with check (true);

comment on policy "Owners read their step runs" on public.task_step_executions is
'Owners read the step rows of their own runs.';
comment on policy "Service role manages step runs" on public.task_step_executions is
'The service claims, completes and fails steps.';

revoke all on public.task_step_executions from anon;
revoke insert, update, delete, truncate, references, trigger
on public.task_step_executions from public, authenticated;

comment on table public.task_step_executions is
'One row per step of a run: the step definition as it was at run start, and the '
'execution state (status, attempts, lease, input context, result, timings).';
comment on column public.task_step_executions.id is
'Step execution id (claims, leases, notifications).';
comment on column public.task_step_executions.run_id is 'The run (agent_task_executions).';
comment on column public.task_step_executions.task_id is
'The task the run belongs to (copied from the run).';
comment on column public.task_step_executions.user_id is
'Owner of the run (copied from the run; RLS).';
comment on column public.task_step_executions.step_id is
'The task_steps row this was snapshotted from (a plain reference: the step may since '
'have been purged); null for a task run from its legacy instructions.';
comment on column public.task_step_executions.kind is
'step (a step of the workflow, step_order 1..50) or compensation (undoes the step at '
'compensates_step_order; placed after the steps, newest step first).';
comment on column public.task_step_executions.step_order is
'1-based position in the run: the steps, then any compensations.';
comment on column public.task_step_executions.compensate_instructions is
'Snapshot of task_steps.compensate_instructions: what a compensation of this step runs.';
comment on column public.task_step_executions.compensates_step_order is
'For a compensation: the step_order of the completed step it undoes.';
comment on column public.task_step_executions.reused_from is
'For a step of a resumed run that was not executed again: the step execution of the '
'earlier run whose recorded outcome (status, output, timings) it carries. A plain '
'reference (the earlier run may be gone).';
comment on column public.task_step_executions.step_name is 'Snapshot of task_steps.step_name.';
comment on column public.task_step_executions.instructions is
'Snapshot of task_steps.instructions.';
comment on column public.task_step_executions.agent_id is
'Agent that runs the step: the step override, else the task''s agent.';
comment on column public.task_step_executions.include_previous_context is
'Snapshot of task_steps.include_previous_context.';
comment on column public.task_step_executions.context_mode is
'Snapshot of task_steps.context_mode.';
comment on column public.task_step_executions.context_paths is
'Snapshot of task_steps.context_paths.';
comment on column public.task_step_executions.context_template is
'Snapshot of task_steps.context_template.';
comment on column public.task_step_executions.context_data is
'Snapshot of task_steps.context_data.';
comment on column public.task_step_executions.skip_if is 'Snapshot of task_steps.skip_if.';
comment on column public.task_step_executions.on_failure is
'Snapshot of task_steps.on_failure.';
comment on column public.task_step_executions.max_attempts is
'Snapshot of task_steps.max_attempts.';
comment on column public.task_step_executions.max_lost_leases is
'Snapshot of task_steps.max_lost_leases.';
comment on column public.task_step_executions.retry_backoff_seconds is
'Snapshot of task_steps.retry_backoff_seconds.';
comment on column public.task_step_executions.retry_backoff_max_seconds is
'Snapshot of task_steps.retry_backoff_max_seconds.';
comment on column public.task_step_executions.timeout_seconds is
'Snapshot of task_steps.timeout_seconds.';
comment on column public.task_step_executions.status is
'pending → queued → running → completed | failed | skipped | cancelled.';
comment on column public.task_step_executions.attempt is
'Attempts started so far (a claim counts one; a graceful release or a lost lease gives it '
'back).';
comment on column public.task_step_executions.lost_leases is
'How often the step''s lease lapsed without a result (its worker died or lost the '
'database); reaped and queued again without using an attempt, up to max_lost_leases.';
comment on column public.task_step_executions.run_after is
'A queued step is claimable from this time on (retry backoff).';
comment on column public.task_step_executions.fair_at is
'Place of a queued step in the claim order: when it was queued, or, when its user '
'already had steps queued, user_step_spacing_ms after the last of them (never before '
'run_after). Users with many queued steps take turns with the others.';
comment on column public.task_step_executions.queued_at is
'When the step last became queued.';
comment on column public.task_step_executions.lease_owner is
'Worker holding the lease of the running attempt.';
comment on column public.task_step_executions.lease_expires_at is
'When the lease lapses unless heartbeated; the reaper then re-queues or fails the step.';
comment on column public.task_step_executions.lease_token is
'Fencing token of the latest claim; complete/fail only take effect with it.';
comment on column public.task_step_executions.input_context is
'Context the step received at its latest claim (build_step_context).';
comment on column public.task_step_executions.output is 'Result of the step (JSON).';
comment on column public.task_step_executions.error_message is
'Error of the latest failed attempt.';
comment on column public.task_step_executions.last_error_at is
'When the latest attempt failed; run_after - last_error_at is the retry delay.';
comment on column public.task_step_executions.skip_reason is 'Why the step was skipped.';
comment on column public.task_step_executions.started_at is
'When the latest attempt started.';
comment on column public.task_step_executions.completed_at is
'When the step reached a final status.';
comment on column public.task_step_executions.duration_ms is
'completed_at - started_at of the final attempt, in milliseconds.';
comment on column public.task_step_executions.idempotency_key is
'Same for every attempt of this step of this run: executors pass it on.';
comment on column public.task_step_executions.created_at is 'When the run snapshotted the step.';
comment on column public.task_step_executions.updated_at is 'When the row last changed.';
comment on index public.task_step_executions_pkey is 'Step execution by id.';
comment on index public.task_step_executions_run_order_unique is
'Steps of a run in order; serves the cascade from runs.';
comment on constraint task_step_executions_run_order_unique
on public.task_step_executions is 'A run has one row per position.';
comment on constraint task_step_executions_queued_has_run_after
on public.task_step_executions is
'A queued step always says when it is due and where it stands in the claim order.';
comment on constraint task_step_executions_running_has_lease
on public.task_step_executions is 'A running step always has a lease and a fencing token.';
comment on constraint task_step_executions_kind_shape
on public.task_step_executions is
'Steps take positions 1..50; a compensation names the step it undoes.';
comment on index public.task_step_executions_claim_idx is
'claim_steps: queued steps in their fair order (fair_at, id).';
comment on index public.task_step_executions_user_queue_idx is
'The last queued step of a user (stepsync.fair_at), and queue_depth.';
comment on index public.task_step_executions_lease_idx is
'reap_expired_leases: running steps by lease expiry.';

create type stepsync.leased_step as (
    step_execution_id uuid,
    run_id uuid,
    lease_token bigint,
    task_id uuid,
    user_id uuid,
    agent_id uuid,
    step_order integer,
    step_name text,
    instructions text,
    context jsonb,
    attempt integer,
    timeout_seconds integer,
    idempotency_key text,
    conversation_id uuid,
    trigger_data jsonb
);

comment on type stepsync.leased_step is
'A step leased to a worker: what to run (instructions, built context, agent, timeout), '
'the lease that proves it is the worker''s (lease_token) and the idempotency key that '
'stays the same across its attempts. Returned by claim_steps, lease_steps and the '
'hand-off of complete_steps.';

revoke all on type stepsync.leased_step from public;
grant usage on type stepsync.leased_step to service_role;
