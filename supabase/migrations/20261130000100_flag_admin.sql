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
