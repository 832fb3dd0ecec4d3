-- The run engine's hot path reads only the rows it works on, whatever the statistics say.
--
-- The service starts before the work arrives, so the first calls of each engine function
-- are planned (and their plans kept for the life of the connection) while the tables are
-- nearly empty. A join planned then stays a nested loop over whole tables once they hold
-- thousands of queued steps and millions of finished ones. Every hot statement is
-- therefore keyed by construction: the rows it touches are named by primary key
-- (`id = any(array)`), by the claim or lease index, or by (run_id, step_order); any other
-- row it needs is a scalar or LATERAL ... LIMIT subquery keyed by a column of the row at
-- hand, which the planner cannot turn into a scan of a whole table. `enable_seqscan = off`
-- on the hot functions keeps a tiny table's sequential scan out of a plan that is kept
-- while the table grows.
--
-- A leased step is one record type, stepsync.leased_step, which a claim, a lease and a
-- hand-off all return, and a run moves on in one set-based function, stepsync.advance_runs.

drop function stepsync.complete_steps(uuid[], bigint[], jsonb[], text, integer);
drop function stepsync.claim_steps(text, integer, integer);
drop function stepsync.lease_steps(uuid[], text, integer);
drop function stepsync.advance_run(uuid);

create type stepsync.leased_step as (
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
);

comment on type stepsync.leased_step is
'A step leased to a worker: what to run (instructions, built context, agent, timeout), '
'the lease that proves it is the worker''s (lease_token) and the idempotency key that '
'stays the same across its attempts. Returned by claim_steps, lease_steps and the '
'hand-off of complete_steps.';

revoke all on type stepsync.leased_step from public;
grant usage on type stepsync.leased_step to service_role;

-- The run context's head: the task name from the run's metadata, or looked up by key.
create or replace view stepsync.run_context_heads
with (security_invoker = true) as
select
    r.id as run_id,
    jsonb_build_object(
        'task', jsonb_build_object(
            'id', r.task_id,
            'name', coalesce(
                r.metadata ->> 'task_name',
                (select t.name from public.agent_tasks as t where t.id = r.task_id)
            )
        ),
        'run', jsonb_build_object(
            'id', r.id,
            'trigger_type', r.trigger_type,
            'trigger_data', r.trigger_data
        )
    ) as head
from public.agent_task_executions as r;

create function stepsync.lease_steps(
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
    -- context a step sees is read from its own run's rows: the head by the run's key, the
    -- earlier steps by (run_id, step_order).
    return query
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
            input_context = stepsync.build_step_context(
                (select h.head from stepsync.run_context_heads as h where h.run_id = s.run_id)
                || jsonb_build_object(
                    'steps', coalesce(
                        (
                            select jsonb_agg(e.entry order by e.step_order)
                            from stepsync.run_context_entries as e
                            where e.run_id = s.run_id and e.step_order < s.step_order
                        ),
                        '[]'::jsonb
                    )
                ),
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
    from leased as l
    cross join lateral (
        select r.conversation_id, r.trigger_data
        from public.agent_task_executions as r
        where r.id = l.run_id
        limit 1
    ) as run
    order by l.run_after, l.id;
end
$$;

comment on function stepsync.lease_steps(uuid[], text, integer) is
'Leases the given waiting steps (pending or queued) to p_worker for p_lease_seconds: '
'running, attempt + 1, a new fencing token, the input context built and stored. The '
'caller must hold the steps (row locks or the run lock). Service only.';

create function stepsync.claim_steps(
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

    -- Due queued steps in (run_after, id) order, skipping rows another worker holds. A
    -- run stops having queued steps when it ends; the run's status is still checked, by
    -- key, for each step taken.
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
        order by s.run_after, s.id
        limit p_batch
        for update skip locked
    ) as due;

    return query
    select * from stepsync.lease_steps(picked, p_worker, p_lease_seconds);
end
$$;

comment on function stepsync.claim_steps(text, integer, integer) is
'Claims up to p_batch due queued steps of running runs for worker p_worker (FOR UPDATE '
'SKIP LOCKED): leases them for p_lease_seconds with a new fencing token, counts an '
'attempt and stores the built context in input_context. Service only.';

create function stepsync.advance_runs(
    p_run_ids uuid[],
    p_worker text default null,
    p_lease_seconds integer default null
)
returns setof stepsync.leased_step
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    moving uuid[];
    skipping uuid[];
    plain uuid[];
    handing_off uuid[];
    queueing uuid[] := '{}';
    ended uuid[] := '{}';
    ready_now uuid[];
    ended_now uuid[];
begin
    -- Lock order: runs in id order, then their steps.
    select array_agg(open_run.id) into moving
    from (
        select r.id
        from public.agent_task_executions as r
        where r.id = any(p_run_ids) and r.status = 'running'
        order by r.id
        for no key update
    ) as open_run;

    -- Steps run one at a time, in order, so a run's first unfinished step says it all:
    -- queued or running means one is in flight (nothing to do), pending is the next one,
    -- none means the run is over. A pending step whose skip_if holds is skipped and the
    -- run looks again: each round settles every run or skips one step of it.
    while moving is not null loop
        select
            array_agg(upcoming.run_id) filter (where upcoming.id is null),
            array_agg(upcoming.id) filter (
                where upcoming.status = 'pending' and not upcoming.skips
            ),
            array_agg(upcoming.id) filter (where upcoming.skips),
            array_agg(upcoming.id) filter (
                where upcoming.status = 'pending' and upcoming.skip_if is null
            )
        into ended_now, ready_now, skipping, plain
        from (
            select
                run.run_id,
                next_step.id,
                next_step.status,
                next_step.skip_if,
                coalesce(
                    next_step.status = 'pending'
                    and next_step.skip_if is not null
                    and stepsync.should_skip(
                        stepsync.context_before(
                            stepsync.run_context(run.run_id), next_step.step_order
                        ),
                        next_step.skip_if
                    ),
                    false
                ) as skips
            from unnest(moving) as run (run_id)
            left join lateral (
                select s.id, s.status, s.skip_if, s.step_order
                from public.task_step_executions as s
                where s.run_id = run.run_id and s.status in ('pending', 'queued', 'running')
                order by s.step_order
                limit 1
            ) as next_step on true
        ) as upcoming;

        ended := ended || coalesce(ended_now, '{}');
        -- Only a plainly due next step (no skip_if to weigh, found on the first look) is
        -- handed to p_worker; any step reached through a skip is queued for all workers.
        if handing_off is null then
            handing_off := coalesce(plain, '{}');
            queueing := queueing || array(
                select ready.id from unnest(ready_now) as ready (id)
                where ready.id <> all(handing_off)
            );
        else
            queueing := queueing || coalesce(ready_now, '{}');
        end if;
        update public.task_step_executions as s
        set
            status = 'skipped',
            skip_reason = format('skip_if matched: %s', s.skip_if),
            completed_at = now(),
            updated_at = now()
        where s.id = any(skipping);
        select array_agg(s.run_id) into moving
        from public.task_step_executions as s
        where s.id = any(skipping);
    end loop;

    if cardinality(ended) > 0 then
        perform stepsync.finish_runs(ended, 'completed');
    end if;
    if p_worker is null then
        queueing := queueing || coalesce(handing_off, '{}');
    end if;
    update public.task_step_executions as s
    set
        status = 'queued',
        run_after = now(),
        queued_at = now(),
        updated_at = now()
    where s.id = any(queueing);
    if p_worker is not null and cardinality(handing_off) > 0 then
        return query
        select * from stepsync.lease_steps(handing_off, p_worker, p_lease_seconds);
    end if;
end
$$;

comment on function stepsync.advance_runs(uuid[], text, integer) is
'Moves the given running runs forward, set-based: each run''s next pending step is '
'queued, or with p_worker, when it is plainly due (no skip_if), leased to that worker for '
'p_lease_seconds (returned: the hand-off); steps whose skip_if holds are skipped on the '
'way; a run with no step left is completed. A run with a step in flight is left alone. '
'Service only.';

create function stepsync.lease_keys(p_step_execution_ids uuid[], p_lease_tokens bigint[])
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

create function stepsync.complete_steps(
    p_step_execution_ids uuid[],
    p_lease_tokens bigint[],
    p_outputs jsonb[],
    p_worker text default null,
    p_lease_seconds integer default null
)
returns table (step_execution_id uuid, completed boolean, next_step stepsync.leased_step)
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
begin
    if cardinality(p_step_execution_ids) is distinct from cardinality(p_lease_tokens)
        or cardinality(p_step_execution_ids) is distinct from cardinality(p_outputs) then
        raise exception 'step ids, lease tokens and outputs must be arrays of the same length'
            using errcode = '22023';
    end if;

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
        returning s.id::text || ':' || s.lease_token::text as lease_key, s.run_id
    )

    select array_agg(done.lease_key), array_agg(distinct done.run_id)
    into completed_keys, completed_runs
    from done;

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
        )
    from (
        select
            step.id,
            step.position,
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
'or a step no longer running (nothing changed for it); next_step is the step handed off, '
'or null. Service only.';

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
    reason text := left(coalesce(nullif(btrim(p_error), ''), 'step failed'), 10000);
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

    if p_retryable and step.attempt < step.max_attempts then
        -- Exponential backoff with up to 20 % added jitter, so that steps failing
        -- together do not retry together.
        delay_seconds := case when p_lease_expired then 0 else
            least(
                step.retry_backoff_max_seconds,
                step.retry_backoff_seconds * power(2, step.attempt - 1)
            ) * (1 + 0.2 * random())
        end;
        update public.task_step_executions as s
        set
            status = 'queued',
            run_after = now() + make_interval(secs => delay_seconds),
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
        error_message = reason,
        last_error_at = now(),
        completed_at = now(),
        duration_ms = (extract(epoch from now() - s.started_at) * 1000)::integer,
        lease_owner = null,
        lease_expires_at = null,
        updated_at = now()
    where s.id = step.id;

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
        perform stepsync.finish_runs(
            array[step.run_id],
            'failed',
            format('step %s (%s) failed: %s', step.step_order, step.step_name, reason)
        );
    end if;
    return 'failed';
end
$$;

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

create or replace function stepsync.finish_runs(
    p_run_ids uuid[],
    p_status public.task_execution_status_enum,
    p_error text default null
)
returns void
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    finishing uuid[];
    latest uuid[];
begin
    -- Lock order: runs in id order, then tasks in id order, then definitions (the same
    -- order as one run at a time, so batches and single calls wait instead of
    -- deadlocking). Runs already over are left alone.
    select array_agg(open_run.id) into finishing
    from (
        select r.id
        from public.agent_task_executions as r
        where r.id = any(p_run_ids) and r.status in ('pending', 'running')
        order by r.id
        for no key update
    ) as open_run;
    if finishing is null then
        return;
    end if;

    -- A run's output is the output of its last completed step (text, as the app shows
    -- it: a JSON string verbatim, anything else as JSON).
    update public.agent_task_executions as r
    set
        status = p_status,
        completed_at = now(),
        duration_ms = (extract(epoch from now() - coalesce(r.started_at, r.created_at)) * 1000)::integer,
        output = (
            select
                case
                    when jsonb_typeof(s.output) = 'string' then s.output #>> '{}'
                    else s.output::text
                end
            from public.task_step_executions as s
            where s.run_id = r.id and s.status = 'completed'
            order by s.step_order desc
            limit 1
        ),
        error_message = coalesce(p_error, r.error_message),
        updated_at = now()
    where r.id = any(finishing);

    -- The tasks' counters, as the legacy executor kept them. Cancelled runs are not
    -- executions that succeeded or failed, so they count nowhere.
    if p_status in ('completed', 'failed') then
        with per_task as materialized (
            select run.task_id, count(*)::integer as runs
            from unnest(finishing) as finished (id)
            cross join lateral (
                select r.task_id from public.agent_task_executions as r
                where r.id = finished.id
                limit 1
            ) as run
            group by run.task_id
        ),

        locked as (
            select t.id
            from public.agent_tasks as t
            where t.id = any(array(select p.task_id from per_task as p))
            order by t.id
            for no key update
        )

        update public.agent_tasks as t
        set
            total_executions = t.total_executions + per_task.runs,
            successful_executions
            = t.successful_executions + per_task.runs * (p_status = 'completed')::integer,
            failed_executions
            = t.failed_executions + per_task.runs * (p_status = 'failed')::integer,
            last_run_at = now(),
            updated_at = now()
        from per_task
        where
            t.id = any(array(select l.id from locked as l))
            and t.id = per_task.task_id;
    end if;

    -- The definitions keep their task's latest run's final status and result for the UI
    -- (live progress is on task_step_executions). An older run finishing late does not
    -- overwrite a newer one's; a row already holding exactly this is not rewritten.
    select array_agg(finished.id) into latest
    from unnest(finishing) as finished (id)
    cross join lateral (
        select r.task_id, r.created_at from public.agent_task_executions as r
        where r.id = finished.id
        limit 1
    ) as run
    where not exists (
        select from public.agent_task_executions as newer
        where newer.task_id = run.task_id and newer.created_at > run.created_at
    );

    with snapshot as materialized (
        select
            s.step_id,
            s.status,
            jsonb_build_object(
                'run_id', s.run_id,
                'step_execution_id', s.id,
                'status', s.status,
                'attempt', s.attempt,
                'output', s.output,
                'error', s.error_message,
                'started_at', s.started_at,
                'completed_at', s.completed_at,
                'duration_ms', s.duration_ms
            ) as result
        from public.task_step_executions as s
        where
            s.run_id = any(latest)
            and s.step_id is not null
            and s.status in ('completed', 'failed', 'skipped', 'cancelled')
    )

    update public.task_steps as d
    set
        status = snapshot.status,
        execution_result = snapshot.result
    from snapshot
    where
        d.id = any(array(select snapshot.step_id from snapshot))
        and d.id = snapshot.step_id
        and (d.status, d.execution_result)
        is distinct from (snapshot.status, snapshot.result);
end
$$;

create or replace function stepsync.start_task_run(
    p_task_id uuid,
    p_trigger_type text default 'manual',
    p_trigger_data jsonb default '{}'::jsonb
)
returns uuid
language plpgsql
volatile
security definer
set enable_seqscan = off
set search_path = ''
as $$
declare
    task public.agent_tasks;
    live_steps integer;
    problems jsonb;
    new_run_id uuid;
begin
    if p_trigger_type is null or p_trigger_type not in ('manual', 'scheduled', 'event') then
        raise exception 'trigger type must be manual, scheduled or event, not %',
            coalesce(quote_literal(p_trigger_type), 'null')
            using errcode = '22023';
    end if;
    if p_trigger_data is not null and jsonb_typeof(p_trigger_data) <> 'object' then
        raise exception 'trigger data must be a JSON object, not %', jsonb_typeof(p_trigger_data)
            using errcode = '22023';
    end if;

    task := stepsync.authorized_task(p_task_id);

    if not stepsync.flag_enabled_for('multi_step_workflows', task.user_id) then
        raise exception 'multi-step workflows are not enabled for the owner of task %', task.id
            using errcode = '55000',
            hint = 'The feature flag multi_step_workflows is off for this user.';
    end if;

    -- Hold the live steps still until the run has its snapshot, so that what was
    -- validated is what runs (an edit committed in between would otherwise slip in).
    perform
    from public.task_steps as s
    where s.task_id = task.id and s.deleted_at is null
    for share;
    get diagnostics live_steps = row_count;

    -- A task without steps runs its legacy instructions as one step; a task with steps
    -- must pass the same validation the editor shows.
    if live_steps > 0 then
        problems := public.validate_task_steps(task.id);
        if jsonb_array_length(problems) > 0 then
            raise exception 'task % has invalid steps: %',
                task.id,
                (
                    select string_agg(
                        coalesce('step ' || (p.problem ->> 'step_order') || ': ', '')
                        || (p.problem ->> 'message'),
                        '; '
                    )
                    from jsonb_array_elements(problems) as p (problem)
                )
                using errcode = '22023',
                detail = problems::text,
                hint = 'Fix the steps (see validate_task_steps) and start the run again.';
        end if;
    elsif coalesce(btrim(task.instructions), '') = '' then
        raise exception 'task % has no steps and no instructions', task.id
            using errcode = '22023';
    end if;

    insert into public.agent_task_executions (
        task_id, agent_id, user_id, status, trigger_type, trigger_data, instructions_used,
        started_at, conversation_id, step_count, metadata
    )
    values (
        task.id,
        task.agent_id,
        task.user_id,
        'running',
        p_trigger_type,
        coalesce(p_trigger_data, '{}'::jsonb),
        '',
        now(),
        task.conversation_id,
        greatest(live_steps, 1),
        jsonb_build_object('engine', 'stepsync', 'task_name', task.name)
    )
    returning id into new_run_id;

    insert into public.task_step_executions (
        run_id, task_id, user_id, step_id, step_order, step_name, instructions, agent_id,
        include_previous_context, context_mode, context_paths, context_template,
        context_data, skip_if, on_failure, max_attempts, retry_backoff_seconds,
        retry_backoff_max_seconds, timeout_seconds
    )
    select
        new_run_id, task.id, task.user_id, d.step_id, d.step_order, d.step_name,
        d.instructions, d.agent_id, d.include_previous_context, d.context_mode,
        d.context_paths, d.context_template, d.context_data, d.skip_if, d.on_failure,
        d.max_attempts, d.retry_backoff_seconds, d.retry_backoff_max_seconds,
        d.timeout_seconds
    from stepsync.step_definitions(task.id) as d;

    -- What the run was asked to do, in the legacy column the app shows.
    update public.agent_task_executions as r
    set instructions_used = (
        select case
            when count(*) = 1 then min(s.instructions)
            else string_agg(
                format(E'Step %s: %s\n%s', s.step_order, s.step_name, s.instructions),
                E'\n\n' order by s.step_order
            )
        end
        from public.task_step_executions as s
        where s.run_id = r.id
    )
    where r.id = new_run_id;

    perform from stepsync.advance_runs(array[new_run_id]);
    return new_run_id;
end
$$;

comment on function stepsync.start_task_run(uuid, text, jsonb) is
'Starts a run of a task for its owner or the service: checks the multi_step_workflows '
'flag and validate_task_steps, snapshots the live steps (or the legacy instructions as '
'one step) and makes step 1 ready. Use public.start_task_run.';

alter function stepsync.reap_expired_leases() set enable_seqscan = off;
alter function stepsync.cancel_task_run(uuid) set enable_seqscan = off;
alter function stepsync.on_step_status_change() set enable_seqscan = off;
alter function stepsync.audit_statement() set enable_seqscan = off;

revoke all on function stepsync.lease_steps(uuid[], text, integer)
from public, anon, authenticated;
revoke all on function stepsync.claim_steps(text, integer, integer)
from public, anon, authenticated;
revoke all on function stepsync.advance_runs(uuid[], text, integer)
from public, anon, authenticated;
revoke all on function stepsync.complete_steps(uuid[], bigint[], jsonb[], text, integer)
from public, anon, authenticated;
grant execute on function stepsync.lease_steps(uuid[], text, integer) to service_role;
grant execute on function stepsync.claim_steps(text, integer, integer) to service_role;
grant execute on function stepsync.advance_runs(uuid[], text, integer) to service_role;
grant execute on function stepsync.complete_steps(uuid[], bigint[], jsonb[], text, integer)
to service_role;
