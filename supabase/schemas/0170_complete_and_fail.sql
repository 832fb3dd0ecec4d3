-- Completing and failing a step attempt (service only), fenced by the lease token.
--
-- Both lock the run row before the step row (the lock order of every run transition),
-- and both move the run on in the same transaction: the next step is queued or handed
-- off, or the run completes or fails.
--
-- A worker running many steps at once finishes several of them within a millisecond or
-- two. complete_steps records all of them in one transaction: one round trip and one
-- commit instead of one each, and one set-based UPDATE of the step rows. Each step is
-- still fenced by its own lease token, and each run still moves on in the same
-- transaction that completes its step. complete_step is complete_steps for one step, so
-- both follow one code path.
--
-- An output over the limits (output_bytes, json_levels: 0015_limits.sql) is not recorded:
-- its step fails for good with the reason, alone, and the rest of the batch completes.
--
-- Hand-off: the worker that completed step N has a free slot and is the one most likely
-- to want step N + 1. With p_worker given, a next step that is plainly due (pending, no
-- skip_if) is leased to that worker at once (advance_runs) instead of being queued,
-- announced and claimed: one step update fewer, no notification, no claim round trip,
-- and the step starts as soon as the completion commits.

create or replace function stepsync.complete_steps(
    p_step_execution_ids uuid[],
    p_lease_tokens bigint[],
    p_outputs jsonb[],
    p_worker text default null,
    p_lease_seconds integer default null
)
returns table (
    step_execution_id uuid,
    completed boolean,
    next_step stepsync.leased_step,
    refused text
)
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    held text[] := stepsync.lease_keys(p_step_execution_ids, p_lease_tokens);
    completed_keys text[];
    completed_runs uuid[];
    handed_off stepsync.leased_step[];
    refused_positions integer[];
    refused_reasons text[];
    refused_keys text[];
    failed_positions integer[] := '{}';
    i integer;
begin
    if cardinality(p_step_execution_ids) is distinct from cardinality(p_lease_tokens)
        or cardinality(p_step_execution_ids) is distinct from cardinality(p_outputs) then
        raise exception 'step ids, lease tokens and outputs must be arrays of the same length'
            using errcode = '22023';
    end if;

    -- Outputs the limits refuse, by their position in the arrays.
    select array_agg(checked.position), array_agg(checked.problem)
    into refused_positions, refused_reasons
    from (
        select
            given.position::integer as position,
            stepsync.json_problem(given.output, stepsync.input_limit('output_bytes')) as problem
        from unnest(p_outputs) with ordinality as given (output, position)
    ) as checked
    where checked.problem is not null;
    refused_keys := array(
        select held[refused.position] from unnest(refused_positions) as refused (position)
    );

    -- Lock order: the runs first (in id order, so that two batches sharing runs wait
    -- instead of deadlocking), then their steps. Stale tokens take no lock. A step's
    -- output is at the position of its lease in the arrays.
    perform from public.agent_task_executions as r
    where r.id = any(array(
        select s.run_id
        from public.task_step_executions as s
        where
            s.id = any(p_step_execution_ids)
            and s.status = 'running'
            and s.id::text || ':' || s.lease_token::text = any(held)
    ))
    order by r.id
    for no key update;

    with done as (
        update public.task_step_executions as s
        set
            status = 'completed',
            output = coalesce(
                p_outputs[array_position(held, s.id::text || ':' || s.lease_token::text)],
                'null'::jsonb
            ),
            error_message = null,
            completed_at = now(),
            duration_ms = (extract(epoch from now() - s.started_at) * 1000)::integer,
            lease_owner = null,
            lease_expires_at = null,
            updated_at = now()
        where
            s.id = any(p_step_execution_ids)
            and s.status = 'running'
            and s.id::text || ':' || s.lease_token::text = any(held)
            and s.id::text || ':' || s.lease_token::text <> all(refused_keys)
        returning s.id::text || ':' || s.lease_token::text as lease_key, s.run_id
    )

    select array_agg(done.lease_key), array_agg(distinct done.run_id)
    into completed_keys, completed_runs
    from done;

    -- Each refused output fails its step (its run is locked already): not retried, the
    -- same output would be refused again.
    for i in 1 .. coalesce(cardinality(refused_positions), 0) loop
        if stepsync.record_step_failure(
            p_step_execution_ids[refused_positions[i]],
            p_lease_tokens[refused_positions[i]],
            format('output refused: it %s', refused_reasons[i]),
            false,
            false
        ) = 'failed' then
            failed_positions := failed_positions || refused_positions[i];
        end if;
    end loop;

    -- As statements of their own, after the UPDATE, so that they see the completed steps.
    select array_agg(handed) into handed_off
    from stepsync.advance_runs(completed_runs, p_worker, p_lease_seconds) as handed;

    return query
    select
        given.id,
        given.completed,
        (
            select handed
            from unnest(handed_off) as handed
            where
                given.completed
                and handed.run_id = (
                    select s.run_id from public.task_step_executions as s where s.id = given.id
                )
            limit 1
        ),
        case
            when given.position = any(failed_positions)
                then refused_reasons[array_position(refused_positions, given.position)]
        end
    from (
        select
            step.id,
            step.position::integer as position,
            held[step.position] = any(coalesce(completed_keys, '{}')) as completed
        from unnest(p_step_execution_ids) with ordinality as step (id, position)
    ) as given
    order by given.position;
end
$$;

comment on function stepsync.complete_steps(uuid[], bigint[], jsonb[], text, integer) is
'Completes the given running steps (each at most once), each with its output if its lease '
'token is current, and moves each affected run on in the same transaction (advance_runs). '
'With p_worker, a run''s next step is leased to p_worker for p_lease_seconds instead of '
'queued. One row per given step, in the given order: completed = false means a stale token '
'or a step no longer running (nothing changed for it), unless refused says why its output '
'broke the limits (the step failed instead); next_step is the step handed off, or null. '
'Service only.';

revoke all on function stepsync.complete_steps(uuid[], bigint[], jsonb[], text, integer)
from public, anon, authenticated;
grant execute on function stepsync.complete_steps(uuid[], bigint[], jsonb[], text, integer)
to service_role;

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

revoke all on function stepsync.complete_step(uuid, bigint, jsonb)
from public, anon, authenticated;
grant execute on function stepsync.complete_step(uuid, bigint, jsonb) to service_role;

create or replace function stepsync.record_step_failure(
    p_step_execution_id uuid,
    p_lease_token bigint,
    p_error text,
    p_retryable boolean,
    p_lease_expired boolean
)
returns text
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    step public.task_step_executions;
    delay_seconds double precision;
    reason text := left(
        coalesce(nullif(btrim(p_error), ''), 'step failed'), stepsync.input_limit('error_chars')
    );
begin
    select s.* into step
    from public.task_step_executions as s
    where
        s.id = p_step_execution_id
        and s.status = 'running'
        and s.lease_token = p_lease_token;
    if not found then
        return 'stale';
    end if;
    perform from public.agent_task_executions as r
    where r.id = step.run_id
    for no key update;

    select s.* into step
    from public.task_step_executions as s
    where
        s.id = p_step_execution_id
        and s.status = 'running'
        and s.lease_token = p_lease_token
        and (not p_lease_expired or s.lease_expires_at < now())
    for update;
    if not found then
        return 'stale';
    end if;

    -- A lease that lapsed without a result is not the step's failure: its worker died or
    -- lost the database. The attempt is given back and the step is due again at once, up
    -- to max_lost_leases times; a step that keeps killing its workers then fails.
    if p_lease_expired and step.lost_leases < step.max_lost_leases then
        update public.task_step_executions as s
        set
            status = 'queued',
            attempt = greatest(s.attempt - 1, 0),
            lost_leases = s.lost_leases + 1,
            run_after = now(),
            fair_at = coalesce(s.fair_at, now()),
            queued_at = now(),
            error_message = reason,
            last_error_at = now(),
            lease_owner = null,
            lease_expires_at = null,
            updated_at = now()
        where s.id = step.id;
        return 'retrying';
    elsif p_lease_expired then
        reason := format(
            'lease lost %s times, more than max_lost_leases (%s) allows: the worker running '
            'the step stopped or lost the database each time (last: %s)',
            step.lost_leases + 1, step.max_lost_leases, reason
        );
    elsif p_retryable and step.attempt < step.max_attempts then
        -- Exponential backoff with up to 20 % added jitter, so that steps failing
        -- together do not retry together.
        delay_seconds := least(
            step.retry_backoff_max_seconds,
            step.retry_backoff_seconds * power(2, step.attempt - 1)
        ) * (1 + 0.2 * random());
        -- A retry goes to the back of its user's queue, and never before it is due.
        update public.task_step_executions as s
        set
            status = 'queued',
            run_after = now() + make_interval(secs => delay_seconds),
            fair_at = greatest(
                now() + make_interval(secs => delay_seconds),
                (
                    select last_queued.fair_at + make_interval(
                        secs => stepsync.setting('user_step_spacing_ms') / 1000.0
                    )
                    from public.task_step_executions as last_queued
                    where last_queued.user_id = s.user_id and last_queued.status = 'queued'
                    order by last_queued.fair_at desc
                    limit 1
                )
            ),
            queued_at = now(),
            error_message = reason,
            last_error_at = now(),
            lease_owner = null,
            lease_expires_at = null,
            updated_at = now()
        where s.id = step.id;
        return 'retrying';
    end if;

    update public.task_step_executions as s
    set
        status = 'failed',
        lost_leases = s.lost_leases + p_lease_expired::integer,
        error_message = reason,
        last_error_at = now(),
        completed_at = now(),
        duration_ms = (extract(epoch from now() - s.started_at) * 1000)::integer,
        lease_owner = null,
        lease_expires_at = null,
        updated_at = now()
    where s.id = step.id;

    -- A compensation always says continue: one failing does not keep the others from
    -- running.
    if step.on_failure = 'continue' then
        perform from stepsync.advance_runs(array[step.run_id]);
    else
        update public.task_step_executions as s
        set
            status = 'skipped',
            skip_reason = format('run stopped: step %s failed', step.step_order),
            completed_at = now(),
            updated_at = now()
        where s.run_id = step.run_id and s.status in ('pending', 'queued');
        reason := format('step %s (%s) failed: %s', step.step_order, step.step_name, reason);
        -- Completed steps with compensate_instructions are undone first; the run ends
        -- failed once they are over (advance_runs).
        if stepsync.start_compensation(step.run_id, reason) > 0 then
            perform from stepsync.advance_runs(array[step.run_id]);
        else
            perform stepsync.finish_runs(array[step.run_id], 'failed', reason);
        end if;
    end if;
    return 'failed';
end
$$;

comment on function stepsync.record_step_failure(uuid, bigint, text, boolean, boolean) is
'Shared by fail_step and reap_expired_leases. A lost lease (p_lease_expired: the worker '
'died, not the step) queues the step again at once and gives its attempt back, up to '
'max_lost_leases times. A failed attempt with attempts left (and p_retryable) is queued '
'again after its backoff. Otherwise the step fails and its on_failure decides: stop '
'(remaining steps skipped; the completed steps'' compensations run, then the run fails) '
'or continue.';

revoke all on function stepsync.record_step_failure(uuid, bigint, text, boolean, boolean)
from public, anon, authenticated;
grant execute on function stepsync.record_step_failure(uuid, bigint, text, boolean, boolean)
to service_role;

create or replace function stepsync.fail_step(
    p_step_execution_id uuid,
    p_lease_token bigint,
    p_error text,
    p_retryable boolean default true
)
returns text
language sql
volatile
set search_path = ''
as $$
    select stepsync.record_step_failure(
        p_step_execution_id, p_lease_token, p_error, coalesce(p_retryable, true), false
    )
$$;

comment on function stepsync.fail_step(uuid, bigint, text, boolean) is
'Records a failed attempt if p_lease_token is current: ''retrying'' (queued again after '
'least(max, base * 2^(attempt-1)) seconds plus up to 20 % jitter), ''failed'' (no attempts '
'left or not retryable; on_failure applied) or ''stale'' (nothing changed). Service only.';

revoke all on function stepsync.fail_step(uuid, bigint, text, boolean)
from public, anon, authenticated;
grant execute on function stepsync.fail_step(uuid, bigint, text, boolean) to service_role;
