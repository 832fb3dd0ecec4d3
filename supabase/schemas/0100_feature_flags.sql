-- Feature flags for the gradual rollout of multi-step workflows.
--
-- A flag is on for a user when it is globally enabled, the user is not on its deny-list,
-- and the user is on its allow-list or a stable hash of the user id falls under its
-- rollout percentage (the same users stay in as the percentage grows). The deny-list lets
-- an operator hold individual users back without lowering the percentage for everyone.

create table if not exists stepsync.feature_flags (
    name text primary key check (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    enabled boolean not null default false,
    rollout_percent integer not null default 0 check (rollout_percent between 0 and 100),
    allow_list uuid[] not null default '{}',
    deny_list uuid[] not null default '{}',
    description text,
    updated_at timestamptz not null default now()
);

alter table stepsync.feature_flags enable row level security;
revoke all on stepsync.feature_flags from public, anon, authenticated;
grant all on stepsync.feature_flags to service_role;

create policy "Service role manages flags" on stepsync.feature_flags
for all to service_role using (true) with check (true);

insert into stepsync.feature_flags (name, enabled, rollout_percent, description)
values (
    'multi_step_workflows',
    true,
    100,
    'Run tasks as multi-step workflows (start_task_run and the sync service).'
)
on conflict (name) do nothing;

comment on table stepsync.feature_flags is
'Rollout switches: global on/off, a stable percentage of users, and an allow-list.';
comment on column stepsync.feature_flags.enabled is
'Global switch: off means the flag is off for everyone, allow-list included.';
comment on column stepsync.feature_flags.rollout_percent is
'Share of users (by a stable hash of their id) for whom the flag is on.';
comment on column stepsync.feature_flags.allow_list is
'Users for whom the flag is on regardless of the percentage.';
comment on column stepsync.feature_flags.deny_list is
'Users for whom the flag is off whatever the percentage or allow-list says.';

create or replace function stepsync.flag_enabled_for(p_flag text, p_user_id uuid)
returns boolean
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
    flag stepsync.feature_flags;
begin
    -- API users may ask about themselves only; the service (service_role or a direct
    -- database session without JWT claims) about anyone.
    if auth.role() in ('anon', 'authenticated') and p_user_id is distinct from auth.uid() then
        raise exception 'not allowed to read flags of another user'
            using errcode = '42501';
    end if;
    select * into flag from stepsync.feature_flags as f where f.name = p_flag;
    if not found or not flag.enabled or p_user_id = any(flag.deny_list) then
        return false;
    end if;
    return p_user_id = any(flag.allow_list)
        or (abs(hashtextextended(p_flag || ':' || p_user_id::text, 0)) % 100)
        < flag.rollout_percent;
end
$$;

revoke all on function stepsync.flag_enabled_for(text, uuid) from public;
grant execute on function stepsync.flag_enabled_for(text, uuid)
to authenticated, service_role;

comment on function stepsync.flag_enabled_for(text, uuid) is
'Whether flag p_flag is on for p_user_id: globally enabled, user not on the deny-list, and '
'on the allow-list or within the rollout percentage (stable hash). Callers may ask about '
'themselves only, the service role about anyone.';

-- Changing a rollout flag: functions for the service role instead of UPDATE statements.
--
-- `stepsync flags` (and any operator script) changes a flag through these four
-- functions. Each checks its input and names what is wrong (an unknown flag, a
-- percentage outside 0-100, a missing user id) instead of updating nothing or failing on
-- a check constraint, keeps the allow- and deny-lists from contradicting each other, stamps
-- updated_at, and returns the flag as it now is. They run with the caller's rights and
-- only the service role may execute them, as only it may write stepsync.feature_flags.

create or replace function stepsync.feature_flag_for_update(p_name text)
returns stepsync.feature_flags
language plpgsql
security invoker
set search_path = ''
as $$
declare
    flag stepsync.feature_flags;
    known text;
begin
    select * into flag from stepsync.feature_flags as f where f.name = p_name for update;
    if not found then
        select coalesce(string_agg(f.name, ', ' order by f.name), 'none')
            into known from stepsync.feature_flags as f;
        raise exception 'no flag named %', coalesce(quote_literal(p_name), 'null')
            using errcode = 'P0002', hint = 'known flags: ' || known;
    end if;
    return flag;
end
$$;

comment on function stepsync.feature_flag_for_update(text) is
'The flag named p_name, locked until the end of the transaction, or an error naming the '
'known flags: the check every flag change starts with, so a typo changes nothing.';

create or replace function stepsync.flag_user_ids(p_user_ids uuid[])
returns uuid[]
language plpgsql
immutable
security invoker
set search_path = ''
as $$
begin
    if coalesce(cardinality(p_user_ids), 0) = 0 then
        raise exception 'no user ids given' using errcode = '22023';
    end if;
    if array_position(p_user_ids, null) is not null then
        raise exception 'a user id is null' using errcode = '22023';
    end if;
    return p_user_ids;
end
$$;

comment on function stepsync.flag_user_ids(uuid[]) is
'p_user_ids, refused when empty or holding a null: a list edit with nobody in it is '
'a mistake in the caller, not a request to change nothing.';

create or replace function stepsync.set_feature_flag(
    p_name text,
    p_enabled boolean default null,
    p_rollout_percent integer default null
)
returns stepsync.feature_flags
language plpgsql
security invoker
set search_path = ''
as $$
declare
    flag stepsync.feature_flags := stepsync.feature_flag_for_update(p_name);
begin
    if p_rollout_percent not between 0 and 100 then
        raise exception 'rollout percent must be between 0 and 100, got %', p_rollout_percent
            using errcode = '22023';
    end if;
    update stepsync.feature_flags as f
    set
        enabled = coalesce(p_enabled, f.enabled),
        rollout_percent = coalesce(p_rollout_percent, f.rollout_percent),
        updated_at = now()
    where f.name = flag.name
    returning * into flag;
    return flag;
end
$$;

comment on function stepsync.set_feature_flag(text, boolean, integer) is
'Switch flag p_name on or off and/or set its rollout percentage (0-100); a null leaves '
'that part as it is. Returns the flag as it now is.';

create or replace function stepsync.allow_flag_users(p_name text, p_user_ids uuid[])
returns stepsync.feature_flags
language plpgsql
security invoker
set search_path = ''
as $$
declare
    flag stepsync.feature_flags := stepsync.feature_flag_for_update(p_name);
    users uuid[] := stepsync.flag_user_ids(p_user_ids);
begin
    update stepsync.feature_flags as f
    set
        allow_list = array(
            select distinct u.id from unnest(f.allow_list || users) as u (id) order by u.id
        ),
        deny_list = array(
            select d.id from unnest(f.deny_list) as d (id) where d.id <> all(users)
        ),
        updated_at = now()
    where f.name = flag.name
    returning * into flag;
    return flag;
end
$$;

comment on function stepsync.allow_flag_users(text, uuid[]) is
'Put the users on flag p_name''s allow-list and take them off its deny-list, so the two '
'lists never contradict each other. Idempotent. Returns the flag as it now is.';

create or replace function stepsync.deny_flag_users(p_name text, p_user_ids uuid[])
returns stepsync.feature_flags
language plpgsql
security invoker
set search_path = ''
as $$
declare
    flag stepsync.feature_flags := stepsync.feature_flag_for_update(p_name);
    users uuid[] := stepsync.flag_user_ids(p_user_ids);
begin
    update stepsync.feature_flags as f
    set
        deny_list = array(
            select distinct u.id from unnest(f.deny_list || users) as u (id) order by u.id
        ),
        allow_list = array(
            select a.id from unnest(f.allow_list) as a (id) where a.id <> all(users)
        ),
        updated_at = now()
    where f.name = flag.name
    returning * into flag;
    return flag;
end
$$;

comment on function stepsync.deny_flag_users(text, uuid[]) is
'Put the users on flag p_name''s deny-list (it wins over the allow-list and the '
'percentage) and take them off its allow-list. Idempotent. Returns the flag as it now is.';

create or replace function stepsync.remove_flag_users(
    p_name text, p_list text, p_user_ids uuid[]
)
returns stepsync.feature_flags
language plpgsql
security invoker
set search_path = ''
as $$
declare
    flag stepsync.feature_flags := stepsync.feature_flag_for_update(p_name);
    users uuid[] := stepsync.flag_user_ids(p_user_ids);
begin
    if p_list is null or p_list not in ('allow', 'deny') then
        raise exception 'p_list must be ''allow'' or ''deny'', got %',
            coalesce(quote_literal(p_list), 'null')
            using errcode = '22023';
    end if;
    update stepsync.feature_flags as f
    set
        allow_list = case
            when p_list = 'allow'
                then array(
                    select a.id from unnest(f.allow_list) as a (id) where a.id <> all(users)
                )
            else f.allow_list
        end,
        deny_list = case
            when p_list = 'deny'
                then array(
                    select d.id from unnest(f.deny_list) as d (id) where d.id <> all(users)
                )
            else f.deny_list
        end,
        updated_at = now()
    where f.name = flag.name
    returning * into flag;
    return flag;
end
$$;

comment on function stepsync.remove_flag_users(text, text, uuid[]) is
'Take the users off flag p_name''s allow-list (p_list = ''allow'') or deny-list '
'(''deny''); they then follow the percentage again. Users not on it are ignored. Returns '
'the flag as it now is.';

revoke all on function stepsync.feature_flag_for_update(text) from public, anon, authenticated;
revoke all on function stepsync.flag_user_ids(uuid[]) from public, anon, authenticated;
revoke all on function stepsync.set_feature_flag(text, boolean, integer)
from public, anon, authenticated;
revoke all on function stepsync.allow_flag_users(text, uuid[])
from public, anon, authenticated;
revoke all on function stepsync.deny_flag_users(text, uuid[])
from public, anon, authenticated;
revoke all on function stepsync.remove_flag_users(text, text, uuid[])
from public, anon, authenticated;

grant execute on function stepsync.feature_flag_for_update(text) to service_role;
grant execute on function stepsync.flag_user_ids(uuid[]) to service_role;
grant execute on function stepsync.set_feature_flag(text, boolean, integer) to service_role;
grant execute on function stepsync.allow_flag_users(text, uuid[]) to service_role;
grant execute on function stepsync.deny_flag_users(text, uuid[]) to service_role;
grant execute on function stepsync.remove_flag_users(text, text, uuid[]) to service_role;

-- What multi_step_workflows gates. Starting a run (start_task_run, and so the schedules
-- and events that start runs) checks it for the task's owner; runs already started finish
-- whatever the flag says later, since each step belongs to a run the user was allowed to
-- start. Saving a second live step is refused to API users outside the rollout, so a task
-- they cannot run as a workflow never becomes one. The UI asks
-- public.multi_step_workflows_enabled() whether to offer the step editor at all.

create or replace function public.multi_step_workflows_enabled()
returns boolean
language sql
stable
security invoker
set search_path = ''
as $$
    select coalesce(stepsync.flag_enabled_for('multi_step_workflows', auth.uid()), false)
$$;

comment on function public.multi_step_workflows_enabled() is
'Whether multi-step workflows are on for the signed-in user: the UI shows the step '
'editor and starts multi-step runs only then. The service role, which is no user, gets '
'false.';

revoke all on function public.multi_step_workflows_enabled() from public, anon;
grant execute on function public.multi_step_workflows_enabled() to authenticated, service_role;

create or replace function stepsync.refuse_multi_step_outside_rollout()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    -- The service and operators manage definitions for everyone (a backfill, a support
    -- fix); the rule is about what a user may build through the API.
    if new.deleted_at is not null or stepsync.caller_is_service() then
        return null;
    end if;
    if (
        select count(*) from public.task_steps as s
        where s.task_id = new.task_id and s.deleted_at is null
    ) > 1
    and not stepsync.flag_enabled_for(
        'multi_step_workflows',
        (select t.user_id from public.agent_tasks as t where t.id = new.task_id)
    ) then
        raise exception 'task % can have only one step: multi-step workflows are not enabled '
        'for its owner', new.task_id
            using errcode = '55000',
            hint = 'public.multi_step_workflows_enabled() says whether to offer the step '
            'editor.';
    end if;
    return null;
end
$$;

comment on function stepsync.refuse_multi_step_outside_rollout() is
'Constraint trigger: at commit, an API user outside the multi_step_workflows rollout has '
'not left a task with more than one live step (insert or restore); else the whole '
'transaction is refused.';

revoke all on function stepsync.refuse_multi_step_outside_rollout() from public;

-- Checked at commit, on the task as the transaction leaves it: replacing a task's one
-- step (insert the new one, then delete the old) passes through two live steps.
create constraint trigger task_steps_rollout
after insert or update of deleted_at on public.task_steps
deferrable initially deferred
for each row execute function stepsync.refuse_multi_step_outside_rollout();

comment on trigger task_steps_rollout on public.task_steps is
'Outside the multi_step_workflows rollout, a task keeps at most one live step.';
