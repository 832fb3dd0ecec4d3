-- Cancelling a run (owner or service) and reaping expired leases (service).

-- One signature each, with p_compensate defaulted: a second overload beside the
-- one-argument form would make PostgREST's call with p_run_id alone ambiguous.
create or replace function stepsync.cancel_task_run(
    p_run_id uuid, p_compensate boolean default false
)
returns boolean
language plpgsql
volatile
security definer
set enable_seqscan = off
set search_path = ''
as $$
declare
    run public.agent_task_executions;
begin
    -- Ownership first, then the lock: waiting on another user's run would tell that the
    -- id exists.
    select r.* into run
    from public.agent_task_executions as r
    where r.id = p_run_id;
    if not found
        or (not stepsync.caller_is_service() and run.user_id is distinct from auth.uid()) then
        raise exception 'run % not found', p_run_id
            using errcode = 'P0002',
            hint = 'Check the run id; only the run''s owner and the service may cancel it.';
    end if;
    select r.* into run
    from public.agent_task_executions as r
    where r.id = p_run_id
    for no key update;
    if run.status not in ('pending', 'running') then
        return false;
    end if;
    -- Asking again for the compensation under way changes nothing; a plain cancel
    -- stops it.
    if coalesce(p_compensate, false) and run.compensation = 'running' then
        return false;
    end if;

    -- A running step is cancelled too: its worker's late complete or fail no longer
    -- matches a running step and is rejected.
    update public.task_step_executions as s
    set
        status = 'cancelled',
        lease_owner = null,
        lease_expires_at = null,
        completed_at = now(),
        updated_at = now()
    where s.run_id = p_run_id and s.status in ('pending', 'queued', 'running');

    -- Compensations asked for run before the run ends cancelled (advance_runs); the run
    -- stays running meanwhile, and its cancellation is announced at once (0200_notify.sql)
    -- so that the step that was running stops.
    if coalesce(p_compensate, false)
        and stepsync.start_compensation(p_run_id, 'run cancelled') > 0 then
        update public.agent_task_executions as r
        set cancelled_at = now(), cancelled_by = auth.uid()
        where r.id = p_run_id;
        perform from stepsync.advance_runs(array[p_run_id]);
        return true;
    end if;
    update public.agent_task_executions as r
    set
        cancelled_at = now(),
        cancelled_by = auth.uid(),
        compensation = case
            when r.compensation = 'running' then 'cancelled'
            else r.compensation
        end
    where r.id = p_run_id;
    perform stepsync.finish_run(p_run_id, 'cancelled', 'cancelled');
    return true;
end
$$;

comment on function stepsync.cancel_task_run(uuid, boolean) is
'Cancels a pending or running run and its unfinished steps, for the run''s owner or the '
'service; with p_compensate, the completed steps'' compensations run first. Use '
'public.cancel_task_run.';

revoke all on function stepsync.cancel_task_run(uuid, boolean) from public;
grant execute on function stepsync.cancel_task_run(uuid, boolean) to authenticated, service_role;

create or replace function public.cancel_task_run(
    p_run_id uuid, p_compensate boolean default false
)
returns boolean
language sql
volatile
security invoker
set search_path = ''
as $$
    select stepsync.cancel_task_run(p_run_id, p_compensate)
$$;

comment on function public.cancel_task_run(uuid, boolean) is
'Cancels the run: true if it was pending or running, false if it had already ended. For '
'the run''s owner and the service; a worker''s later complete of a cancelled step is '
'rejected. With p_compensate, the completed steps that have compensate_instructions are '
'undone first (newest first): the run stays running until they are over, then ends '
'cancelled with its compensation outcome; false if its compensation was already under '
'way.';

revoke all on function public.cancel_task_run(uuid, boolean) from public, anon;
grant execute on function public.cancel_task_run(uuid, boolean) to authenticated, service_role;

create or replace function stepsync.reap_expired_leases(p_grace_seconds integer default 0)
returns integer
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    expired record;
    reaped integer := 0;
begin
    -- After the database restarts, every lease ran out while no worker could renew it.
    -- Their owners get p_grace_seconds to reconnect and report (a late result of the lease
    -- owner is accepted while the step has not been taken over) before any is reaped.
    if now() < pg_catalog.pg_postmaster_start_time() + make_interval(secs => p_grace_seconds)
        then
        return 0;
    end if;

    -- Each expired lease is a lost lease (record_step_failure): the step is due again at
    -- once without using an attempt, or fails once it lost too many. A lease renewed or
    -- re-claimed meanwhile no longer matches its token and is left alone.
    for expired in
        select s.id, s.lease_token, s.lease_owner
        from public.task_step_executions as s
        where s.status = 'running' and s.lease_expires_at < now()
        order by s.lease_expires_at
    loop
        if stepsync.record_step_failure(
            expired.id,
            expired.lease_token,
            format('lease of worker %s expired', expired.lease_owner),
            true,
            true
        ) <> 'stale' then
            reaped := reaped + 1;
        end if;
    end loop;
    return reaped;
end
$$;

comment on function stepsync.reap_expired_leases(integer) is
'Steps whose lease expired go back to the queue (due now) without using an attempt, up to '
'their max_lost_leases, else fail per on_failure. Nothing is reaped within p_grace_seconds '
'of the database''s start, so that owners can report what finished during the outage. '
'Returns how many were reaped. Service only.';

revoke all on function stepsync.reap_expired_leases(integer) from public, anon, authenticated;
grant execute on function stepsync.reap_expired_leases(integer) to service_role;
