-- Audit: an append-only history of every insert, update and delete on the workflow tables.
--
-- Statement-level triggers with transition tables write one set-based INSERT per statement,
-- so a bulk write (a backfill batch) costs one extra statement, not one per row. Each row
-- records who (auth.uid() and the database role), when, the operation, the old and new row,
-- the task it belongs to and its owner, and an optional tag from the setting
-- stepsync.audit_tag (a backfill sets it to its run id; only the service's tag counts, an
-- API caller's is ignored). Owners read the rows of their own tasks through the API;
-- nobody updates or deletes them, not even the table owner without first dropping the
-- guard trigger.
--
-- The history is complete without repeating itself: an INSERT records the whole new row
-- and a DELETE the whole old one, an UPDATE of a small row (both versions within 4 KB)
-- the whole old and new row, and of a larger one every changed column (old and new
-- value) and, for readability, the unchanged columns of up to 256 bytes; a large
-- unchanged value (instructions, context_data) is already in the row's earlier history.
-- Columns that copy data kept elsewhere (task_steps.execution_result, the latest run's
-- result, which task_step_executions holds) are recorded with their members over 256
-- bytes replaced by a digest {"md5", "bytes"}, so a finished run does not copy its
-- outputs into the audit.
--
-- Any table with a uuid id and a task_id (or run_id) column joins with one call:
--     select stepsync.attach_audit('public.task_step_executions');

create table if not exists public.audit_log (
    id bigint generated always as identity primary key,
    occurred_at timestamptz not null default now(),
    table_schema text not null,
    table_name text not null,
    operation text not null check (operation in ('INSERT', 'UPDATE', 'DELETE')),
    record_id uuid,
    task_id uuid,
    owner_id uuid,
    actor_id uuid,
    actor_role text not null,
    tag text,
    transaction_id xid8 not null default pg_current_xact_id(),
    old_record jsonb,
    new_record jsonb
);

create index if not exists audit_log_occurred_at_brin on public.audit_log
using brin (occurred_at);
create index if not exists audit_log_owner_id_idx on public.audit_log (owner_id);
create index if not exists audit_log_task_id_idx on public.audit_log (task_id, id);

comment on table public.audit_log is
'Append-only history of changes to the workflow tables, written only by audit triggers.';
comment on column public.audit_log.id is 'Position in the history (increasing).';
comment on constraint audit_log_operation_check on public.audit_log is
'The three audited operations.';
comment on column public.audit_log.occurred_at is 'Start time of the writing transaction.';
comment on column public.audit_log.table_schema is 'Schema of the changed table.';
comment on column public.audit_log.table_name is 'Name of the changed table.';
comment on column public.audit_log.operation is 'INSERT, UPDATE or DELETE.';
comment on column public.audit_log.record_id is 'Primary key (id) of the changed row.';
comment on column public.audit_log.task_id is 'The agent task the changed row belongs to.';
comment on column public.audit_log.owner_id is
'Owner of that task when the change happened; owners read their own rows.';
comment on column public.audit_log.actor_id is 'auth.uid() of the writer (null for the service).';
comment on column public.audit_log.actor_role is
'Database role that made the change (authenticated, service_role, postgres, ...).';
comment on column public.audit_log.tag is
'Value of the setting stepsync.audit_tag, e.g. the backfill run that made the change.';
comment on column public.audit_log.transaction_id is 'Transaction that made the change.';
comment on column public.audit_log.old_record is 'The row before the change (UPDATE, DELETE).';
comment on column public.audit_log.new_record is 'The row after the change (INSERT, UPDATE).';
comment on index public.audit_log_occurred_at_brin is
'Time-range scans over the append-only history (BRIN: tiny, insertion ordered).';
comment on index public.audit_log_owner_id_idx is 'Serves the owners'' read policy.';
comment on index public.audit_log_task_id_idx is 'History of one task, in order.';

alter table public.audit_log enable row level security;
revoke all on public.audit_log from public, anon, authenticated, service_role;
grant select on public.audit_log to authenticated, service_role;
-- Its identity sequence too: setval by an API role would make every later audited write
-- collide with an existing id, and with it every write of the workflow tables fail.
revoke all on sequence public.audit_log_id_seq from public, anon, authenticated, service_role;

create policy "Owners read the audit rows of their tasks" on public.audit_log
for select to authenticated
using (owner_id = (select auth.uid()));

create policy "Service role reads the audit log" on public.audit_log
for select to service_role
using (true);

comment on policy "Owners read the audit rows of their tasks" on public.audit_log is
'Owners read the history of their own tasks, including tasks since deleted.';
comment on policy "Service role reads the audit log" on public.audit_log is
'The service reads all history; nobody writes it except the audit triggers.';

create or replace function stepsync.refuse_audit_change()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    raise exception 'audit_log is append-only: % is not allowed', tg_op
        using errcode = '42501';
end
$$;

revoke all on function stepsync.refuse_audit_change() from public;

comment on function stepsync.refuse_audit_change() is
'Trigger: refuses UPDATE, DELETE and TRUNCATE on the audit log.';

create trigger audit_log_append_only
before update or delete on public.audit_log
for each row execute function stepsync.refuse_audit_change();

create trigger audit_log_no_truncate
before truncate on public.audit_log
for each statement execute function stepsync.refuse_audit_change();

comment on trigger audit_log_append_only on public.audit_log is
'Audit rows are never changed or removed.';
comment on trigger audit_log_no_truncate on public.audit_log is
'The audit log is never emptied.';

create or replace function stepsync.audit_digest(p_value jsonb)
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
    -- Members (or the value itself) over 256 bytes become {"md5", "bytes"} of their JSON
    -- text: the audit row says what changed and proves what it was, without the copy.
    select case
        when p_value is null or pg_catalog.pg_column_size(p_value) <= 256 then p_value
        when jsonb_typeof(p_value) = 'object' then (
            select jsonb_object_agg(
                e.key,
                case
                    when pg_catalog.pg_column_size(e.value) <= 256 then e.value
                    else jsonb_build_object(
                        'md5', md5(e.value::text), 'bytes', octet_length(e.value::text)
                    )
                end
            )
            from jsonb_each(p_value) as e
        )
        else jsonb_build_object('md5', md5(p_value::text), 'bytes', octet_length(p_value::text))
    end
$$;

revoke all on function stepsync.audit_digest(jsonb) from public;

comment on function stepsync.audit_digest(jsonb) is
'A copied value as the audit records it: members over 256 bytes (or the whole value) '
'replaced by {"md5", "bytes"} of their JSON text.';

-- SECURITY DEFINER so that the caller needs no privilege on audit_log (a trigger function
-- cannot be called directly, and execute is revoked anyway). The database role comes
-- from the role setting, which SET ROLE changes and a definer does not. TG_ARGV[0] names
-- the column holding the task id (default task_id; agent_tasks passes id); a row with
-- only a run_id finds its task through agent_task_executions. The owner comes from the
-- row itself (agent_tasks), else from the task, or for a row removed together with its
-- task, from that task's earlier audit rows. An UPDATE that leaves a row exactly as it was
-- writes nothing for that row.
--
-- One static INSERT … SELECT straight from the transition table per operation (the three
-- differ only in where the old and new rows come from): PL/pgSQL keeps the plans (a
-- trigger function gets its own cached copy per table), each row goes to jsonb once and
-- its id is read from the row, not from the jsonb. (Gathering the rows into jsonb arrays
-- and unnesting them in a second function costs more than the audit rows themselves on
-- bulk writes such as a backfill batch.) Every lookup is a scalar subquery on a primary
-- key (or the task's history), so it stays an index probe per audited row however large
-- the tables grow; a join here is planned as a hash of the whole agent_tasks table. The
-- plan does not depend on the arguments, so it is generic: custom planning on every
-- small write costs several times the insert itself.
create or replace function stepsync.audit_statement()
returns trigger
language plpgsql
security definer
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set search_path = ''
as $$
declare
    task_column text := coalesce(tg_argv[0], 'task_id');
    actor_id uuid := auth.uid();
    actor_role text := coalesce(
        nullif(current_setting('role', true), 'none'), session_user::text
    );
    -- Only the service's tag is recorded: an API caller can set any setting in its
    -- own transaction, and must not be able to make its changes look like a backfill's.
    tag text := case
        when stepsync.caller_is_service()
            then nullif(current_setting('stepsync.audit_tag', true), '')
    end;
    digest_columns text[] := string_to_array(coalesce(tg_argv[1], ''), ',');
begin
    if tg_op = 'INSERT' then
        insert into public.audit_log (
            table_schema, table_name, operation, record_id, task_id, owner_id,
            actor_id, actor_role, tag, old_record, new_record
        )
        select
            tg_table_schema,
            tg_table_name,
            tg_op,
            owned.record_id,
            owned.task_id,
            coalesce(
                owned.own_user_id,
                (select t.user_id from public.agent_tasks as t where t.id = owned.task_id),
                (
                    select a.owner_id from public.audit_log as a
                    where a.task_id = owned.task_id and a.owner_id is not null
                    order by a.id desc
                    limit 1
                )
            ),
            actor_id,
            actor_role,
            tag,
            null,
            owned.new_record
        from (
            select
                changed.new_record,
                changed.record_id,
                case
                    when task_column = 'id' then (changed.new_record ->> 'user_id')::uuid
                end as own_user_id,
                coalesce(
                    (changed.new_record ->> task_column)::uuid,
                    (
                        select e.task_id from public.agent_task_executions as e
                        where e.id = (changed.new_record ->> 'run_id')::uuid
                    )
                ) as task_id
            from (
                select n.id as record_id, to_jsonb(n) as new_record
                from new_rows as n
                offset 0
            ) as changed
            offset 0
        ) as owned;
    elsif tg_op = 'UPDATE' then
        insert into public.audit_log (
            table_schema, table_name, operation, record_id, task_id, owner_id,
            actor_id, actor_role, tag, old_record, new_record
        )
        select
            tg_table_schema,
            tg_table_name,
            tg_op,
            owned.record_id,
            owned.task_id,
            coalesce(
                owned.own_user_id,
                (select t.user_id from public.agent_tasks as t where t.id = owned.task_id),
                (
                    select a.owner_id from public.audit_log as a
                    where a.task_id = owned.task_id and a.owner_id is not null
                    order by a.id desc
                    limit 1
                )
            ),
            actor_id,
            actor_role,
            tag,
            kept.old_part,
            kept.new_part
        from (
            select
                changed.old_record,
                changed.new_record,
                changed.record_id,
                case
                    when task_column = 'id' then (changed.new_record ->> 'user_id')::uuid
                end as own_user_id,
                coalesce(
                    (changed.new_record ->> task_column)::uuid,
                    (
                        select e.task_id from public.agent_task_executions as e
                        where e.id = (changed.new_record ->> 'run_id')::uuid
                    )
                ) as task_id
            from (
                select n.id as record_id, to_jsonb(o) as old_record, to_jsonb(n) as new_record
                from old_rows as o inner join new_rows as n on o.id = n.id
                offset 0
            ) as changed
            where changed.old_record is distinct from changed.new_record
            offset 0
        ) as owned
        cross join lateral (
            -- A small row (both versions within 4 KB of storage) is recorded whole; a
            -- larger one by what changed, with its small unchanged columns.
            select
                case
                    when pg_catalog.pg_column_size(owned.old_record)
                        + pg_catalog.pg_column_size(owned.new_record) <= 4096
                        then owned.old_record
                    else (
                        select jsonb_object_agg(
                            field.key,
                            case
                                when field.key = any(digest_columns) and field.changed
                                    then stepsync.audit_digest(field.old_value)
                                else field.old_value
                            end
                        )
                        from (
                            select
                                n.key,
                                owned.old_record -> n.key as old_value,
                                n.value is distinct from owned.old_record -> n.key as changed,
                                n.value as new_value
                            from jsonb_each(owned.new_record) as n (key, value)
                        ) as field
                        where field.changed or pg_catalog.pg_column_size(field.new_value) <= 256
                    )
                end as old_part,
                case
                    when pg_catalog.pg_column_size(owned.old_record)
                        + pg_catalog.pg_column_size(owned.new_record) <= 4096
                        then owned.new_record
                    else (
                        select jsonb_object_agg(
                            field.key,
                            case
                                when field.key = any(digest_columns) and field.changed
                                    then stepsync.audit_digest(field.new_value)
                                else field.new_value
                            end
                        )
                        from (
                            select
                                n.key,
                                n.value is distinct from owned.old_record -> n.key as changed,
                                n.value as new_value
                            from jsonb_each(owned.new_record) as n (key, value)
                        ) as field
                        where field.changed or pg_catalog.pg_column_size(field.new_value) <= 256
                    )
                end as new_part
        ) as kept;
    else
        insert into public.audit_log (
            table_schema, table_name, operation, record_id, task_id, owner_id,
            actor_id, actor_role, tag, old_record, new_record
        )
        select
            tg_table_schema,
            tg_table_name,
            tg_op,
            owned.record_id,
            owned.task_id,
            coalesce(
                owned.own_user_id,
                (select t.user_id from public.agent_tasks as t where t.id = owned.task_id),
                (
                    select a.owner_id from public.audit_log as a
                    where a.task_id = owned.task_id and a.owner_id is not null
                    order by a.id desc
                    limit 1
                )
            ),
            actor_id,
            actor_role,
            tag,
            owned.old_record,
            null
        from (
            select
                changed.old_record,
                changed.record_id,
                case
                    when task_column = 'id' then (changed.old_record ->> 'user_id')::uuid
                end as own_user_id,
                coalesce(
                    (changed.old_record ->> task_column)::uuid,
                    (
                        select e.task_id from public.agent_task_executions as e
                        where e.id = (changed.old_record ->> 'run_id')::uuid
                    )
                ) as task_id
            from (
                select o.id as record_id, to_jsonb(o) as old_record
                from old_rows as o
                offset 0
            ) as changed
            offset 0
        ) as owned;
    end if;
    return null;
end
$$;

revoke all on function stepsync.audit_statement() from public;

comment on function stepsync.audit_statement() is
'Statement trigger: writes one audit_log row per changed row with one static INSERT … SELECT '
'from the transition table (UPDATE of a row over 4 KB: changed columns, and unchanged ones '
'up to 256 bytes). '
'TG_ARGV[0] = column holding the task id (default task_id); TG_ARGV[1] = comma-separated '
'columns recorded as digests of their large members (stepsync.audit_digest).';

create or replace function stepsync.attach_audit(
    p_table regclass,
    p_task_column text default 'task_id',
    p_digest_columns text[] default '{}'
)
returns void
language plpgsql
set search_path = ''
as $$
declare
    table_name text := (select c.relname from pg_catalog.pg_class as c where c.oid = p_table);
    operation text;
begin
    foreach operation in array array['insert', 'update', 'delete'] loop
        execute format(
            'create or replace trigger %I after %s on %s referencing %s'
            ' for each statement execute function stepsync.audit_statement(%L, %L)',
            table_name || '_audit_' || operation,
            operation,
            p_table,
            case operation
                when 'insert' then 'new table as new_rows'
                when 'update' then 'old table as old_rows new table as new_rows'
                else 'old table as old_rows'
            end,
            p_task_column,
            array_to_string(coalesce(p_digest_columns, '{}'), ',')
        );
        execute format(
            'comment on trigger %I on %s is %L',
            table_name || '_audit_' || operation,
            p_table,
            'Writes the audit_log rows of each ' || upper(operation) || ' statement.'
        );
    end loop;
end
$$;

revoke all on function stepsync.attach_audit(regclass, text, text[]) from public;

comment on function stepsync.attach_audit(regclass, text, text[]) is
'Audits a table: three statement triggers (insert, update, delete) into audit_log. '
'For migrations; the table needs a uuid id column and a task id (or run_id) column. '
'p_digest_columns: columns that copy data kept elsewhere, recorded by digest on UPDATE.';

select stepsync.attach_audit('public.task_steps', 'task_id', array['execution_result']);
select stepsync.attach_audit('public.agent_tasks', 'id');
