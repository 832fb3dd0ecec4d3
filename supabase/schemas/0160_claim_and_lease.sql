-- Leasing steps to workers and holding the leases (service only).
--
-- A lease (owner, expiry) comes with a new fencing token from stepsync.lease_token_seq.
-- Completing and failing a step only act with the current token, so a worker whose lease
-- expired and was re-claimed cannot overwrite the newer attempt.
--
-- stepsync.lease_steps is the one place a step is taken: running, one more attempt, the
-- lease and a new token, and the input context built from the run (through the views of
-- 0130_run_context.sql, which the planner inlines into its one statement). A worker gets
-- a step two ways: claim_steps picks due queued steps with FOR UPDATE SKIP LOCKED and
-- leases them; complete_steps leases a run's next step to the worker that completed the
-- one before, without queueing it first.

create or replace function stepsync.lease_steps(
    p_step_execution_ids uuid[],
    p_worker text,
    p_lease_seconds integer
)
returns table (
    step_execution_id uuid,
    run_id uuid,
    lease_token bigint,
    task_id uuid,
    user_id uuid,
    agent_id uuid,
    step_order integer,
    step_name text,
    instructions text,
    context jsonb,
    attempt integer,
    timeout_seconds integer,
    idempotency_key text,
    conversation_id uuid,
    trigger_data jsonb
)
language plpgsql
volatile
-- Its statement takes the step ids as an array parameter. With the default plan cache
-- mode PostgreSQL plans it anew on every call (the generic plan's estimate looks worse
-- than the custom ones), although the generic plan is the same index walk at a fraction
-- of the cost.
set plan_cache_mode = force_generic_plan
set search_path = ''
as $$
begin
    if coalesce(btrim(p_worker), '') = '' then
        raise exception 'worker name must not be blank' using errcode = '22023';
    end if;
    if p_lease_seconds is null or p_lease_seconds not between 1 and 86400 then
        raise exception 'lease must be between 1 and 86400 seconds, not %', p_lease_seconds
            using errcode = '22023';
    end if;

    -- The caller holds the steps: row locks from its claim, or the run lock under which
    -- a pending step cannot change. Only waiting steps (pending, queued) are leased.
    return query
    with step_context as (
        select
            s.id,
            h.head || jsonb_build_object(
                'steps', coalesce(
                    (
                        select jsonb_agg(e.entry order by e.step_order)
                        from stepsync.run_context_entries as e
                        where e.run_id = s.run_id and e.step_order < s.step_order
                    ),
                    '[]'::jsonb
                )
            ) as run_context
        from public.task_step_executions as s
        inner join stepsync.run_context_heads as h on s.run_id = h.run_id
        where s.id = any(p_step_execution_ids) and s.status in ('pending', 'queued')
    ),

    leased as (
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
            input_context = stepsync.build_step_context(
                step_context.run_context,
                s.step_order,
                s.include_previous_context,
                s.context_mode,
                s.context_paths,
                s.context_template,
                s.context_data
            ),
            updated_at = now()
        from step_context
        where s.id = step_context.id
        returning s.*
    )

    select
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
        r.conversation_id,
        r.trigger_data
    from leased as l
    inner join public.agent_task_executions as r on l.run_id = r.id
    order by l.run_after, l.id;
end
$$;

comment on function stepsync.lease_steps(uuid[], text, integer) is
'Leases the given waiting steps (pending or queued) to p_worker for p_lease_seconds: '
'running, attempt + 1, a new fencing token, the input context built and stored. The '
'caller must hold the steps (row locks or the run lock). Returns what claim_steps returns. '
'Service only.';

revoke all on function stepsync.lease_steps(uuid[], text, integer)
from public, anon, authenticated;
grant execute on function stepsync.lease_steps(uuid[], text, integer) to service_role;

create or replace function stepsync.claim_steps(
    p_worker text,
    p_batch integer,
    p_lease_seconds integer
)
returns table (
    step_execution_id uuid,
    run_id uuid,
    lease_token bigint,
    task_id uuid,
    user_id uuid,
    agent_id uuid,
    step_order integer,
    step_name text,
    instructions text,
    context jsonb,
    attempt integer,
    timeout_seconds integer,
    idempotency_key text,
    conversation_id uuid,
    trigger_data jsonb
)
language plpgsql
volatile
-- The claim must walk task_step_executions_claim_idx in (run_after, id) order and stop
-- after p_batch rows. When the statistics still describe a nearly empty queue (a burst of
-- new runs before autovacuum has analyzed the table) the planner prefers a bitmap scan
-- that reads and sorts every due step on every claim instead, at a cost that grows with
-- the backlog. Without bitmap scans the ordered index scan is the cheapest plan whatever
-- the statistics say.
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

    -- Pick due queued steps of running runs, skipping rows another worker holds (its own
    -- statement: planned and cached on its own, it walks the claim index in order), then
    -- lease them.
    select array_agg(due.id) into picked
    from (
        select s.id
        from public.task_step_executions as s
        inner join public.agent_task_executions as r on s.run_id = r.id
        where s.status = 'queued' and s.run_after <= now() and r.status = 'running'
        order by s.run_after, s.id
        limit p_batch
        for update of s skip locked
    ) as due;

    return query
    select l.*
    from stepsync.lease_steps(picked, p_worker, p_lease_seconds) as l;
end
$$;

comment on function stepsync.claim_steps(text, integer, integer) is
'Claims up to p_batch due queued steps of running runs for worker p_worker (FOR UPDATE '
'SKIP LOCKED): leases them for p_lease_seconds with a new fencing token, counts an '
'attempt and stores the built context in input_context. Service only.';

revoke all on function stepsync.claim_steps(text, integer, integer)
from public, anon, authenticated;
grant execute on function stepsync.claim_steps(text, integer, integer) to service_role;

create or replace function stepsync.heartbeat_steps(
    p_worker text,
    p_step_execution_ids uuid[],
    p_lease_tokens bigint[],
    p_lease_seconds integer
)
returns setof uuid
language plpgsql
volatile
set search_path = ''
as $$
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
    from unnest(p_step_execution_ids, p_lease_tokens) as held (id, token)
    where s.id = held.id
        and s.lease_token = held.token
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
set search_path = ''
as $$
declare
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
        queued_at = now(),
        lease_owner = null,
        lease_expires_at = null,
        updated_at = now()
    from unnest(p_step_execution_ids, p_lease_tokens) as held (id, token)
    where s.id = held.id
        and s.lease_token = held.token
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
