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
