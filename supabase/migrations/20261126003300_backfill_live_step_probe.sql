-- Backfill: whether a task already has a live step is one index probe per task of the
-- batch, never a scan of task_steps.
--
-- The batch and the dry run asked `exists (select from task_steps where task_id = t.id
-- and deleted_at is null)` in their select lists. PostgreSQL may run such a subquery
-- "hashed": it reads every live step once per statement and looks the batch's tasks up in
-- the hash. The plans are cached, so once chosen (small task_steps at the start of a
-- backfill) every later batch read all the steps created so far: the work per batch grew
-- with the table and the whole backfill grew with its square (each batch of 5,000 tasks
-- read up to a million steps). A lateral subquery with LIMIT 1 cannot be hashed: it is a
-- probe of task_steps by task_id for each task, so a batch costs the same at the first
-- task and at the millionth.
--
-- Only the two function bodies change (same signatures, rules and results); grants stay.

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
            t.instructions !~ '\S' as is_blank,
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
        where not b.has_steps and not b.is_blank and not b.is_marker
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
            case when b.is_blank then 'blank_instructions' else 'marker_without_steps' end,
            case
                when b.is_blank then 'instructions are empty or whitespace: no valid step'
                else 'multi-step marker text but no live steps: the steps cannot be '
                    || 'restored from the marker'
            end
        from batch as b
        where not b.has_steps and (b.is_blank or b.is_marker)
        on conflict do nothing
    ),

    counted as (
        select
            count(*) filter (where b.has_steps and not b.is_marker) as already_has_steps,
            count(*) filter (where b.has_steps and b.is_marker) as marker_with_steps,
            count(*) filter (
                where not b.has_steps and b.is_marker and not b.is_blank
            ) as marker_without_steps,
            count(*) filter (where not b.has_steps and b.is_blank) as blank_instructions
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
            t.instructions !~ '\S' as is_blank,
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
'marker_without_steps, blank_instructions, and among to_create long_instructions, unnamed, '
'status_*) and up to p_samples task ids each, for the next p_batch_size tasks after p_after.';
