-- Leasing steps to workers and holding the leases (service only).
--
-- A lease (owner, expiry) comes with a new fencing token from stepsync.lease_token_seq.
-- Completing and failing a step only act with the current token, so a worker whose lease
-- expired and was re-claimed cannot overwrite the newer attempt.
--
-- stepsync.lease_steps is the one place a step is taken: running, one more attempt, the
-- lease and a new token, and the input context built from the run (through the views of
-- 0130_run_context.sql, keyed by the step's run). A worker gets a step two ways:
-- claim_steps picks due queued steps with FOR UPDATE SKIP LOCKED and leases them;
-- advance_runs, called by complete_steps, leases a run's next step to the worker that
-- completed the one before, without queueing it first. All three return the one record
-- type of a leased step, stepsync.leased_step.
--
-- One step never fails a lease of several: a step whose context cannot be built
-- (stepsync.run_step_input says why) fails alone, for good, with that reason, and the others
-- are leased. The claim takes due steps in their fair order (fair_at: each user's queued
-- steps spaced apart), so a user with many queued steps takes turns with the others.

create or replace function stepsync.lease_steps(
    p_step_execution_ids uuid[],
    p_worker text,
    p_lease_seconds integer
)
returns setof stepsync.leased_step
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    leased_steps stepsync.leased_step[];
    broken_ids uuid[];
    broken record;
begin
    if coalesce(btrim(p_worker), '') = '' then
        raise exception 'worker name must not be blank' using errcode = '22023';
    end if;
    if p_lease_seconds is null or p_lease_seconds not between 1 and 86400 then
        raise exception 'lease must be between 1 and 86400 seconds, not %', p_lease_seconds
            using errcode = '22023';
    end if;

    -- The caller holds the steps: row locks from its claim, or the run lock under which
    -- a pending step cannot change. Only waiting steps (pending, queued) are leased. The
    -- context a step sees is read from its own run's rows (run_step_input: the head by
    -- the run's key, the earlier steps by (run_id, step_order)), inside a guard that
    -- turns any failure of that step's build into its own failure.
    with leased as (
        update public.task_step_executions as s
        set
            status = 'running',
            attempt = s.attempt + 1,
            lease_owner = p_worker,
            lease_expires_at = now() + make_interval(secs => p_lease_seconds),
            lease_token = nextval('stepsync.lease_token_seq'),
            run_after = coalesce(s.run_after, now()),
            queued_at = coalesce(s.queued_at, now()),
            started_at = now(),
            input_context = stepsync.run_step_input(
                s.run_id,
                s.step_order,
                s.include_previous_context,
                s.context_mode,
                s.context_paths,
                s.context_template,
                s.context_data
            ),
            updated_at = now()
        where s.id = any(p_step_execution_ids) and s.status in ('pending', 'queued')
        returning s.*
    )

    select
        array_agg(
            row(
                l.id,
                l.run_id,
                l.lease_token,
                l.task_id,
                l.user_id,
                l.agent_id,
                l.step_order,
                l.step_name,
                l.instructions,
                l.input_context,
                l.attempt,
                l.timeout_seconds,
                l.idempotency_key,
                run.conversation_id,
                run.trigger_data
            )::stepsync.leased_step
            order by l.fair_at, l.id
        ) filter (where not l.input_context ? 'context_error'),
        array_agg(l.id) filter (where l.input_context ? 'context_error')
    into leased_steps, broken_ids
    from leased as l
    cross join lateral (
        select r.conversation_id, r.trigger_data
        from public.agent_task_executions as r
        where r.id = l.run_id
        limit 1
    ) as run;

    return query select * from unnest(leased_steps);

    -- The steps whose context could not be built fail, alone and for good (building it
    -- again would fail again). Failing one moves its run on, which locks the run: the
    -- hand-off holds it already, a claim (which holds only the step) takes it only if it
    -- is free, and otherwise hands the step back to be taken again shortly, so that it
    -- never waits on a lock in the wrong order (run, then step).
    if broken_ids is null then
        return;
    end if;
    for broken in
        select s.id, s.lease_token, s.run_id, s.input_context ->> 'context_error' as reason
        from public.task_step_executions as s
        where s.id = any(broken_ids)
    loop
        perform from public.agent_task_executions as r
        where r.id = broken.run_id
        for no key update skip locked;
        if found then
            perform stepsync.record_step_failure(
                broken.id,
                broken.lease_token,
                format('the step''s input context could not be built: %s', broken.reason),
                false,
                false
            );
        else
            update public.task_step_executions as s
            set
                status = 'queued',
                attempt = greatest(s.attempt - 1, 0),
                run_after = now() + interval '1 second',
                fair_at = coalesce(s.fair_at, now()),
                lease_owner = null,
                lease_expires_at = null,
                input_context = null,
                updated_at = now()
            where s.id = broken.id;
        end if;
    end loop;
end
$$;

comment on function stepsync.lease_steps(uuid[], text, integer) is
'Leases the given waiting steps (pending or queued) to p_worker for p_lease_seconds: '
'running, attempt + 1, a new fencing token, the input context built and stored. A step '
'whose context cannot be built fails instead (its error says why) and is not returned. '
'The caller must hold the steps (row locks or the run lock). Service only.';

revoke all on function stepsync.lease_steps(uuid[], text, integer)
from public, anon, authenticated;
grant execute on function stepsync.lease_steps(uuid[], text, integer) to service_role;

create or replace function stepsync.claim_steps(
    p_worker text,
    p_batch integer,
    p_lease_seconds integer
)
returns setof stepsync.leased_step
language plpgsql
volatile
-- Only the claim index's ordered walk is left to the planner: no sequential scan, no
-- bitmap scan that would read and sort every due step.
set enable_seqscan = off
set enable_bitmapscan = off
set search_path = ''
as $$
declare
    picked uuid[];
begin
    -- lease_steps checks the worker and the lease.
    if p_batch is null or p_batch not between 1 and 1000 then
        raise exception 'batch size must be between 1 and 1000, not %', p_batch
            using errcode = '22023';
    end if;

    -- Due queued steps in their fair order (fair_at, id), skipping rows another worker
    -- holds and steps not yet due (a retry's backoff; its fair_at is never before its
    -- run_after, so few are passed over). A run stops having queued steps when it ends;
    -- the run's status is still checked, by key, for each step taken.
    select array_agg(due.id) into picked
    from (
        select s.id
        from public.task_step_executions as s
        where
            s.status = 'queued'
            and s.run_after <= now()
            and (
                select r.status from public.agent_task_executions as r where r.id = s.run_id
            ) = 'running'
        order by s.fair_at, s.id
        limit p_batch
        for update skip locked
    ) as due;

    return query
    select * from stepsync.lease_steps(picked, p_worker, p_lease_seconds);
end
$$;

comment on function stepsync.claim_steps(text, integer, integer) is
'Claims up to p_batch due queued steps of running runs for worker p_worker in their fair '
'order (fair_at; FOR UPDATE SKIP LOCKED): leases them for p_lease_seconds with a new '
'fencing token, counts an attempt and stores the built context in input_context; a step '
'whose context cannot be built fails instead. Service only.';

revoke all on function stepsync.claim_steps(text, integer, integer)
from public, anon, authenticated;
grant execute on function stepsync.claim_steps(text, integer, integer) to service_role;

create or replace function stepsync.lease_keys(p_step_execution_ids uuid[], p_lease_tokens bigint[])
returns text[]
language sql
immutable
set search_path = ''
as $$
    select array(
        select held.id::text || ':' || held.token::text
        from unnest(p_step_execution_ids, p_lease_tokens) with ordinality as held (id, token, position)
        order by held.position
    )
$$;

comment on function stepsync.lease_keys(uuid[], bigint[]) is
'The leases given as parallel arrays of step ids and tokens, as one array of '
'''<id>:<token>'' keys in the same order. Functions that take leases in bulk compare '
'each step row''s own key with it: a filter on the rows found by id, never a join that '
'a plan made on small tables could turn into a scan of all steps.';

revoke all on function stepsync.lease_keys(uuid[], bigint[]) from public, anon, authenticated;
grant execute on function stepsync.lease_keys(uuid[], bigint[]) to service_role;

create or replace function stepsync.heartbeat_steps(
    p_worker text,
    p_step_execution_ids uuid[],
    p_lease_tokens bigint[],
    p_lease_seconds integer
)
returns setof uuid
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    held text[] := stepsync.lease_keys(p_step_execution_ids, p_lease_tokens);
begin
    if cardinality(p_step_execution_ids) is distinct from cardinality(p_lease_tokens) then
        raise exception 'step ids and lease tokens must be arrays of the same length'
            using errcode = '22023';
    end if;
    if p_lease_seconds is null or p_lease_seconds not between 1 and 86400 then
        raise exception 'lease must be between 1 and 86400 seconds, not %', p_lease_seconds
            using errcode = '22023';
    end if;

    return query
    update public.task_step_executions as s
    set
        lease_expires_at = now() + make_interval(secs => p_lease_seconds),
        updated_at = now()
    where
        s.id = any(p_step_execution_ids)
        and s.id::text || ':' || s.lease_token::text = any(held)
        and s.lease_owner = p_worker
        and s.status = 'running'
    returning s.id;
end
$$;

comment on function stepsync.heartbeat_steps(text, uuid[], bigint[], integer) is
'Extends the leases p_worker still holds (matching id and token, still running) by '
'p_lease_seconds from now; returns the ids whose lease is still held. Service only.';

revoke all on function stepsync.heartbeat_steps(text, uuid[], bigint[], integer)
from public, anon, authenticated;
grant execute on function stepsync.heartbeat_steps(text, uuid[], bigint[], integer)
to service_role;

create or replace function stepsync.release_steps(
    p_worker text,
    p_step_execution_ids uuid[],
    p_lease_tokens bigint[]
)
returns integer
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    held text[] := stepsync.lease_keys(p_step_execution_ids, p_lease_tokens);
    released integer;
begin
    if cardinality(p_step_execution_ids) is distinct from cardinality(p_lease_tokens) then
        raise exception 'step ids and lease tokens must be arrays of the same length'
            using errcode = '22023';
    end if;

    -- Handing a step back is not a failed attempt: the attempt is given back too.
    update public.task_step_executions as s
    set
        status = 'queued',
        attempt = greatest(s.attempt - 1, 0),
        run_after = now(),
        fair_at = coalesce(s.fair_at, now()),
        queued_at = now(),
        lease_owner = null,
        lease_expires_at = null,
        updated_at = now()
    where
        s.id = any(p_step_execution_ids)
        and s.id::text || ':' || s.lease_token::text = any(held)
        and s.lease_owner = p_worker
        and s.status = 'running';
    get diagnostics released = row_count;
    return released;
end
$$;

comment on function stepsync.release_steps(text, uuid[], bigint[]) is
'Graceful shutdown: hands the given running steps of p_worker back to the queue, due now, '
'without using up an attempt. Returns how many were released. Service only.';

revoke all on function stepsync.release_steps(text, uuid[], bigint[])
from public, anon, authenticated;
grant execute on function stepsync.release_steps(text, uuid[], bigint[]) to service_role;

create or replace function stepsync.queue_depth()
returns bigint
language sql
stable
set search_path = ''
as $$
    select count(*)
    from public.task_step_executions as s
    inner join public.agent_task_executions as r on s.run_id = r.id
    where s.status = 'queued' and s.run_after <= now() and r.status = 'running'
$$;

comment on function stepsync.queue_depth() is
'Number of steps queued and due (what claim_steps could take now). Service only.';

revoke all on function stepsync.queue_depth() from public, anon, authenticated;
grant execute on function stepsync.queue_depth() to service_role;
