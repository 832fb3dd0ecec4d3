-- Events: public.emit_task_event starts a run of every active event-based task of that
-- event type whose filters match, for the owners in the multi_step_workflows rollout.
--
-- The legacy rule, kept: a task matches when every key of its
-- event_trigger_config.filters equals the event's value for that key (JSON equality; no
-- filters, or filters that are not an object, match every event of the type); a task
-- that reached max_executions is completed instead of run. Each started run has
-- trigger_type 'event' and the event data as trigger_data.
--
-- The function runs with the caller's rights: a signed-in user reaches only their own
-- tasks (the agent_tasks policies), the service role every user's. Owners outside the
-- rollout are the legacy executor's: their matching tasks are reported, not run, so the
-- app may send each event to both during the rollout and every task runs once.
--
-- An idempotency key makes a retry safe: the same key (per signed-in user, or for the
-- service role) never starts a task twice; the retry gets the first emission's outcome
-- back. Every emission is kept in public.task_events, which owners read for their own.

create index if not exists agent_tasks_event_idx
on public.agent_tasks (event_trigger_type)
where task_type = 'event_based' and status = 'active';

comment on index public.agent_tasks_event_idx is
'Active event-based tasks by event type: the tasks an event may start.';

create table if not exists public.task_events (
    id uuid primary key default gen_random_uuid(),
    -- Whose event: the signed-in emitter, null when the service emitted it for anyone.
    user_id uuid references auth.users (id) on delete cascade,
    event_type public.event_trigger_type_enum not null,
    event_data jsonb not null,
    idempotency_key text,
    results jsonb not null default '[]'::jsonb,
    emitted_at timestamptz not null default now(),
    emitted_by_role text not null default current_user,
    constraint task_events_data_is_object check (jsonb_typeof(event_data) = 'object'),
    constraint task_events_key_length check (length(idempotency_key) between 1 and 200),
    constraint task_events_results_is_array check (jsonb_typeof(results) = 'array')
);

create unique index if not exists task_events_idempotency_idx
on public.task_events (idempotency_key, user_id) nulls not distinct
where idempotency_key is not null;

create index if not exists task_events_user_id_idx on public.task_events (user_id);

alter table public.task_events enable row level security;

revoke all on public.task_events from anon;
revoke update, delete, truncate, references, trigger on public.task_events from authenticated;
grant select, insert on public.task_events to authenticated;
grant all on public.task_events to service_role;

create policy "Owners read their events" on public.task_events
for select to authenticated
using (user_id = (select auth.uid()));

create policy "Owners record their events" on public.task_events
for insert to authenticated
with check (user_id = (select auth.uid()));

create policy "Service role records events" on public.task_events
for all to service_role
using (true) with check (true);

comment on table public.task_events is
'Every event emitted through emit_task_event, with its idempotency key and what it did to '
'each matching task (results: task_id, run_id, outcome, detail).';
comment on column public.task_events.id is 'Event id.';
comment on column public.task_events.user_id is
'The signed-in user who emitted it (their tasks only); null when the service role did.';
comment on column public.task_events.event_type is 'The event type (legacy enum).';
comment on column public.task_events.event_data is
'The event''s data, given to each started run as its trigger_data.';
comment on column public.task_events.idempotency_key is
'Unique per emitter: an emission with a key already used starts nothing.';
comment on column public.task_events.results is
'Per matching task: {task_id, run_id, outcome, detail}.';
comment on column public.task_events.emitted_at is 'When it was emitted.';
comment on column public.task_events.emitted_by_role is
'Database role of the emitter (authenticated, service_role, ...).';
comment on constraint task_events_data_is_object on public.task_events is
'Event data is a JSON object (its keys are what filters compare).';
comment on constraint task_events_key_length on public.task_events is
'An idempotency key is 1 to 200 characters.';
comment on constraint task_events_results_is_array on public.task_events is
'One result per matching task.';
comment on index public.task_events_idempotency_idx is
'One emission per idempotency key and emitter (the service role''s keys share null).';
comment on index public.task_events_user_id_idx is
'Serves the owners'' read policy and the cascade from auth.users.';
comment on policy "Owners read their events" on public.task_events is
'Signed-in users see the events they emitted.';
comment on policy "Owners record their events" on public.task_events is
'emit_task_event, running with the caller''s rights, records the caller''s own events.';
comment on policy "Service role records events" on public.task_events is
'The service role emits for anyone (it bypasses RLS; stated for clarity).';

create or replace function public.emit_task_event(
    p_event_type text,
    p_event_data jsonb,
    p_idempotency_key text default null
)
returns table (task_id uuid, run_id uuid, outcome text, detail text)
language plpgsql
volatile
security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    emitter uuid;
    known_type public.event_trigger_type_enum;
    earlier public.task_events;
    matching record;
    results jsonb := '[]'::jsonb;
begin
    if p_event_type is null
        or p_event_type not in (
            select e::text from unnest(enum_range(null::public.event_trigger_type_enum)) as e
        ) then
        raise exception 'unknown event type %', coalesce(quote_literal(p_event_type), 'null')
            using errcode = '22023',
            hint = 'Known event types: ' || array_to_string(
                enum_range(null::public.event_trigger_type_enum)::text[], ', '
            ) || '.';
    end if;
    known_type := p_event_type::public.event_trigger_type_enum;
    if p_event_data is null or jsonb_typeof(p_event_data) <> 'object' then
        raise exception 'event data must be a JSON object, not %',
            coalesce(jsonb_typeof(p_event_data), 'null')
            using errcode = '22023';
    end if;
    if p_idempotency_key is not null
        and (btrim(p_idempotency_key) = '' or length(p_idempotency_key) > 200) then
        raise exception 'idempotency key must be 1 to 200 characters and not blank'
            using errcode = '22023';
    end if;
    if current_setting('role', true) = 'authenticated' then
        emitter := auth.uid();
        if emitter is null then
            raise exception 'a signed-in user is required' using errcode = '42501';
        end if;
    end if;

    if p_idempotency_key is not null then
        -- One emission per key at a time: a concurrent retry waits here, then finds this
        -- one's row (a transaction-level lock, so poolers are fine).
        perform pg_advisory_xact_lock(
            hashtextextended(
                'stepsync.task_events:' || coalesce(emitter::text, '') || ':'
                || p_idempotency_key,
                0
            )
        );
        select e.* into earlier
        from public.task_events as e
        where e.idempotency_key = p_idempotency_key and e.user_id is not distinct from emitter;
        if found then
            if earlier.event_type <> known_type or earlier.event_data <> p_event_data then
                raise exception 'idempotency key % was already used for another event '
                    '(% at %)', quote_literal(p_idempotency_key), earlier.event_type,
                    earlier.emitted_at
                    using errcode = '22023',
                    hint = 'Use a new key for a new event.';
            end if;
            return query
            select
                (r.result ->> 'task_id')::uuid,
                (r.result ->> 'run_id')::uuid,
                'duplicate'::text,
                format(
                    'already emitted at %s (%s)', earlier.emitted_at, r.result ->> 'outcome'
                )
            from jsonb_array_elements(earlier.results) as r (result);
            return;
        end if;
    end if;

    -- The caller's rights decide which tasks exist: RLS shows a user their own.
    for matching in
        select t.id, t.user_id, t.max_executions, t.total_executions
        from public.agent_tasks as t
        where
            t.task_type = 'event_based'
            and t.status = 'active'
            and t.event_trigger_type = known_type
            and (
                jsonb_typeof(t.event_trigger_config -> 'filters') is distinct from 'object'
                or not exists (
                    select
                    from jsonb_each(t.event_trigger_config -> 'filters') as f (key, value)
                    where (p_event_data -> f.key) is distinct from f.value
                )
            )
        order by t.id
    loop
        task_id := matching.id;
        run_id := null;
        detail := null;
        if not stepsync.flag_enabled_for('multi_step_workflows', matching.user_id) then
            outcome := 'legacy';
            detail := 'owner not in the multi_step_workflows rollout: the legacy '
                || 'task-executor runs this task';
        elsif coalesce(matching.max_executions, 0) > 0
            and matching.total_executions >= matching.max_executions then
            update public.agent_tasks as t
            set status = 'completed', updated_at = now()
            where t.id = matching.id;
            outcome := 'completed';
            detail := format('max_executions (%s) reached', matching.max_executions);
        else
            begin
                run_id := stepsync.start_task_run(matching.id, 'event', p_event_data);
                outcome := 'started';
            exception
                when invalid_parameter_value
                    or object_not_in_prerequisite_state
                    or no_data_found then
                outcome := 'refused';
                detail := sqlerrm;
            end;
        end if;
        results := results || jsonb_build_object(
            'task_id', task_id, 'run_id', run_id, 'outcome', outcome, 'detail', detail
        );
        return next;
    end loop;

    insert into public.task_events (
        user_id, event_type, event_data, idempotency_key, results
    )
    values (emitter, known_type, p_event_data, p_idempotency_key, results);
end
$$;

comment on function public.emit_task_event(text, jsonb, text) is
'Emits an event: every active event-based task of type p_event_type whose filters match '
'p_event_data starts a run (trigger_type event, trigger_data = the data), for the owners '
'in the multi_step_workflows rollout; one row per matching task: started (run_id), '
'completed (max_executions reached), refused (invalid steps, detail says why), legacy '
'(owner not in the rollout: the legacy executor runs it) or duplicate (the idempotency '
'key was used before: nothing starts again). A signed-in user reaches their own tasks, '
'the service role everyone''s. Unknown types and non-object data are refused.';

revoke all on function public.emit_task_event(text, jsonb, text) from public, anon;
grant execute on function public.emit_task_event(text, jsonb, text)
to authenticated, service_role;
