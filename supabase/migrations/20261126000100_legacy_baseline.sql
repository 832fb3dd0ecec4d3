-- Legacy baseline: the app's existing agents and agent tasks, as deployed today.
--
-- Every object is created only where it is missing, so on a live project this
-- migration changes nothing; on an empty database it gives tests and the demo the
-- real starting point. The permissive policy on agent_task_executions is the app's
-- as shipped; a later migration closes it.

do $types$
begin
    if to_regtype('public.task_type_enum') is null then
        create type public.task_type_enum as enum ('scheduled', 'event_based');
    end if;
    if to_regtype('public.task_status_enum') is null then
        create type public.task_status_enum as enum (
            'active', 'paused', 'completed', 'failed', 'cancelled'
        );
    end if;
    if to_regtype('public.event_trigger_type_enum') is null then
        create type public.event_trigger_type_enum as enum (
            'email_received',
            'integration_webhook',
            'time_based',
            'manual',
            'agent_mentioned',
            'file_uploaded',
            'workspace_message'
        );
    end if;
    if to_regtype('public.task_execution_status_enum') is null then
        create type public.task_execution_status_enum as enum (
            'pending', 'running', 'completed', 'failed', 'cancelled'
        );
    end if;
end
$types$;

create table if not exists public.agents (
    id uuid primary key default gen_random_uuid(),
    user_id uuid not null references auth.users (id) on delete cascade,
    name text not null,
    description text,
    system_instructions text,
    active boolean not null default true,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

create table if not exists public.agent_tasks (
    id uuid primary key default gen_random_uuid(),
    agent_id uuid not null references public.agents (id) on delete cascade,
    user_id uuid not null references auth.users (id) on delete cascade,
    name text not null,
    description text,
    task_type public.task_type_enum not null default 'scheduled',
    status public.task_status_enum not null default 'active',
    instructions text not null,
    selected_tools jsonb not null default '[]'::jsonb,
    cron_expression text,
    timezone text not null default 'UTC',
    next_run_at timestamptz,
    last_run_at timestamptz,
    event_trigger_type public.event_trigger_type_enum,
    event_trigger_config jsonb not null default '{}'::jsonb,
    total_executions integer not null default 0,
    successful_executions integer not null default 0,
    failed_executions integer not null default 0,
    max_executions integer,
    start_date timestamptz,
    end_date timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    created_by uuid references auth.users (id),
    conversation_id uuid
);

create table if not exists public.agent_task_executions (
    id uuid primary key default gen_random_uuid(),
    task_id uuid not null references public.agent_tasks (id) on delete cascade,
    agent_id uuid not null references public.agents (id) on delete cascade,
    status public.task_execution_status_enum not null default 'pending',
    trigger_type text not null default 'manual',
    trigger_data jsonb not null default '{}'::jsonb,
    instructions_used text not null,
    tools_used jsonb not null default '[]'::jsonb,
    started_at timestamptz,
    completed_at timestamptz,
    duration_ms integer,
    output text,
    tool_outputs jsonb not null default '[]'::jsonb,
    error_message text,
    metadata jsonb not null default '{}'::jsonb,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    conversation_id uuid
);

create index if not exists idx_agents_user_id on public.agents (user_id);
create index if not exists idx_agent_tasks_user_id on public.agent_tasks (user_id);
create index if not exists idx_agent_tasks_agent_id on public.agent_tasks (agent_id);
create index if not exists idx_agent_task_executions_task_id
on public.agent_task_executions (task_id);

alter table public.agents enable row level security;
alter table public.agent_tasks enable row level security;
alter table public.agent_task_executions enable row level security;

do $policies$
begin
    if not exists (
        select from pg_policies
        where schemaname = 'public' and tablename = 'agents'
    ) then
        create policy "Users manage their own agents" on public.agents
        for all using (user_id = auth.uid()) with check (user_id = auth.uid());
    end if;
    if not exists (
        select from pg_policies
        where schemaname = 'public' and tablename = 'agent_tasks'
    ) then
        create policy "Users manage their own tasks" on public.agent_tasks
        for all using (user_id = auth.uid()) with check (user_id = auth.uid());
    end if;
    if not exists (
        select from pg_policies
        where schemaname = 'public' and tablename = 'agent_task_executions'
    ) then
        create policy "Users can view their task executions"
        on public.agent_task_executions
        for select using (
            task_id in (select id from public.agent_tasks where user_id = auth.uid())
        );
        create policy "System can manage task executions"
        on public.agent_task_executions
        for all using (true);
    end if;
end
$policies$;

comment on table public.agents is
'The app''s AI agents, each owned by one user (legacy baseline).';
comment on table public.agent_tasks is
'Scheduled or event-based work for an agent; instructions is the legacy single-step text.';
comment on table public.agent_task_executions is
'History of task runs as the app shows it; stepsync extends a row into a workflow run.';
