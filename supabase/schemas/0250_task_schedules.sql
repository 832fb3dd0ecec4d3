-- Schedules: the service starts a scheduled task's runs at its fire times.
--
-- A task's next fire time is agent_tasks.next_run_at, the column the app shows and the
-- legacy task-executor reads: whoever fires a task advances it, in the transaction that
-- fires it. The cron arithmetic (a 5-field expression in the task's IANA time zone,
-- across daylight-saving changes) is done in one place, the service (sync/cron.py); the
-- rules that must hold however many workers run are here:
--
-- * claim_due_schedules locks the due tasks of users in the multi_step_workflows rollout
--   (FOR UPDATE SKIP LOCKED on the due-time index), so two workers never hold one task;
-- * fire_schedules, in the same transaction, applies the legacy rules (max_executions
--   reached or end_date passed: the task is completed; paused tasks are never due),
--   starts one run for the due fire time, records the decision in task_schedule_fires
--   (one row per task and fire time: its primary key) and moves next_run_at on.
--
-- Missed fire times (the service was down) start one run, for the latest of them; the
-- run's trigger_data says how many were missed. A fire time that comes while the task's
-- previous run is still running is skipped and recorded, not queued: a slow task does not
-- pile up runs.
--
-- Cron expressions and time zones are checked when a task is written, by whoever writes
-- it (the app through PostgREST, the legacy functions), with an error naming the field.

create or replace function stepsync.cron_field_value(p_field integer, p_text text)
returns integer
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    lows constant integer[] := array[0, 0, 1, 1, 0];
    highs constant integer[] := array[59, 23, 31, 12, 7];
    months constant text[] := array[
        'JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'
    ];
    days constant text[] := array['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];
    parsed integer;
begin
    if p_field = 4 and p_text = any(months) then
        return array_position(months, p_text);
    end if;
    if p_field = 5 and p_text = any(days) then
        return array_position(days, p_text) - 1;
    end if;
    if p_text !~ '^[0-9]{1,9}$' then
        return null;
    end if;
    parsed := p_text::integer;
    if parsed not between lows[p_field] and highs[p_field] then
        return null;
    end if;
    return parsed;
end
$$;

comment on function stepsync.cron_field_value(integer, text) is
'The value of one cron field item (1 minute, 2 hour, 3 day of month, 4 month, 5 day of '
'week): a number in the field''s range or, for months and days of the week, a three-letter '
'English name in capitals; null when it is neither.';

revoke all on function stepsync.cron_field_value(integer, text) from public;
grant execute on function stepsync.cron_field_value(integer, text) to service_role;

create or replace function stepsync.cron_problem(p_expression text)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    field_names constant text[] := array[
        'minute', 'hour', 'day of month', 'month', 'day of week'
    ];
    allowed constant text[] := array[
        '0-59', '0-23', '1-31', '1-12 or JAN-DEC', '0-7 or SUN-SAT (0 and 7 are Sunday)'
    ];
    highs constant integer[] := array[59, 23, 31, 12, 7];
    lows constant integer[] := array[0, 0, 1, 1, 0];
    month_days constant integer[] := array[31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    body text;
    fields text[];
    field_number integer;
    term text;
    range_text text;
    step_text text;
    low integer;
    high integer;
    step integer;
    first_day integer := 32;
    months integer[] := '{}';
begin
    if p_expression is null then
        return null;
    end if;
    -- What follows " #" is the app's own note on the schedule (the legacy executor strips
    -- it too). Names count in any case, as in cron.
    body := btrim(regexp_replace(p_expression, '\s#(\s.*)?$', ''), e' \t\r\n\f\v');
    if body = '' then
        return 'is empty';
    end if;
    fields := regexp_split_to_array(body, '\s+');
    if cardinality(fields) <> 5 then
        return format('has %s fields, not 5', cardinality(fields));
    end if;
    for field_number in 1..5 loop
        foreach term in array string_to_array(fields[field_number], ',') loop
            range_text := split_part(term, '/', 1);
            step := 1;
            if strpos(term, '/') > 0 then
                step_text := substr(term, strpos(term, '/') + 1);
                if step_text !~ '^[0-9]{1,9}$' or step_text::integer = 0 then
                    return format(
                        '%s: the step in %L must be a whole number from 1',
                        field_names[field_number], term
                    );
                end if;
                step := step_text::integer;
            end if;
            if range_text = '*' then
                low := lows[field_number];
                high := highs[field_number];
            elsif strpos(range_text, '-') > 0 then
                low := stepsync.cron_field_value(
                    field_number, upper(split_part(range_text, '-', 1))
                );
                high := stepsync.cron_field_value(
                    field_number, upper(substr(range_text, strpos(range_text, '-') + 1))
                );
                if low is null or high is null then
                    return format(
                        '%s: %L is not a range of values (%s)',
                        field_names[field_number], term, allowed[field_number]
                    );
                end if;
                if high < low then
                    return format(
                        '%s: the range %L runs backwards', field_names[field_number], term
                    );
                end if;
            else
                low := stepsync.cron_field_value(field_number, upper(range_text));
                if low is null then
                    return format(
                        '%s: %L is not a value (%s), *, a range a-b, a step */n or a list',
                        field_names[field_number], term, allowed[field_number]
                    );
                end if;
                -- A single value with a step counts on to the end of the field (5/15).
                high := case when strpos(term, '/') > 0 then highs[field_number] else low end;
            end if;
            if field_number = 3 then
                first_day := least(first_day, low);
            elsif field_number = 4 then
                months := months || array(select generate_series(low, high, step));
            end if;
        end loop;
    end loop;
    -- Cron matches a day when both day fields match if either starts with *, else when
    -- either does; with both to match, a day that no month given has never comes.
    if first_day > 29
        and (fields[3] like '*%' or fields[5] like '*%')
        and first_day > (select max(month_days[m.month]) from unnest(months) as m (month)) then
        return format(
            'day of month: day %s never comes in month(s) %s', first_day, fields[4]
        );
    end if;
    return null;
end
$$;

comment on function stepsync.cron_problem(text) is
'What is wrong with a 5-field cron expression (minute hour day-of-month month '
'day-of-week: numbers, *, ranges a-b, steps */n and a-b/n, lists, JAN-DEC and SUN-SAT; '
'a note may follow " # "), or null when it is valid or null. The service computes the fire '
'times of an expression this accepts (sync/cron.py).';

revoke all on function stepsync.cron_problem(text) from public;
grant execute on function stepsync.cron_problem(text) to service_role;

-- The time zone database's names, read once here: pg_timezone_names reads every zone file
-- (tens of milliseconds), too slow to check each task written. A zone added since (a newer
-- tzdata under a later PostgreSQL) is still found there, the slow way.
create table if not exists stepsync.time_zone_names (
    name text primary key
);

alter table stepsync.time_zone_names enable row level security;
revoke all on stepsync.time_zone_names from public, anon, authenticated;
grant select on stepsync.time_zone_names to service_role;

create policy "Service role reads time zone names" on stepsync.time_zone_names
for select to service_role
using (true);

insert into stepsync.time_zone_names (name)
select z.name from pg_catalog.pg_timezone_names as z
on conflict (name) do nothing;

comment on table stepsync.time_zone_names is
'Names of the time zone database as PostgreSQL knew them when stepsync was installed: the '
'fast path of time_zone_problem.';
comment on column stepsync.time_zone_names.name is 'An IANA time zone name, e.g. Europe/Paris.';
comment on policy "Service role reads time zone names" on stepsync.time_zone_names is
'The service may read the list (the checks run with their owner''s rights).';

create or replace function stepsync.time_zone_problem(p_zone text)
returns text
language plpgsql
stable
set search_path = ''
as $$
begin
    if exists (select from stepsync.time_zone_names as z where z.name = p_zone)
        or exists (select from pg_catalog.pg_timezone_names as z where z.name = p_zone) then
        return null;
    end if;
    return format(
        'unknown time zone %s: use an IANA name such as Europe/Paris or America/New_York',
        coalesce(quote_literal(p_zone), 'null')
    );
end
$$;

comment on function stepsync.time_zone_problem(text) is
'What is wrong with an IANA time zone name (unknown, or spelt another way: abbreviations '
'such as PST and POSIX offsets such as UTC+5 do not follow daylight-saving rules), or '
'null when it names a zone of the time zone database.';

revoke all on function stepsync.time_zone_problem(text) from public;
grant execute on function stepsync.time_zone_problem(text) to service_role;

create or replace function stepsync.check_task_schedule()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    problem text;
begin
    if tg_op = 'UPDATE'
        and new.cron_expression is not distinct from old.cron_expression
        and new.timezone is not distinct from old.timezone
        and new.task_type = old.task_type then
        return new;
    end if;
    problem := stepsync.cron_problem(new.cron_expression);
    if problem is not null then
        raise exception 'cron_expression % %', quote_literal(new.cron_expression), problem
            using errcode = '22023',
            hint = 'Five fields: minute hour day-of-month month day-of-week, e.g. '
            || '"0 9 * * 1-5" (09:00 on weekdays) or "*/15 * * * *".';
    end if;
    problem := stepsync.time_zone_problem(new.timezone);
    if problem is not null then
        raise exception 'timezone: %', problem using errcode = '22023';
    end if;
    return new;
end
$$;

comment on function stepsync.check_task_schedule() is
'Trigger: a scheduled task''s cron_expression and timezone must be valid (clear errors '
'naming the field), checked when they are written. SECURITY DEFINER so that any writer '
'(an owner through the API) can use the checks, which nobody else may call.';

revoke all on function stepsync.check_task_schedule() from public;

create or replace trigger agent_tasks_check_schedule
before insert or update of cron_expression, timezone, task_type on public.agent_tasks
for each row
when (new.task_type = 'scheduled')
execute function stepsync.check_task_schedule();

comment on trigger agent_tasks_check_schedule on public.agent_tasks is
'Refuses an invalid cron expression or time zone on a scheduled task, whoever writes it.';

-- The due tasks in due order (the service's claim, and the legacy executor's own query),
-- and the scheduled tasks that have no next run yet.
create index if not exists agent_tasks_due_idx
on public.agent_tasks (next_run_at)
where task_type = 'scheduled' and status = 'active';

create index if not exists agent_tasks_unarmed_idx
on public.agent_tasks (id)
where task_type = 'scheduled' and status = 'active' and next_run_at is null
and cron_expression is not null;

comment on index public.agent_tasks_due_idx is
'Active scheduled tasks by next fire time: claim_due_schedules walks it in due order.';
comment on index public.agent_tasks_unarmed_idx is
'Active scheduled tasks with a cron expression but no next fire time yet.';

create table if not exists public.task_schedule_fires (
    task_id uuid not null references public.agent_tasks (id) on delete cascade,
    fire_at timestamptz not null,
    -- Copied from the task for RLS without a join.
    user_id uuid not null,
    outcome text not null,
    -- A plain reference: history outlives a purged run.
    run_id uuid,
    missed_fire_times integer not null default 0,
    detail text,
    decided_at timestamptz not null default now(),
    decided_by text,
    constraint task_schedule_fires_pkey primary key (task_id, fire_at),
    constraint task_schedule_fires_outcome_check check (
        outcome in ('started', 'skipped', 'already_run', 'completed', 'refused')
    ),
    constraint task_schedule_fires_missed_check check (missed_fire_times >= 0),
    constraint task_schedule_fires_run_check check (
        (outcome in ('started', 'already_run')) = (run_id is not null)
    )
);

create index if not exists task_schedule_fires_user_id_idx
on public.task_schedule_fires (user_id);

alter table public.task_schedule_fires enable row level security;

revoke all on public.task_schedule_fires from anon;
revoke insert, update, delete, truncate, references, trigger on public.task_schedule_fires
from authenticated;
grant select on public.task_schedule_fires to authenticated;
grant all on public.task_schedule_fires to service_role;

create policy "Owners read the fire times of their tasks" on public.task_schedule_fires
for select to authenticated
using (user_id = (select auth.uid()));

create policy "Service role records fire times" on public.task_schedule_fires
for all to service_role
using (true) with check (true);

comment on table public.task_schedule_fires is
'What became of each fire time of a scheduled task: a run started, skipped because the '
'previous run was still running, already run by the legacy executor, the task completed '
'(max_executions, end_date), or the run refused (invalid steps). One row per task and '
'fire time, so no fire time runs twice.';
comment on column public.task_schedule_fires.task_id is 'The scheduled task.';
comment on column public.task_schedule_fires.fire_at is
'The fire time decided on (for a catch-up after downtime, the latest missed one).';
comment on column public.task_schedule_fires.user_id is 'Owner of the task (RLS).';
comment on column public.task_schedule_fires.outcome is
'started | skipped | already_run | completed | refused.';
comment on column public.task_schedule_fires.run_id is
'The run started for this fire time, or (already_run) the legacy executor''s run.';
comment on column public.task_schedule_fires.missed_fire_times is
'Earlier fire times that passed without a run (downtime) and that this decision covers.';
comment on column public.task_schedule_fires.detail is
'Why: the run still running, the limit reached, the error refusing the run.';
comment on column public.task_schedule_fires.decided_at is 'When the service decided.';
comment on column public.task_schedule_fires.decided_by is 'The worker that decided.';
comment on constraint task_schedule_fires_outcome_check on public.task_schedule_fires is
'The five outcomes of a fire time.';
comment on constraint task_schedule_fires_missed_check on public.task_schedule_fires is
'A count of fire times.';
comment on constraint task_schedule_fires_run_check on public.task_schedule_fires is
'A started or already run fire time names its run; no other outcome does.';
comment on index public.task_schedule_fires_user_id_idx is
'Serves the owners'' read policy and the cascade from a deleted user''s tasks.';
comment on policy "Owners read the fire times of their tasks" on public.task_schedule_fires is
'Owners see what became of their own tasks'' fire times.';
comment on policy "Service role records fire times" on public.task_schedule_fires is
'The service records every fire time it decides (it bypasses RLS; stated for clarity).';

create type stepsync.due_schedule as (
    task_id uuid,
    user_id uuid,
    cron_expression text,
    timezone text,
    next_run_at timestamptz,
    start_date timestamptz,
    end_date timestamptz
);

comment on type stepsync.due_schedule is
'A scheduled task claimed by claim_due_schedules: what the service needs to compute its '
'fire times (cron_expression in timezone, from next_run_at, within start_date).';

revoke all on type stepsync.due_schedule from public;
grant usage on type stepsync.due_schedule to service_role;

create or replace function stepsync.claim_due_schedules(p_now timestamptz, p_limit integer)
returns setof stepsync.due_schedule
language plpgsql
volatile
-- Only the due-time index's ordered walk: a plan kept from a small table never turns
-- into a scan of every task.
set enable_seqscan = off
set enable_bitmapscan = off
set search_path = ''
as $$
declare
    claimed integer;
begin
    if p_now is null then
        raise exception 'now must be given' using errcode = '22023';
    end if;
    if p_limit is null or p_limit not between 1 and 1000 then
        raise exception 'limit must be between 1 and 1000, not %', p_limit
            using errcode = '22023';
    end if;

    -- Due tasks of users in the rollout, oldest fire time first, skipping tasks another
    -- worker holds. Tasks of other users are the legacy executor's, and stay unlocked.
    return query
    select
        t.id, t.user_id, t.cron_expression, t.timezone, t.next_run_at, t.start_date,
        t.end_date
    from public.agent_tasks as t
    where
        t.task_type = 'scheduled'
        and t.status = 'active'
        and t.next_run_at <= p_now
        and stepsync.flag_enabled_for('multi_step_workflows', t.user_id)
    order by t.next_run_at
    limit p_limit
    for no key update skip locked;
    get diagnostics claimed = row_count;

    -- Then tasks that have a cron expression but no next fire time yet.
    if claimed < p_limit then
        return query
        select
            t.id, t.user_id, t.cron_expression, t.timezone, t.next_run_at, t.start_date,
            t.end_date
        from public.agent_tasks as t
        where
            t.task_type = 'scheduled'
            and t.status = 'active'
            and t.next_run_at is null
            and t.cron_expression is not null
            and stepsync.flag_enabled_for('multi_step_workflows', t.user_id)
        order by t.id
        limit p_limit - claimed
        for no key update skip locked;
    end if;
end
$$;

comment on function stepsync.claim_due_schedules(timestamptz, integer) is
'Locks (FOR NO KEY UPDATE SKIP LOCKED) and returns up to p_limit active scheduled tasks of '
'users in the multi_step_workflows rollout that are due at p_now (next_run_at <= p_now), '
'oldest first, then ones with a cron expression and no next_run_at. The caller computes '
'their fire times and calls fire_schedules in the same transaction. Service only.';

revoke all on function stepsync.claim_due_schedules(timestamptz, integer)
from public, anon, authenticated;
grant execute on function stepsync.claim_due_schedules(timestamptz, integer) to service_role;

create or replace function stepsync.fire_schedules(
    p_now timestamptz,
    p_worker text,
    p_task_ids uuid[],
    p_due_ats timestamptz[],
    p_fire_ats timestamptz[],
    p_next_run_ats timestamptz[],
    p_missed integer[],
    p_details jsonb[]
)
returns table (task_id uuid, fire_at timestamptz, outcome text, run_id uuid, detail text)
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
#variable_conflict use_column
declare
    plan record;
    task public.agent_tasks;
    latest record;
    advancing uuid[] := '{}';
    advance_to timestamptz[] := '{}';
    completing uuid[] := '{}';
    recorded_tasks uuid[] := '{}';
    recorded_times timestamptz[] := '{}';
    recorded_outcomes text[] := '{}';
    recorded_runs uuid[] := '{}';
    recorded_missed integer[] := '{}';
    recorded_details text[] := '{}';
    recorded_owners uuid[] := '{}';
begin
    if p_now is null then
        raise exception 'now must be given' using errcode = '22023';
    end if;
    if cardinality(p_task_ids) is distinct from cardinality(p_due_ats)
        or cardinality(p_task_ids) is distinct from cardinality(p_fire_ats)
        or cardinality(p_task_ids) is distinct from cardinality(p_next_run_ats)
        or cardinality(p_task_ids) is distinct from cardinality(p_missed)
        or cardinality(p_task_ids) is distinct from cardinality(p_details) then
        raise exception 'the plan arrays must all have one element per task'
            using errcode = '22023';
    end if;

    for plan in
        select p.*
        from unnest(
            p_task_ids, p_due_ats, p_fire_ats, p_next_run_ats, p_missed, p_details
        ) as p (task_id, due_at, fire_at, next_run_at, missed, details)
        order by p.task_id
    loop
        -- The caller holds the task (claim_due_schedules); a plan made for the task as
        -- it was no longer holds once it changed, and the next claim sees it anew.
        select t.* into task
        from public.agent_tasks as t
        where t.id = plan.task_id
        for no key update;
        if not found
            or task.task_type <> 'scheduled'
            or task.status <> 'active'
            or task.next_run_at is distinct from plan.due_at then
            continue;
        end if;

        task_id := task.id;
        fire_at := coalesce(plan.fire_at, plan.due_at);
        run_id := null;
        detail := null;
        outcome := null;
        if plan.due_at is not null
            and coalesce(task.max_executions, 0) > 0
            and task.total_executions >= task.max_executions then
            -- The legacy rules: a task that reached its limit or its end date is completed
            -- when it next comes due (max_executions 0 means no limit there too).
            outcome := 'completed';
            detail := format('max_executions (%s) reached', task.max_executions);
            completing := completing || task.id;
        elsif plan.due_at is not null and task.end_date < p_now then
            outcome := 'completed';
            detail := format('end_date (%s) passed', task.end_date);
            completing := completing || task.id;
        elsif plan.fire_at is null then
            -- Nothing fires now (first fire time still ahead, or before start_date).
            advancing := advancing || task.id;
            advance_to := advance_to || plan.next_run_at;
            continue;
        else
            advancing := advancing || task.id;
            advance_to := advance_to || plan.next_run_at;
            select
                r.id, r.status, r.step_count, r.trigger_type,
                coalesce(r.started_at, r.created_at) as started_at
            into latest
            from public.agent_task_executions as r
            where r.task_id = task.id
            order by r.created_at desc
            limit 1;
            if exists (
                select from public.task_schedule_fires as f
                where f.task_id = task.id and f.fire_at = plan.fire_at
            ) then
                -- Decided before (next_run_at was set back): never twice.
                continue;
            elsif latest.status in ('pending', 'running')
                -- A legacy run still "running" after 15 minutes died with its Edge
                -- Function (their wall-clock limit is a few minutes).
                and (latest.step_count > 0 or latest.started_at > p_now - interval '15 minutes') then
                outcome := 'skipped';
                detail := format('previous run %s still running', latest.id);
            elsif latest.step_count = 0
                and latest.trigger_type = 'scheduled'
                and latest.started_at >= plan.due_at then
                -- The legacy executor ran this fire time (before the owner joined the
                -- rollout, or before it saw them join).
                outcome := 'already_run';
                run_id := latest.id;
                detail := 'run by the legacy task-executor';
            else
                begin
                    run_id := stepsync.start_task_run(
                        task.id,
                        'scheduled',
                        jsonb_build_object(
                            'fire_at', plan.fire_at, 'missed_fire_times', plan.missed
                        ) || coalesce(plan.details, '{}'::jsonb)
                    );
                    outcome := 'started';
                    if plan.missed > 0 then
                        detail := format('%s earlier fire time(s) missed', plan.missed);
                    end if;
                exception
                    when invalid_parameter_value
                        or object_not_in_prerequisite_state
                        or no_data_found then
                    outcome := 'refused';
                    detail := sqlerrm;
                end;
            end if;
        end if;

        recorded_tasks := recorded_tasks || task.id;
        recorded_times := recorded_times || fire_at;
        recorded_outcomes := recorded_outcomes || outcome;
        recorded_runs := recorded_runs || run_id;
        recorded_missed := recorded_missed || coalesce(plan.missed, 0);
        recorded_details := recorded_details || detail;
        recorded_owners := recorded_owners || task.user_id;
        return next;
    end loop;

    -- One statement per write for the whole batch (each is audited per statement).
    insert into public.task_schedule_fires (
        task_id, fire_at, user_id, outcome, run_id, missed_fire_times, detail, decided_by
    )
    select d.task_id, d.fire_at, d.user_id, d.outcome, d.run_id, d.missed, d.detail, p_worker
    from unnest(
        recorded_tasks, recorded_times, recorded_owners, recorded_outcomes, recorded_runs,
        recorded_missed, recorded_details
    ) as d (task_id, fire_at, user_id, outcome, run_id, missed, detail)
    -- A fire time already decided (next_run_at set back by hand) keeps its first decision.
    on conflict (task_id, fire_at) do nothing;

    update public.agent_tasks as t
    set next_run_at = a.next_run_at, updated_at = now()
    from unnest(advancing, advance_to) as a (id, next_run_at)
    where
        t.id = any(advancing)
        and t.id = a.id
        and t.next_run_at is distinct from a.next_run_at;

    update public.agent_tasks as t
    set status = 'completed', updated_at = now()
    where t.id = any(completing);
end
$$;

comment on function stepsync.fire_schedules(
    timestamptz, text, uuid[], timestamptz[], timestamptz[], timestamptz[], integer[],
    jsonb[]
) is
'Acts on tasks claimed by claim_due_schedules in this transaction, one plan per task '
'(due_at: the next_run_at the plan was made from; fire_at: the fire time to run now, null '
'for none; next_run_at: the fire time after it; missed: earlier fire times passed without a '
'run; details: more for the run''s trigger_data). A task at its max_executions or past its '
'end_date is completed; a fire time while the previous run is still running is skipped; '
'one the legacy executor ran is not run again; otherwise one run starts (trigger_type '
'scheduled, trigger_data with fire_at and missed_fire_times). Each decision is recorded in '
'task_schedule_fires and next_run_at moves on. Returns the decisions. Service only.';

revoke all on function stepsync.fire_schedules(
    timestamptz, text, uuid[], timestamptz[], timestamptz[], timestamptz[], integer[],
    jsonb[]
) from public, anon, authenticated;
grant execute on function stepsync.fire_schedules(
    timestamptz, text, uuid[], timestamptz[], timestamptz[], timestamptz[], integer[],
    jsonb[]
) to service_role;
