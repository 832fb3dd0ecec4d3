-- Online compatibility between the legacy single-instruction code path and task_steps,
-- while old and new code run side by side:
--   * a task inserted the legacy way (instructions only) gets step 1 at once;
--   * editing a single-step task's instructions updates its step 1, and editing the
--     step updates the task's instructions;
--   * a task with several live steps keeps a readable summary in its instructions
--     ("Multi-step task with 3 steps: 1. Fetch; 2. Summarise; 3. Send").
--
-- Recursion guard: while one side writes the other, the transaction-local setting
-- stepsync.compat_sync is 'off' and every trigger here returns at once. The backfill sets
-- it too, since it writes both sides consistently itself. Any session can set a setting,
-- so 'off' counts only where one of these writers set it: for the service (the backfill)
-- and inside a trigger (the writes these triggers make); an API user who sets it still
-- gets the rules. The flag legacy_task_compat switches all of this off (for a full
-- rollback to the legacy behaviour).
--
-- The trigger functions are SECURITY DEFINER (owner rights) because a legacy writer, an
-- API user, can neither read the flag nor always see every step; PostgreSQL refuses to
-- call a trigger function other than as a trigger, and a trigger only fires for rows the
-- writer's own statement reached through RLS. The functions they call are invokers with
-- execute revoked from everyone: they run with the trigger's rights and nobody else's.

insert into stepsync.feature_flags (name, enabled, rollout_percent, description)
values (
    'legacy_task_compat',
    true,
    100,
    'Keep legacy agent_tasks.instructions and task_steps in sync (compatibility triggers). '
    'Global on/off only.'
)
on conflict (name) do nothing;

create or replace function stepsync.legacy_compat_active()
returns boolean
language sql
stable
set search_path = ''
as $$
    select (
        coalesce(current_setting('stepsync.compat_sync', true), '') <> 'off'
        or (pg_catalog.pg_trigger_depth() <= 1 and not stepsync.caller_is_service())
    )
        and coalesce(
            (select f.enabled from stepsync.feature_flags as f
                where f.name = 'legacy_task_compat'),
            true
        );
$$;

comment on function stepsync.legacy_compat_active() is
'Whether the compatibility triggers act now: the flag legacy_task_compat is on and this '
'transaction is not already inside a compatibility write (stepsync.compat_sync = off, '
'honoured for the service and inside triggers only).';

revoke all on function stepsync.legacy_compat_active() from public;

create or replace function stepsync.create_legacy_step(p_task public.agent_tasks)
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    previous text := current_setting('stepsync.compat_sync', true);
begin
    -- Same rules as stepsync.backfill_legacy_tasks_batch (name, status).
    perform set_config('stepsync.compat_sync', 'off', true);
    insert into public.task_steps (task_id, step_order, step_name, instructions, status)
    values (
        p_task.id,
        1,
        coalesce(
            nullif(left(btrim(p_task.name, e' \t\r\n\f\v'), 200), ''),
            nullif(
                btrim(left(regexp_replace(
                    btrim(left(p_task.instructions, 400), e' \t\r\n\f\v'), '\s+', ' ', 'g'
                ), 80)),
                ''
            ),
            'Step 1'
        ),
        p_task.instructions,
        (case p_task.status
            when 'completed' then 'completed'
            when 'failed' then 'failed'
            when 'cancelled' then 'cancelled'
            else 'pending'
        end)::public.task_step_status
    );
    perform set_config('stepsync.compat_sync', coalesce(previous, ''), true);
end
$$;

comment on function stepsync.create_legacy_step(public.agent_tasks) is
'Give a legacy task its step 1 (name from the task, or derived from the instructions; '
'status from the task status), exactly as the backfill does.';

revoke all on function stepsync.create_legacy_step(public.agent_tasks) from public;

create or replace function stepsync.compat_task_inserted()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
    if not stepsync.legacy_compat_active()
        or stepsync.is_blank(new.instructions)
        or octet_length(new.instructions) > stepsync.input_limit('instructions_bytes')
        or new.instructions ~ '^\s*Multi-step task with [0-9]+ step'
        or exists (
            select from public.task_steps as s
            where s.task_id = new.id and s.deleted_at is null
        ) then
        return null;
    end if;
    perform stepsync.create_legacy_step(new);
    return null;
end
$$;

comment on function stepsync.compat_task_inserted() is
'After a legacy insert into agent_tasks: the task gets step 1 when its instructions make '
'a valid step (blank, over-long and multi-step marker texts are left to the backfill '
'report).';

revoke all on function stepsync.compat_task_inserted() from public;

create or replace function stepsync.compat_task_instructions_changed()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    live_steps integer;
    previous text := current_setting('stepsync.compat_sync', true);
begin
    if not stepsync.legacy_compat_active() then
        return null;
    end if;
    select count(*) into live_steps
    from public.task_steps as s
    where s.task_id = new.id and s.deleted_at is null;

    if live_steps = 0 then
        if not stepsync.is_blank(new.instructions)
            and octet_length(new.instructions) <= stepsync.input_limit('instructions_bytes')
            and new.instructions !~ '^\s*Multi-step task with [0-9]+ step' then
            perform stepsync.create_legacy_step(new);
        end if;
    elsif live_steps = 1 then
        if stepsync.is_blank(new.instructions) then
            raise exception 'instructions of task % cannot be blank: they are its step 1',
                new.id
                using errcode = '23514',
                hint = 'Give the task instructions, or delete its step first.';
        end if;
        if octet_length(new.instructions) > stepsync.input_limit('instructions_bytes') then
            raise exception 'instructions of task % are % bytes, more than a step''s limit '
            'of %: they are its step 1', new.id, octet_length(new.instructions),
                stepsync.input_limit('instructions_bytes')
                using errcode = '23514';
        end if;
        perform set_config('stepsync.compat_sync', 'off', true);
        update public.task_steps as s
        set instructions = new.instructions, updated_at = now()
        where s.task_id = new.id
            and s.deleted_at is null
            and s.instructions is distinct from new.instructions;
        perform set_config('stepsync.compat_sync', coalesce(previous, ''), true);
    elsif new.instructions !~ '^\s*Multi-step task with [0-9]+ step' then
        raise exception 'task % has % steps: its instructions are a summary of them',
            new.id, live_steps
            using errcode = '23514',
            hint = 'Edit the steps (save_task_steps or task_steps) instead.';
    end if;
    return null;
end
$$;

comment on function stepsync.compat_task_instructions_changed() is
'After agent_tasks.instructions changes: a single-step task''s step 1 takes the new text; '
'a task without live steps gets step 1; a multi-step task refuses free text (its '
'instructions summarise its steps).';

revoke all on function stepsync.compat_task_instructions_changed() from public;

create or replace function stepsync.sync_task_instructions(p_task_ids uuid[])
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    previous text := current_setting('stepsync.compat_sync', true);
begin
    perform set_config('stepsync.compat_sync', 'off', true);
    update public.agent_tasks as t
    set instructions = live.text, updated_at = now()
    from (
        select
            s.task_id,
            case
                when count(*) = 1 then min(s.instructions)
                else format(
                    'Multi-step task with %s steps: %s',
                    count(*),
                    string_agg(
                        format('%s. %s', s.step_order, s.step_name), '; '
                        order by s.step_order, s.id
                    )
                )
            end as text
        from public.task_steps as s
        where s.task_id = any(p_task_ids) and s.deleted_at is null
        group by s.task_id
    ) as live
    where t.id = live.task_id and t.instructions is distinct from live.text;
    perform set_config('stepsync.compat_sync', coalesce(previous, ''), true);
end
$$;

comment on function stepsync.sync_task_instructions(uuid[]) is
'Write each task''s instructions from its live steps: the text of its only step, or a '
'"Multi-step task with N steps: 1. name; …" summary. Tasks without live steps keep theirs.';

revoke all on function stepsync.sync_task_instructions(uuid[]) from public;

create or replace function stepsync.compat_steps_changed()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    task_ids uuid[];
begin
    if not stepsync.legacy_compat_active() then
        return null;
    end if;
    if tg_op = 'INSERT' then
        select array_agg(distinct n.task_id) into task_ids from new_rows as n;
    elsif tg_op = 'DELETE' then
        select array_agg(distinct o.task_id) into task_ids from old_rows as o;
    else
        -- Only changes the task's text depends on; run snapshots (status,
        -- execution_result) written by the engine do not count.
        select array_agg(distinct changed.task_id) into task_ids
        from (
            select n.task_id, o.task_id as old_task_id
            from new_rows as n
            inner join old_rows as o on n.id = o.id
            where (n.task_id, n.step_order, n.step_name, n.instructions, n.deleted_at)
                is distinct from
                (o.task_id, o.step_order, o.step_name, o.instructions, o.deleted_at)
        ) as moved,
            lateral (values (moved.task_id), (moved.old_task_id)) as changed (task_id);
    end if;
    if task_ids is not null then
        perform stepsync.sync_task_instructions(task_ids);
    end if;
    return null;
end
$$;

comment on function stepsync.compat_steps_changed() is
'After a statement changes task_steps: the affected tasks'' instructions follow their live '
'steps (one statement per change, however many rows it touched).';

revoke all on function stepsync.compat_steps_changed() from public;

create or replace trigger stepsync_compat_task_inserted
after insert on public.agent_tasks
for each row execute function stepsync.compat_task_inserted();

create or replace trigger stepsync_compat_task_instructions_changed
after update of instructions on public.agent_tasks
for each row
when (old.instructions is distinct from new.instructions)
execute function stepsync.compat_task_instructions_changed();

create or replace trigger stepsync_compat_steps_inserted
after insert on public.task_steps
referencing new table as new_rows
for each statement execute function stepsync.compat_steps_changed();

create or replace trigger stepsync_compat_steps_updated
after update on public.task_steps
referencing old table as old_rows new table as new_rows
for each statement execute function stepsync.compat_steps_changed();

create or replace trigger stepsync_compat_steps_deleted
after delete on public.task_steps
referencing old table as old_rows
for each statement execute function stepsync.compat_steps_changed();

comment on trigger stepsync_compat_task_inserted on public.agent_tasks is
'A task inserted the legacy way gets step 1.';
comment on trigger stepsync_compat_task_instructions_changed on public.agent_tasks is
'Legacy edits of instructions reach step 1 of a single-step task.';
comment on trigger stepsync_compat_steps_inserted on public.task_steps is
'New steps: the task''s instructions follow (text of step 1, or a summary).';
comment on trigger stepsync_compat_steps_updated on public.task_steps is
'Edited, reordered or soft-deleted steps: the task''s instructions follow.';
comment on trigger stepsync_compat_steps_deleted on public.task_steps is
'Deleted steps: the task''s instructions follow.';
