-- Feature flags: a deny-list beside the allow-list, so an operator can hold individual
-- users back from a rollout (say, while their support ticket is open) without lowering
-- the percentage for everyone.

alter table stepsync.feature_flags
add column if not exists deny_list uuid[] not null default '{}';

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

comment on function stepsync.flag_enabled_for(text, uuid) is
'Whether flag p_flag is on for p_user_id: globally enabled, user not on the deny-list, and '
'on the allow-list or within the rollout percentage (stable hash). Callers may ask about '
'themselves only, the service role about anyone.';
