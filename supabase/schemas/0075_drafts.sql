-- Drafts: a task's steps saved without touching the live definition, then published or
-- discarded.
--
-- One draft per task holds a step list exactly as save_task_steps takes it (p_steps),
-- and the version of the live definition it was based on. Runs, schedules and previews
-- of the live steps never read it. Saving a draft checks the list's form only (the
-- types of its fields): an unfinished step is what a draft is for, and validate_steps
-- and preview_task_run show what is missing. Publishing goes through save_task_steps
-- itself, so a draft becomes live under exactly the rules of a direct save, all or
-- nothing, audited like every change of task_steps.
--
-- The version is a fingerprint of the live definition (each live step's columns except
-- its latest-run snapshot and timestamps), not a counter: a counter would need a write to
-- the task on every change of its steps, the backfill included, where the fingerprint
-- costs nothing until a draft is saved or published. The draft keeps the version of its
-- first save; saving it again does not move it, since its content still derives from
-- what the editor loaded then. Publishing a draft whose live definition has changed since
-- is refused unless forced.

create or replace function stepsync.definition_version(p_task_id uuid)
returns text
language sql
stable
set search_path = ''
as $$
    select md5(
        coalesce(
            string_agg(
                (
                    to_jsonb(s) - array[
                        'status', 'execution_result', 'created_at', 'updated_at',
                        'deleted_at', 'deleted_by'
                    ]
                )::text,
                ',' order by s.step_order
            ),
            ''
        )
    )
    from public.task_steps as s
    where s.task_id = p_task_id and s.deleted_at is null
$$;

revoke all on function stepsync.definition_version(uuid) from public;
grant execute on function stepsync.definition_version(uuid) to authenticated, service_role;

comment on function stepsync.definition_version(uuid) is
'Fingerprint of a task''s live definition (its live steps, without their latest-run '
'snapshot and timestamps): equal while the steps are, different once any changes. Runs '
'as the caller.';

create table if not exists public.task_step_drafts (
    id uuid primary key default gen_random_uuid(),
    task_id uuid not null references public.agent_tasks (id) on delete cascade,
    steps jsonb not null,
    based_on_version text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    updated_by uuid,
    constraint task_step_drafts_one_per_task unique (task_id),
    constraint task_step_drafts_steps_array check (jsonb_typeof(steps) = 'array')
);

alter table public.task_step_drafts enable row level security;

comment on table public.task_step_drafts is
'One unpublished step list per task (save_task_steps_draft), with the version of the live '
'definition it was based on. Runs and schedules never read it.';
comment on column public.task_step_drafts.id is 'Draft id.';
comment on column public.task_step_drafts.task_id is 'The task whose steps the draft replaces.';
comment on column public.task_step_drafts.steps is
'The draft step list, as given (save_task_steps'' p_steps: items with an id edit that '
'step, items without one add a step).';
comment on column public.task_step_drafts.based_on_version is
'stepsync.definition_version of the live steps when the draft was first saved; publishing '
'is refused (unless forced) once the live steps differ.';
comment on column public.task_step_drafts.created_at is 'When the draft was first saved.';
comment on column public.task_step_drafts.updated_at is 'When the draft was last saved.';
comment on column public.task_step_drafts.updated_by is
'auth.uid() of whoever saved it last (null for the service).';
comment on constraint task_step_drafts_one_per_task on public.task_step_drafts is
'A task has at most one draft.';
comment on constraint task_step_drafts_steps_array on public.task_step_drafts is
'A draft holds a step list.';
comment on index public.task_step_drafts_one_per_task is
'The draft of a task; serves the cascade from agent_tasks and the owners'' policies.';

-- Owners may also read and write their draft directly (REST): what they could store
-- there, publishing checks like any save.
revoke all on public.task_step_drafts from public, anon, authenticated;
grant select, insert, update, delete on public.task_step_drafts to authenticated;

create policy "Owners manage the drafts of their tasks" on public.task_step_drafts
for all to authenticated
using (
    task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
)
with check (
    task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
);

create policy "Service role manages drafts" on public.task_step_drafts
for all to service_role
using (true)
with check (true);

comment on policy "Owners manage the drafts of their tasks" on public.task_step_drafts is
'Only a task''s owner reads or writes its draft.';
comment on policy "Service role manages drafts" on public.task_step_drafts is
'The service may do everything (it bypasses RLS; stated for clarity).';

select stepsync.attach_audit('public.task_step_drafts');

create or replace function public.is_stale(p_draft public.task_step_drafts)
returns boolean
language sql
stable
security invoker
set search_path = ''
as $$
    select p_draft.based_on_version <> stepsync.definition_version(p_draft.task_id)
$$;

comment on function public.is_stale(public.task_step_drafts) is
'Whether the live steps changed since the draft was based on them (then publishing it '
'needs p_force). PostgREST computed column: select=*,is_stale.';

revoke all on function public.is_stale(public.task_step_drafts) from public, anon;
grant execute on function public.is_stale(public.task_step_drafts)
to authenticated, service_role;

create or replace function public.save_task_steps_draft(p_task_id uuid, p_steps jsonb)
returns public.task_step_drafts
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    draft public.task_step_drafts;
begin
    -- The same lock as save_task_steps: the version recorded is the one of the steps as
    -- they are when the draft is saved.
    perform from public.agent_tasks as t where t.id = p_task_id for update;
    if not found then
        raise exception 'task % not found', p_task_id using errcode = 'P0002';
    end if;
    if jsonb_typeof(p_steps) = 'array' and jsonb_array_length(p_steps) > 50 then
        raise exception 'steps: a task has at most 50 steps (got %)', jsonb_array_length(p_steps)
            using errcode = '22023';
    end if;
    -- The form of the list, as save_task_steps reads it; its completeness is checked on
    -- publish.
    perform stepsync.parse_steps(p_task_id, p_steps, false);

    insert into public.task_step_drafts as d (task_id, steps, based_on_version, updated_by)
    values (p_task_id, p_steps, stepsync.definition_version(p_task_id), auth.uid())
    on conflict (task_id) do update
        set
            steps = excluded.steps,
            updated_at = now(),
            updated_by = excluded.updated_by
    returning d.* into draft;
    return draft;
end
$$;

comment on function public.save_task_steps_draft(uuid, jsonb) is
'Saves p_steps (a step list as save_task_steps takes it) as the task''s draft, leaving the '
'live steps alone; replaces an earlier draft but keeps the version it was based on. The '
'list''s form is checked (22023 naming steps[index].field), not its completeness '
'(validate_steps). Returns the draft.';

revoke all on function public.save_task_steps_draft(uuid, jsonb) from public, anon;
grant execute on function public.save_task_steps_draft(uuid, jsonb)
to authenticated, service_role;

create or replace function public.publish_task_steps_draft(
    p_task_id uuid, p_force boolean default false
)
returns setof public.task_steps
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    draft public.task_step_drafts;
begin
    perform from public.agent_tasks as t where t.id = p_task_id for update;
    if not found then
        raise exception 'task % not found', p_task_id using errcode = 'P0002';
    end if;
    select d.* into draft
    from public.task_step_drafts as d
    where d.task_id = p_task_id
    for update;
    if not found then
        raise exception 'task % has no draft', p_task_id
            using errcode = 'P0002',
            hint = 'Save one with save_task_steps_draft.';
    end if;
    if draft.based_on_version <> stepsync.definition_version(p_task_id)
        and not coalesce(p_force, false) then
        raise exception 'the draft of task % is out of date: its live steps changed after the '
        'draft was based on them', p_task_id
            using errcode = '55000',
            hint = 'Review the live steps, then discard the draft or publish it with '
            'p_force => true to replace them.';
    end if;

    -- One code path with a direct save: the same rules, errors and audit.
    return query select * from public.save_task_steps(p_task_id, draft.steps);
    delete from public.task_step_drafts as d where d.id = draft.id;
end
$$;

comment on function public.publish_task_steps_draft(uuid, boolean) is
'Makes the task''s draft its live steps through save_task_steps (same rules and errors, '
'all or nothing, audited) and removes the draft; returns the live steps. Refused (55000) '
'when the live steps changed after the draft was based on them, unless p_force.';

revoke all on function public.publish_task_steps_draft(uuid, boolean) from public, anon;
grant execute on function public.publish_task_steps_draft(uuid, boolean)
to authenticated, service_role;

create or replace function public.discard_task_steps_draft(p_task_id uuid)
returns boolean
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
    perform from public.agent_tasks as t where t.id = p_task_id;
    if not found then
        raise exception 'task % not found', p_task_id using errcode = 'P0002';
    end if;
    delete from public.task_step_drafts as d where d.task_id = p_task_id;
    return found;
end
$$;

comment on function public.discard_task_steps_draft(uuid) is
'Removes the task''s draft: true if there was one. The live steps stay as they are.';

revoke all on function public.discard_task_steps_draft(uuid) from public, anon;
grant execute on function public.discard_task_steps_draft(uuid) to authenticated, service_role;
