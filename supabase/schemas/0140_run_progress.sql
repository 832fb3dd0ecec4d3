-- Run progress: how a run moves forward between steps, the bookkeeping every step
-- transition does (run counters), and what a finished run leaves behind (the task's
-- counters, the definition's latest-run snapshot).
--
-- Lock order, everywhere: the run row first (for no key update), then its step rows.
-- cancel, complete, fail and the reaper all follow it, so they cannot deadlock.
--
-- A run moves on in one place, advance_runs, for any number of runs at once: starting a
-- run, completing steps (complete_steps hands it every run its batch moved) and a failed
-- step that says `continue` all call it.
--
-- A finished run leaves three writes behind: the run row, the task's counters and the
-- definitions' latest-run snapshot (task_steps), the last two audited. The snapshot is
-- written when the run ends, not at every step transition: every statement on task_steps
-- runs its checks and is audited. finish_runs makes each of the three writes one
-- statement for all the runs it is given (complete_steps hands it every run its batch
-- ended), with one audit statement each; every changed row still gets its own audit row.
-- finish_run is finish_runs for one run, so both follow one code path.
--
-- A run's legacy status (what the app's UI reads) keeps its five values; how the run
-- turned out is in its outcome: a completed run whose failed steps all said `continue`
-- is `partial`, not `succeeded`. A run that stopped with compensations to run stays
-- running until they are over (0175_compensation.sql); advance_runs then ends it failed
-- (or cancelled, when a cancel asked for them) with its compensation outcome.

create or replace function stepsync.run_outcome(
    p_status public.task_execution_status_enum, p_steps_failed integer
)
returns public.task_run_outcome
language sql
immutable
set search_path = ''
as $$
    select case p_status
        when 'completed' then
            case when p_steps_failed > 0 then 'partial' else 'succeeded' end
        when 'failed' then 'failed'
        when 'cancelled' then 'cancelled'
    end::public.task_run_outcome
$$;

comment on function stepsync.run_outcome(public.task_execution_status_enum, integer) is
'The outcome of a run ending with p_status after p_steps_failed of its steps failed: '
'partial when it completed all the same, else its status (null while it goes on).';

revoke all on function stepsync.run_outcome(public.task_execution_status_enum, integer)
from public;
grant execute on function stepsync.run_outcome(public.task_execution_status_enum, integer)
to service_role;

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
    -- it: a JSON string verbatim, anything else as JSON); its outcome and compensation
    -- go into metadata too, for readers that know only the legacy columns.
    update public.agent_task_executions as r
    set
        status = p_status,
        outcome = stepsync.run_outcome(p_status, r.steps_failed),
        metadata = coalesce(r.metadata, '{}'::jsonb) || jsonb_strip_nulls(
            jsonb_build_object(
                'outcome', stepsync.run_outcome(p_status, r.steps_failed),
                'compensation', r.compensation
            )
        ),
        completed_at = now(),
        duration_ms = (extract(epoch from now() - coalesce(r.started_at, r.created_at)) * 1000)::integer,
        output = (
            select
                case
                    when jsonb_typeof(s.output) = 'string' then s.output #>> '{}'
                    else s.output::text
                end
            from public.task_step_executions as s
            where s.run_id = r.id and s.status = 'completed' and s.kind = 'step'
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
            and s.kind = 'step'
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

comment on function stepsync.finish_runs(uuid[], public.task_execution_status_enum, text) is
'Ends the given pending/running runs with p_status, one statement per write for all of '
'them: each run''s outcome (partial when completed with failed steps), output from its '
'last completed step and its timings, the tasks'' '
'execution counters (completed and failed runs only) and, for runs no newer run of their '
'task exists for, the definitions'' latest-run snapshot (task_steps.status, '
'execution_result). Runs already over are left alone.';

revoke all on function stepsync.finish_runs(uuid[], public.task_execution_status_enum, text)
from public, anon, authenticated;
grant execute on function stepsync.finish_runs(uuid[], public.task_execution_status_enum, text)
to service_role;

create or replace function stepsync.finish_run(
    p_run_id uuid,
    p_status public.task_execution_status_enum,
    p_error text default null
)
returns void
language sql
volatile
set search_path = ''
as $$
    select stepsync.finish_runs(array[p_run_id], p_status, p_error)
$$;

comment on function stepsync.finish_run(uuid, public.task_execution_status_enum, text) is
'Ends a pending/running run with p_status (finish_runs for one run): output from its last '
'completed step, timings, the task''s execution counters (completed and failed runs only) '
'and, unless a newer run of the task exists, the definitions'' latest-run snapshot.';

revoke all on function stepsync.finish_run(
    uuid, public.task_execution_status_enum, text
) from public;
grant execute on function stepsync.finish_run(
    uuid, public.task_execution_status_enum, text
) to service_role;

create or replace function stepsync.advance_runs(
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
    ended_plainly uuid[];
    ended_compensated uuid[];
    ended_cancelled uuid[];
    head_user uuid;
    head_fair_at timestamptz;
    unfair uuid[];
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
        exit when skipping is null;
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
        -- A run that was compensating ends failed, or cancelled when a cancel asked for
        -- the compensation, with the compensation's outcome; any other run completed.
        select
            array_agg(run.id) filter (where run.compensation is null),
            array_agg(run.id) filter (
                where run.compensation is not null and run.cancelled_at is null
            ),
            array_agg(run.id) filter (
                where run.compensation is not null and run.cancelled_at is not null
            )
        into ended_plainly, ended_compensated, ended_cancelled
        from unnest(ended) as finished (id)
        cross join lateral (
            select r.id, r.compensation, r.cancelled_at
            from public.agent_task_executions as r
            where r.id = finished.id
            limit 1
        ) as run;
        if ended_compensated is not null or ended_cancelled is not null then
            update public.agent_task_executions as r
            set compensation = case
                when exists (
                    select from public.task_step_executions as s
                    where s.run_id = r.id and s.kind = 'compensation' and s.status = 'failed'
                ) then 'failed'
                else 'completed'
            end::public.run_compensation_status
            where r.id = any(coalesce(ended_compensated, '{}') || ended_cancelled);
            perform stepsync.finish_runs(ended_compensated, 'failed');
            perform stepsync.finish_runs(ended_cancelled, 'cancelled');
        end if;
        perform stepsync.finish_runs(ended_plainly, 'completed');
    end if;
    -- Fairness: a hand-off jumps the queue, so it is made only when the queue would give
    -- the step to this user now anyway: nothing is due, the first due step is the same
    -- user's, or this step's place (after the user's last queued step) comes before it.
    -- Otherwise it is queued, and the worker's free slot claims in the fair order.
    if p_worker is not null and cardinality(handing_off) > 0 then
        select s.user_id, s.fair_at into head_user, head_fair_at
        from public.task_step_executions as s
        where s.status = 'queued' and s.run_after <= now()
        order by s.fair_at, s.id
        limit 1;
        if found then
            select
                coalesce(array_agg(offered.id) filter (where offered.fair), '{}'),
                coalesce(array_agg(offered.id) filter (where not offered.fair), '{}')
            into handing_off, unfair
            from (
                select
                    given.id,
                    step.user_id = head_user or greatest(
                        now(),
                        (
                            select last_queued.fair_at + (
                                select make_interval(secs => setting.value / 1000.0)
                                from stepsync.settings as setting
                                where setting.name = 'user_step_spacing_ms'
                            )
                            from public.task_step_executions as last_queued
                            where last_queued.user_id = step.user_id
                                and last_queued.status = 'queued'
                            order by last_queued.fair_at desc
                            limit 1
                        )
                    ) <= head_fair_at as fair
                from unnest(handing_off) as given (id)
                cross join lateral (
                    select s.user_id from public.task_step_executions as s
                    where s.id = given.id
                    limit 1
                ) as step
            ) as offered;
            queueing := queueing || unfair;
        end if;
    else
        queueing := queueing || coalesce(handing_off, '{}');
        handing_off := '{}';
    end if;
    -- Only with steps to queue: most calls hand every step off or end the run. Each
    -- user's queued steps are spaced apart in the claim order (fair_at), after the last
    -- one the user already has queued: a user with hundreds queued takes turns with one
    -- who has a single step.
    if cardinality(queueing) > 0 then
        update public.task_step_executions as s
        set
            status = 'queued',
            run_after = now(),
            fair_at = greatest(
                now(),
                (
                    -- The setting is read once per statement, and only when a user has
                    -- steps queued already.
                    select last_queued.fair_at + (
                        select make_interval(secs => setting.value / 1000.0)
                        from stepsync.settings as setting
                        where setting.name = 'user_step_spacing_ms'
                    )
                    from public.task_step_executions as last_queued
                    where last_queued.user_id = s.user_id and last_queued.status = 'queued'
                    order by last_queued.fair_at desc
                    limit 1
                )
            ),
            queued_at = now(),
            updated_at = now()
        where s.id = any(queueing);
    end if;
    if p_worker is not null and cardinality(handing_off) > 0 then
        return query
        select * from stepsync.lease_steps(handing_off, p_worker, p_lease_seconds);
    end if;
end
$$;

comment on function stepsync.advance_runs(uuid[], text, integer) is
'Moves the given running runs forward, set-based: each run''s next pending step is '
'queued (in its user''s fair place, fair_at), or with p_worker, when it is plainly due (no '
'skip_if) and no other user''s step is waiting ahead of it, leased to that worker for '
'p_lease_seconds (returned: the hand-off); steps whose skip_if holds are skipped on the '
'way; a run with no step left is completed, or when it was compensating, failed (or '
'cancelled) with its compensation outcome. A run with a step in flight is left alone. '
'Service only.';

revoke all on function stepsync.advance_runs(uuid[], text, integer)
from public, anon, authenticated;
grant execute on function stepsync.advance_runs(uuid[], text, integer) to service_role;

create or replace function stepsync.on_step_status_change()
returns trigger
language plpgsql
set enable_seqscan = off
set search_path = ''
as $$
begin
    -- Run counters follow final step statuses (cancelled steps are not counted). The run
    -- row is already locked by whoever moves the step (lock order: run, then steps).
    update public.agent_task_executions as r
    set
        steps_completed = r.steps_completed + (new.status = 'completed')::integer,
        steps_failed = r.steps_failed + (new.status = 'failed')::integer,
        steps_skipped = r.steps_skipped + (new.status = 'skipped')::integer,
        updated_at = now()
    where r.id = new.run_id;
    return null;
end
$$;

comment on function stepsync.on_step_status_change() is
'Trigger: after a step execution reaches a counted final status (completed, failed, '
'skipped), add it to its run''s step counters. Compensations are not counted there.';

revoke all on function stepsync.on_step_status_change() from public;
grant execute on function stepsync.on_step_status_change() to service_role;

create or replace trigger task_step_executions_status_change
after update of status on public.task_step_executions
for each row
when (
    old.status is distinct from new.status
    and new.status in ('completed', 'failed', 'skipped')
    and new.kind = 'step'
)
execute function stepsync.on_step_status_change();

comment on trigger task_step_executions_status_change on public.task_step_executions is
'Keeps the run''s step counters in step with final step statuses.';
