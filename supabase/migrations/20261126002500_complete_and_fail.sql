-- Completing and failing a step attempt (service only), fenced by the lease token.
--
-- Both lock the run row before the step row (the lock order of every run transition),
-- and both move the run on in the same transaction: the next step is queued, or the run
-- completes or fails.

create or replace function stepsync.complete_step(
    p_step_execution_id uuid,
    p_lease_token bigint,
    p_output jsonb
)
returns boolean
language plpgsql
volatile
set search_path = ''
as $$
declare
    step_run_id uuid;
begin
    -- A stale token is answered without taking any lock; the UPDATE below checks again
    -- under the run lock.
    select s.run_id into step_run_id
    from public.task_step_executions as s
    where
        s.id = p_step_execution_id
        and s.status = 'running'
        and s.lease_token = p_lease_token;
    if not found then
        return false;
    end if;
    perform from public.agent_task_executions as r
    where r.id = step_run_id
    for no key update;

    update public.task_step_executions as s
    set
        status = 'completed',
        output = coalesce(p_output, 'null'::jsonb),
        error_message = null,
        completed_at = now(),
        duration_ms = (extract(epoch from now() - s.started_at) * 1000)::integer,
        lease_owner = null,
        lease_expires_at = null,
        updated_at = now()
    where s.id = p_step_execution_id
        and s.status = 'running'
        and s.lease_token = p_lease_token;
    if not found then
        return false;
    end if;

    perform stepsync.advance_run(step_run_id);
    return true;
end
$$;

comment on function stepsync.complete_step(uuid, bigint, jsonb) is
'Completes a running step with p_output if p_lease_token is its current fencing token, and '
'queues the next step or completes the run in the same transaction. false = stale token '
'(or the step is no longer running): nothing changed. Service only.';

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
    where s.id = p_step_execution_id
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
        perform stepsync.advance_run(step.run_id);
    else
        update public.task_step_executions as s
        set
            status = 'skipped',
            skip_reason = format('run stopped: step %s failed', step.step_order),
            completed_at = now(),
            updated_at = now()
        where s.run_id = step.run_id and s.status in ('pending', 'queued');
        perform stepsync.finish_run(
            step.run_id,
            'failed',
            format('step %s (%s) failed: %s', step.step_order, step.step_name, reason)
        );
    end if;
    return 'failed';
end
$$;

comment on function stepsync.record_step_failure(uuid, bigint, text, boolean, boolean) is
'Shared by fail_step and reap_expired_leases: with attempts left (and p_retryable) the step '
'is queued again after its backoff (due at once when p_lease_expired: the worker died, not '
'necessarily the step); otherwise it fails and its on_failure decides: stop (run failed, '
'remaining steps skipped) or continue.';

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

revoke all on function stepsync.complete_step(uuid, bigint, jsonb)
from public, anon, authenticated;
revoke all on function stepsync.record_step_failure(uuid, bigint, text, boolean, boolean)
from public, anon, authenticated;
revoke all on function stepsync.fail_step(uuid, bigint, text, boolean)
from public, anon, authenticated;

grant execute on function stepsync.complete_step(uuid, bigint, jsonb) to service_role;
grant execute on function stepsync.record_step_failure(uuid, bigint, text, boolean, boolean)
to service_role;
grant execute on function stepsync.fail_step(uuid, bigint, text, boolean) to service_role;
