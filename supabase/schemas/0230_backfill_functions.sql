-- Backfill of legacy single-instruction tasks into single-step workflows.
--
-- Each function call is one batch: the caller runs it in its own short transaction (with
-- lock_timeout and statement_timeout set) and commits. Batches walk agent_tasks in
-- keyset order of id; the run's checkpoint moves in the same transaction as the steps it
-- created, so a killed process loses at most the batch in flight.
--
-- The classification of a task is spelled out inline in each function (no function call
-- per row: a function with a fixed search_path cannot be inlined, and at a million rows
-- the calls would cost more than the inserts). The rules, identical everywhere:
--   blank:    no character but Unicode whitespace            (stepsync.is_blank, spelt out)
--   oversized: octet_length(instructions) > the instructions_bytes limit
--   marker:   instructions ~ '^\s*Multi-step task with [0-9]+ step'  (earlier variant)
--   long:     char_length(instructions) > 10000
--   unnamed:  btrim(name, E' \t\r\n\f\v') = ''
--   step status: completed/failed/cancelled tasks keep that status, others are pending.
--
-- Whether a task already has a live step is a lateral subquery with LIMIT 1: one probe
-- of task_steps by task_id per task of the batch. An `exists (...)` in the select list
-- may be run "hashed" instead, reading every live step once per statement; the plans are
-- cached, so once chosen (task_steps is small when a backfill starts) every later batch
-- would read all the steps created so far, and the whole backfill would grow with the
-- square of its size.

create or replace function stepsync.backfill_start_run(
    p_batch_size integer, p_options jsonb default '{}'::jsonb
)
returns uuid
language plpgsql
volatile
set search_path = ''
as $$
declare
    run_id uuid;
begin
    if p_batch_size is null or p_batch_size not between 1 and 100000 then
        raise exception 'batch size must be between 1 and 100000, got %', p_batch_size
            using errcode = '22023';
    end if;
    insert into stepsync.backfill_runs (batch_size, options, tasks_at_start)
    values (
        p_batch_size,
        coalesce(p_options, '{}'::jsonb),
        (select count(*) from public.agent_tasks)
    )
    returning id into run_id;
    return run_id;
end
$$;

comment on function stepsync.backfill_start_run(integer, jsonb) is
'Record a new legacy-task backfill run (status running, no checkpoint yet); returns its id.';

revoke all on function stepsync.backfill_start_run(integer, jsonb) from public;
grant execute on function stepsync.backfill_start_run(integer, jsonb) to service_role;

create or replace function stepsync.backfill_legacy_tasks_batch(
    p_run_id uuid, p_batch_size integer default null
)
returns table (tasks_scanned integer, steps_created integer, last_task_id uuid, done boolean)
language plpgsql
volatile
set search_path = ''
as $$
declare
    run stepsync.backfill_runs;
    ids uuid[];
    batch_limit integer;
    scanned integer;
    created integer;
begin
    -- The run row is the checkpoint; NOWAIT makes a second process on the same run fail
    -- at once instead of queueing behind the first.
    select * into run from stepsync.backfill_runs as r where r.id = p_run_id
    for update nowait;
    if not found then
        raise exception 'backfill run % does not exist', p_run_id using errcode = 'P0002';
    end if;
    if run.status <> 'running' then
        raise exception 'backfill run % is %, it cannot continue', p_run_id, run.status
            using errcode = '55000';
    end if;
    -- A resumed run may go on with a different batch size (smaller, after timeouts).
    batch_limit := coalesce(p_batch_size, run.batch_size);
    if batch_limit not between 1 and 100000 then
        raise exception 'batch size must be between 1 and 100000, got %', batch_limit
            using errcode = '22023';
    end if;

    -- Audit rows written by this transaction name the run; the compatibility triggers
    -- have nothing to add to what the batch writes itself.
    perform set_config('stepsync.audit_tag', p_run_id::text, true);
    perform set_config('stepsync.compat_sync', 'off', true);

    -- 1. Take the next tasks and hold them: a concurrent edit of their instructions waits
    -- for this batch, then the compatibility trigger sees the new step and syncs it.
    if run.last_task_id is null then
        select array_agg(locked.id order by locked.id) into ids
        from (
            select t.id from public.agent_tasks as t
            order by t.id
            limit batch_limit
            for share
        ) as locked;
    else
        select array_agg(locked.id order by locked.id) into ids
        from (
            select t.id from public.agent_tasks as t
            where t.id > run.last_task_id
            order by t.id
            limit batch_limit
            for share
        ) as locked;
    end if;
    scanned := coalesce(cardinality(ids), 0);

    -- 2. A new statement, so a new snapshot: the tasks' current text and steps.
    with batch as (
        select
            t.id,
            t.name,
            t.instructions,
            t.status,
            t.instructions !~ (
                '[^[:space:]\u0085\u00a0\u1680\u180e\u2000-\u200f\u2028\u2029\u202f\u205f'
                || '\u2060-\u2064\u3000\ufeff]'
            ) as is_blank,
            octet_length(t.instructions) > stepsync.input_limit('instructions_bytes')
                as is_oversized,
            t.instructions ~ '^\s*Multi-step task with [0-9]+ step' as is_marker,
            live.task_id is not null as has_steps
        from public.agent_tasks as t
        left join lateral (
            select s.task_id from public.task_steps as s
            where s.task_id = t.id and s.deleted_at is null
            limit 1
        ) as live on true
        where t.id = any(ids)
    ),

    eligible as (
        select b.*
        from batch as b
        where not b.has_steps and not b.is_blank and not b.is_oversized and not b.is_marker
    ),

    inserted as (
        insert into public.task_steps (task_id, step_order, step_name, instructions, status)
        select
            e.id,
            1,
            coalesce(
                nullif(left(btrim(e.name, e' \t\r\n\f\v'), 200), ''),
                nullif(
                    btrim(left(regexp_replace(
                        btrim(left(e.instructions, 400), e' \t\r\n\f\v'), '\s+', ' ', 'g'
                    ), 80)),
                    ''
                ),
                'Step 1'
            ),
            e.instructions,
            (case e.status
                when 'completed' then 'completed'
                when 'failed' then 'failed'
                when 'cancelled' then 'cancelled'
                else 'pending'
            end)::public.task_step_status
        from eligible as e
        order by e.id
        returning id, task_id
    ),

    origin as (
        insert into stepsync.backfill_step_origin (backfill_run_id, task_id, step_id)
        select p_run_id, i.task_id, i.id from inserted as i
        order by i.task_id
    ),

    exceptions as (
        insert into stepsync.backfill_exceptions (backfill_run_id, task_id, category, detail)
        select
            p_run_id,
            b.id,
            case
                when b.is_blank then 'blank_instructions'
                when b.is_oversized then 'oversized_instructions'
                else 'marker_without_steps'
            end,
            case
                when b.is_blank then 'instructions are empty or whitespace: no valid step'
                when b.is_oversized then format(
                    'instructions are %s bytes, more than a step''s limit of %s: no valid step',
                    octet_length(b.instructions), stepsync.input_limit('instructions_bytes')
                )
                else 'multi-step marker text but no live steps: the steps cannot be '
                    || 'restored from the marker'
            end
        from batch as b
        where not b.has_steps and (b.is_blank or b.is_oversized or b.is_marker)
        on conflict do nothing
    ),

    counted as (
        select
            count(*) filter (where b.has_steps and not b.is_marker) as already_has_steps,
            count(*) filter (where b.has_steps and b.is_marker) as marker_with_steps,
            count(*) filter (
                where not b.has_steps and b.is_marker and not b.is_blank and not b.is_oversized
            ) as marker_without_steps,
            count(*) filter (where not b.has_steps and b.is_blank) as blank_instructions,
            count(*) filter (
                where not b.has_steps and b.is_oversized and not b.is_blank
            ) as oversized_instructions
        from batch as b
    ),

    flagged as (
        select
            count(*) as steps_created,
            count(*) filter (where char_length(e.instructions) > 10000) as long_instructions,
            count(*) filter (where btrim(e.name, e' \t\r\n\f\v') = '') as unnamed,
            count(*) filter (where e.status = 'paused') as status_paused,
            count(*) filter (where e.status = 'completed') as status_completed,
            count(*) filter (where e.status = 'failed') as status_failed,
            count(*) filter (where e.status = 'cancelled') as status_cancelled
        from eligible as e
    )

    update stepsync.backfill_runs as r
    set
        last_task_id = coalesce(ids[cardinality(ids)], r.last_task_id),
        batches = r.batches + 1,
        tasks_scanned = r.tasks_scanned + scanned,
        steps_created = r.steps_created + f.steps_created,
        already_has_steps = r.already_has_steps + c.already_has_steps,
        marker_with_steps = r.marker_with_steps + c.marker_with_steps,
        marker_without_steps = r.marker_without_steps + c.marker_without_steps,
        blank_instructions = r.blank_instructions + c.blank_instructions,
        oversized_instructions = r.oversized_instructions + c.oversized_instructions,
        long_instructions = r.long_instructions + f.long_instructions,
        unnamed = r.unnamed + f.unnamed,
        status_paused = r.status_paused + f.status_paused,
        status_completed = r.status_completed + f.status_completed,
        status_failed = r.status_failed + f.status_failed,
        status_cancelled = r.status_cancelled + f.status_cancelled,
        updated_at = now(),
        status = case when scanned < batch_limit then 'completed' else r.status end,
        finished_at = case when scanned < batch_limit then now() end
    from counted as c, flagged as f
    where r.id = p_run_id
    returning f.steps_created into created;

    return query select
        scanned,
        created,
        coalesce(ids[cardinality(ids)], run.last_task_id),
        scanned < batch_limit;
end
$$;

comment on function stepsync.backfill_legacy_tasks_batch(uuid, integer) is
'One batch of a backfill run: the next p_batch_size tasks (default: the run''s batch '
'size) after the checkpoint get step 1 where they have no live step and their '
'instructions make a valid step; counters, exceptions and the checkpoint move in the '
'same transaction. Call once per transaction.';

revoke all on function stepsync.backfill_legacy_tasks_batch(uuid, integer) from public;
grant execute on function stepsync.backfill_legacy_tasks_batch(uuid, integer) to service_role;

create or replace function stepsync.backfill_plan_batch(
    p_after uuid, p_batch_size integer, p_samples integer default 5
)
returns table (tasks_scanned integer, last_task_id uuid, counts jsonb, samples jsonb)
language sql
stable
set search_path = ''
as $$
    with batch as (
        select
            t.id,
            t.status,
            t.instructions !~ (
                '[^[:space:]\u0085\u00a0\u1680\u180e\u2000-\u200f\u2028\u2029\u202f\u205f'
                || '\u2060-\u2064\u3000\ufeff]'
            ) as is_blank,
            octet_length(t.instructions) > stepsync.input_limit('instructions_bytes')
                as is_oversized,
            t.instructions ~ '^\s*Multi-step task with [0-9]+ step' as is_marker,
            char_length(t.instructions) > 10000 as is_long,
            btrim(t.name, e' \t\r\n\f\v') = '' as is_unnamed,
            live.task_id is not null as has_steps
        from public.agent_tasks as t
        left join lateral (
            select s.task_id from public.task_steps as s
            where s.task_id = t.id and s.deleted_at is null
            limit 1
        ) as live on true
        where p_after is null or t.id > p_after
        order by t.id
        limit p_batch_size
    ),

    categorised as (
        select
            b.*,
            case
                when b.has_steps and b.is_marker then 'marker_with_steps'
                when b.has_steps then 'already_has_steps'
                when b.is_blank then 'blank_instructions'
                when b.is_oversized then 'oversized_instructions'
                when b.is_marker then 'marker_without_steps'
                else 'to_create'
            end as category
        from batch as b
    ),

    tagged as (
        select c.id, c.category as tag from categorised as c
        union all
        select c.id, 'long_instructions' from categorised as c
        where c.category = 'to_create' and c.is_long
        union all
        select c.id, 'unnamed' from categorised as c
        where c.category = 'to_create' and c.is_unnamed
        union all
        select c.id, 'status_' || c.status from categorised as c
        where c.category = 'to_create' and c.status <> 'active'
    ),

    numbered as (
        select
            t.tag,
            t.id,
            row_number() over (partition by t.tag order by t.id) as n,
            count(*) over (partition by t.tag) as total
        from tagged as t
    )

    select
        (select count(*)::integer from batch),
        (select b.id from batch as b order by b.id desc limit 1),
        coalesce(
            (select jsonb_object_agg(n.tag, n.total) from numbered as n where n.n = 1),
            '{}'::jsonb
        ),
        coalesce(
            (
                select jsonb_object_agg(s.tag, s.ids)
                from (
                    select n.tag, jsonb_agg(n.id order by n.id) as ids
                    from numbered as n
                    where n.n <= p_samples
                    group by n.tag
                ) as s
            ),
            '{}'::jsonb
        );
$$;

comment on function stepsync.backfill_plan_batch(uuid, integer, integer) is
'Dry run of one batch: counts by category (to_create, already_has_steps, marker_with_steps, '
'marker_without_steps, blank_instructions, oversized_instructions, and among to_create '
'long_instructions, unnamed, '
'status_*) and up to p_samples task ids each, for the next p_batch_size tasks after p_after.';

revoke all on function stepsync.backfill_plan_batch(uuid, integer, integer) from public;
grant execute on function stepsync.backfill_plan_batch(uuid, integer, integer) to service_role;

create or replace function stepsync.backfill_verify_batch(
    p_after uuid, p_batch_size integer, p_max_exceptions integer default 100
)
returns table (
    tasks_scanned integer,
    last_task_id uuid,
    eligible integer,
    verified integer,
    tasks_checksum numeric,
    steps_checksum numeric,
    exceptions jsonb
)
language sql
stable
set search_path = ''
as $$
    with batch as (
        select t.id, t.instructions
        from public.agent_tasks as t
        where p_after is null or t.id > p_after
        order by t.id
        limit p_batch_size
    ),

    checked as (
        select
            b.id,
            b.instructions,
            live.live_steps,
            live.first_order,
            live.first_instructions
        from batch as b
        cross join lateral (
            select
                count(*) as live_steps,
                min(s.step_order) as first_order,
                (array_agg(s.instructions order by s.step_order, s.id))[1]
                    as first_instructions
            from public.task_steps as s
            where s.task_id = b.id and s.deleted_at is null
        ) as live
        where b.instructions ~ (
            '[^[:space:]\u0085\u00a0\u1680\u180e\u2000-\u200f\u2028\u2029\u202f\u205f'
            || '\u2060-\u2064\u3000\ufeff]'
        )
            and octet_length(b.instructions) <= stepsync.input_limit('instructions_bytes')
            and b.instructions !~ '^\s*Multi-step task with [0-9]+ step'
    ),

    judged as (
        select
            c.*,
            case
                when c.live_steps = 0 then 'no live step'
                when c.live_steps > 1 then c.live_steps || ' live steps, expected one'
                when c.first_order <> 1 then 'its only step has order ' || c.first_order
                when c.first_instructions <> c.instructions
                    then 'step 1 instructions differ from the task''s'
            end as problem
        from checked as c
    )

    select
        (select count(*)::integer from batch),
        (select b.id from batch as b order by b.id desc limit 1),
        (select count(*)::integer from judged),
        (select count(*)::integer from judged as j where j.problem is null),
        coalesce(
            (
                select sum(hashtextextended(j.id::text || ':' || j.instructions, 0)::numeric)
                from judged as j
            ),
            0
        ),
        coalesce(
            (
                select
                    sum(
                        hashtextextended(
                            j.id::text || ':' || j.first_instructions, 0
                        )::numeric
                    )
                from judged as j
                where j.live_steps = 1 and j.first_order = 1
            ),
            0
        ),
        coalesce(
            (
                select jsonb_agg(jsonb_build_object('task_id', e.id, 'problem', e.problem))
                from (
                    select j.id, j.problem from judged as j
                    where j.problem is not null
                    order by j.id
                    limit p_max_exceptions
                ) as e
            ),
            '[]'::jsonb
        );
$$;

comment on function stepsync.backfill_verify_batch(uuid, integer, integer) is
'Verify one batch of tasks after p_after: every task whose instructions make a valid step '
'(not blank, not the multi-step marker) must have exactly one live step, at order 1, with '
'the same instructions. Returns counts, checksums of the task and step texts (equal sums '
'when all match) and up to p_max_exceptions problems.';

revoke all on function stepsync.backfill_verify_batch(uuid, integer, integer) from public;
grant execute on function stepsync.backfill_verify_batch(uuid, integer, integer)
to service_role;

create or replace function stepsync.backfill_rollback_batch(
    p_run_id uuid, p_after uuid, p_batch_size integer
)
returns table (
    steps_seen integer, steps_removed integer, steps_kept integer, last_task_id uuid,
    done boolean
)
language plpgsql
volatile
set search_path = ''
as $$
declare
    run stepsync.backfill_runs;
    step_ids uuid[];
    task_ids uuid[];
    seen integer;
    removed integer;
    forgotten integer;
begin
    select * into run from stepsync.backfill_runs as r where r.id = p_run_id
    for update nowait;
    if not found then
        raise exception 'backfill run % does not exist', p_run_id using errcode = 'P0002';
    end if;
    if p_batch_size is null or p_batch_size not between 1 and 100000 then
        raise exception 'batch size must be between 1 and 100000, got %', p_batch_size
            using errcode = '22023';
    end if;
    perform set_config('stepsync.audit_tag', p_run_id::text, true);
    perform set_config('stepsync.compat_sync', 'off', true);

    select array_agg(o.step_id order by o.task_id), array_agg(o.task_id order by o.task_id)
    into step_ids, task_ids
    from (
        select o.step_id, o.task_id
        from stepsync.backfill_step_origin as o
        where o.backfill_run_id = p_run_id and (p_after is null or o.task_id > p_after)
        order by o.task_id
        limit p_batch_size
    ) as o;
    seen := coalesce(cardinality(step_ids), 0);

    -- Hold the tasks so no one adds a step beside the one about to go.
    perform from public.agent_tasks as t where t.id = any(task_ids) for share;

    -- A step goes unless its task has another live step now (the user made it a
    -- multi-step task): removing it would leave a gap at order 1.
    with doomed as (
        select s.id
        from public.task_steps as s
        where s.id = any(step_ids)
            and (
                s.deleted_at is not null
                or not exists (
                    select from public.task_steps as other
                    where other.task_id = s.task_id
                        and other.deleted_at is null
                        and other.id <> s.id
                )
            )
    ),

    deleted as (
        delete from public.task_steps as s
        using doomed as d
        where s.id = d.id
        returning s.id
    ),

    cleared as (
        -- Origin rows of removed steps, and of steps already gone some other way.
        delete from stepsync.backfill_step_origin as o
        where o.backfill_run_id = p_run_id
            and o.task_id = any(task_ids)
            and (
                o.step_id in (select d.id from deleted as d)
                or not exists (select from public.task_steps as s where s.id = o.step_id)
            )
        returning o.step_id
    )

    select (select count(*) from deleted), (select count(*) from cleared)
    into removed, forgotten;

    update stepsync.backfill_runs as r
    set
        rolled_back_steps = r.rolled_back_steps + removed,
        rollback_kept_steps = case
            when p_after is null then seen - forgotten
            else r.rollback_kept_steps + seen - forgotten
        end,
        status = case when seen < p_batch_size then 'rolled_back' else r.status end,
        rolled_back_at = case when seen < p_batch_size then now() else r.rolled_back_at end,
        updated_at = now()
    where r.id = p_run_id;

    return query select
        seen,
        removed,
        seen - forgotten,
        coalesce(task_ids[seen], p_after),
        seen < p_batch_size;
end
$$;

comment on function stepsync.backfill_rollback_batch(uuid, uuid, integer) is
'One batch of a rollback: removes the steps run p_run_id created (tasks after p_after), '
'except those whose task has other live steps now (kept and counted). Steps created by '
'users or the compatibility triggers are never touched: only backfill_step_origin rows '
'of this run are considered.';

revoke all on function stepsync.backfill_rollback_batch(uuid, uuid, integer) from public;
grant execute on function stepsync.backfill_rollback_batch(uuid, uuid, integer)
to service_role;
