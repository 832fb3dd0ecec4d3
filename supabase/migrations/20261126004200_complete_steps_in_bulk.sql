-- Completing several steps in one call, and handing each run's next step to the worker
-- that completed the one before (service only).
--
-- A worker running many steps at once finishes several of them within a millisecond or
-- two. complete_steps records all of them in one transaction: one round trip and one
-- commit instead of one each, and one set-based UPDATE of the step rows. Each step is
-- still fenced by its own lease token, and each run still moves on (next step queued or
-- handed off, or run finished) in the same transaction that completes its step.
--
-- Hand-off: the worker that completed step N has a free slot and is the one most likely
-- to want step N + 1. With p_worker given, a next step that is plainly due (pending, no
-- skip_if) is leased to that worker at once (lease_steps) instead of being queued,
-- announced and claimed: one step update fewer, no notification, no claim round trip,
-- and the step starts as soon as the completion commits.
--
-- complete_step, the single-step form, becomes a call of complete_steps so that both
-- follow one code path.

create or replace function stepsync.complete_steps(
    p_step_execution_ids uuid[],
    p_lease_tokens bigint[],
    p_outputs jsonb[],
    p_worker text default null,
    p_lease_seconds integer default null
)
returns table (step_execution_id uuid, completed boolean, next_step jsonb)
language plpgsql
volatile
set search_path = ''
as $$
declare
    completed_ids uuid[];
    completed_tokens bigint[];
    completed_runs uuid[];
    advanced_runs uuid[];
    plain_steps uuid[];
    plain_runs uuid[];
    handed_off jsonb := '{}'::jsonb;
    advancing uuid;
begin
    if cardinality(p_step_execution_ids) is distinct from cardinality(p_lease_tokens)
        or cardinality(p_step_execution_ids) is distinct from cardinality(p_outputs) then
        raise exception 'step ids, lease tokens and outputs must be arrays of the same length'
            using errcode = '22023';
    end if;

    -- Lock order: the runs first, then their steps. In id order, so that two batches
    -- sharing runs wait for each other instead of deadlocking. Stale tokens take no lock.
    perform from public.agent_task_executions as r
    where r.id in (
        select s.run_id
        from public.task_step_executions as s
        inner join unnest(p_step_execution_ids, p_lease_tokens) as held (id, token)
            on s.id = held.id and s.lease_token = held.token
        where s.status = 'running'
    )
    order by r.id
    for no key update of r;

    with done as (
        update public.task_step_executions as s
        set
            status = 'completed',
            output = coalesce(result.output, 'null'::jsonb),
            error_message = null,
            completed_at = now(),
            duration_ms = (extract(epoch from now() - s.started_at) * 1000)::integer,
            lease_owner = null,
            lease_expires_at = null,
            updated_at = now()
        from unnest(p_step_execution_ids, p_lease_tokens, p_outputs)
            as result (id, token, output)
        where s.id = result.id
            and s.lease_token = result.token
            and s.status = 'running'
        returning s.id, s.lease_token, s.run_id
    )

    select
        array_agg(done.id),
        array_agg(done.lease_token),
        array_agg(done.run_id),
        array_agg(distinct done.run_id)
    into completed_ids, completed_tokens, completed_runs, advanced_runs
    from done;

    -- Most runs simply go on to their next step: a pending one without skip_if. Those
    -- are handed off or queued in one statement. The others (next step has a skip_if, no
    -- step left, run no longer running) take advance_run, which handles every case. All
    -- of it runs after the UPDATE above, as statements of their own, so that it sees the
    -- completed steps.
    select array_agg(upcoming.id), array_agg(advanced.run_id)
    into plain_steps, plain_runs
    from unnest(advanced_runs) as advanced (run_id)
    inner join public.agent_task_executions as r
        on advanced.run_id = r.id and r.status = 'running'
    cross join lateral (
        select s.id, s.status, s.skip_if
        from public.task_step_executions as s
        where s.run_id = advanced.run_id and s.status in ('pending', 'queued', 'running')
        order by s.step_order
        limit 1
    ) as upcoming
    where upcoming.status = 'pending' and upcoming.skip_if is null;

    if p_worker is null then
        update public.task_step_executions as s
        set
            status = 'queued',
            run_after = now(),
            queued_at = now(),
            updated_at = now()
        where s.id = any(plain_steps);
    elsif plain_steps is not null then
        select jsonb_object_agg(leased.run_id::text, to_jsonb(leased))
        into handed_off
        from stepsync.lease_steps(plain_steps, p_worker, p_lease_seconds) as leased;
    end if;

    foreach advancing in array coalesce(advanced_runs, '{}') loop
        if not advancing = any(coalesce(plain_runs, '{}')) then
            perform stepsync.advance_run(advancing);
        end if;
    end loop;

    return query
    select given.id, done.id is not null, handed_off -> done.run_id::text
    from unnest(p_step_execution_ids, p_lease_tokens) with ordinality
        as given (id, token, position)
    left join unnest(completed_ids, completed_tokens, completed_runs)
        as done (id, token, run_id)
        on given.id = done.id and given.token = done.token
    order by given.position;
end
$$;

comment on function stepsync.complete_steps(uuid[], bigint[], jsonb[], text, integer) is
'Completes the given running steps (each at most once), each with its output if its lease '
'token is current, and moves each affected run on in the same transaction. With p_worker, '
'a run''s plainly due next step is leased to p_worker for p_lease_seconds instead of '
'queued. One row per given step, in the given order: completed = false means a stale token '
'or a step no longer running (nothing changed for it); next_step is the step handed off '
'(the columns claim_steps returns, as JSON) or null. Service only.';

create or replace function stepsync.complete_step(
    p_step_execution_id uuid,
    p_lease_token bigint,
    p_output jsonb
)
returns boolean
language sql
volatile
set search_path = ''
as $$
    select c.completed
    from stepsync.complete_steps(
        array[p_step_execution_id], array[p_lease_token], array[p_output]
    ) as c
$$;

comment on function stepsync.complete_step(uuid, bigint, jsonb) is
'Completes a running step with p_output if p_lease_token is its current fencing token, and '
'queues the next step or completes the run in the same transaction. false = stale token '
'(or the step is no longer running): nothing changed. Service only; complete_steps for '
'several at once.';

revoke all on function stepsync.complete_steps(uuid[], bigint[], jsonb[], text, integer)
from public, anon, authenticated;
grant execute on function stepsync.complete_steps(uuid[], bigint[], jsonb[], text, integer)
to service_role;
