-- Cancelling a run (owner or service) and reaping expired leases (service).

create or replace function stepsync.cancel_task_run(p_run_id uuid)
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
    select r.* into run
    from public.agent_task_executions as r
    where r.id = p_run_id
    for no key update;
    if not found
        or (not stepsync.caller_is_service() and run.user_id is distinct from auth.uid()) then
        raise exception 'run % not found', p_run_id
            using errcode = 'P0002',
            hint = 'Check the run id; only the run''s owner and the service may cancel it.';
    end if;
    if run.status not in ('pending', 'running') then
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

    update public.agent_task_executions as r
    set
        cancelled_at = now(),
        cancelled_by = auth.uid()
    where r.id = p_run_id;
    perform stepsync.finish_run(p_run_id, 'cancelled', 'cancelled');
    return true;
end
$$;

comment on function stepsync.cancel_task_run(uuid) is
'Cancels a pending or running run and its unfinished steps, for the run''s owner or the '
'service. Use public.cancel_task_run.';

revoke all on function stepsync.cancel_task_run(uuid) from public;
grant execute on function stepsync.cancel_task_run(uuid) to authenticated, service_role;

create or replace function public.cancel_task_run(p_run_id uuid)
returns boolean
language sql
volatile
security invoker
set search_path = ''
as $$
    select stepsync.cancel_task_run(p_run_id)
$$;

comment on function public.cancel_task_run(uuid) is
'Cancels the run: true if it was pending or running, false if it had already ended. For '
'the run''s owner and the service; a worker''s later complete of a cancelled step is '
'rejected.';

revoke all on function public.cancel_task_run(uuid) from public, anon;
grant execute on function public.cancel_task_run(uuid) to authenticated, service_role;

create or replace function stepsync.reap_expired_leases()
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
    -- Each expired lease is handled like a failed attempt that may retry at once (the
    -- worker died, the step did not necessarily fail); without attempts left the step
    -- fails and its on_failure applies. A lease renewed or re-claimed meanwhile no longer
    -- matches its token and is left alone.
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

comment on function stepsync.reap_expired_leases() is
'Steps whose lease expired go back to the queue (due now) if they have attempts left, else '
'fail per on_failure. Returns how many were reaped. Service only.';

revoke all on function stepsync.reap_expired_leases() from public, anon, authenticated;
grant execute on function stepsync.reap_expired_leases() to service_role;
