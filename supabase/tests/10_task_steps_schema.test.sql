-- The task_steps data model: columns, constraints, indexes, RLS, triggers and RPC shapes.
begin;
set local search_path = extensions, public;
select plan(41);

select has_table('public', 'task_steps', 'task_steps exists');
select columns_are(
    'public',
    'task_steps',
    array[
        'id', 'task_id', 'step_order', 'step_name', 'instructions',
        'include_previous_context', 'context_data', 'status', 'execution_result',
        'created_at', 'updated_at', 'context_mode', 'context_paths', 'context_template',
        'skip_if', 'on_failure', 'max_attempts', 'retry_backoff_seconds',
        'retry_backoff_max_seconds', 'timeout_seconds', 'agent_id', 'deleted_at', 'deleted_by',
        'max_lost_leases', 'compensate_instructions'
    ],
    'task_steps has exactly the contract columns'
);
select col_type_is(
    'public', 'task_steps', 'instructions', 'text', 'instructions is unbounded text'
);
select col_type_is('public', 'task_steps', 'skip_if', 'jsonpath', 'skip_if is a jsonpath');
select col_type_is(
    'public', 'task_steps', 'context_paths', 'jsonpath[]', 'context_paths is a jsonpath array'
);
select col_default_is(
    'public', 'task_steps', 'context_mode', 'previous', 'context_mode defaults to previous'
);
select col_default_is('public', 'task_steps', 'on_failure', 'stop', 'on_failure defaults to stop');
select col_default_is('public', 'task_steps', 'max_attempts', '1', 'one attempt by default');
select fk_ok(
    'public', 'task_steps', 'task_id', 'public', 'agent_tasks', 'id', 'steps belong to a task'
);
select ok(
    (
        select condeferrable and contype = 'x'
        from pg_constraint
        where conname = 'task_steps_live_order_unique'
    ),
    'order is unique among live rows by a deferrable exclusion constraint'
);
select has_index(
    'public', 'task_steps', 'task_steps_task_id_idx', 'task_id is indexed for RLS and cascade'
);
select has_index(
    'public', 'audit_log', 'audit_log_owner_id_idx', 'audit owner_id is indexed for RLS'
);
select is(
    (
        select am.amname from pg_am as am
        inner join pg_class as c on am.oid = c.relam
        where c.relname = 'audit_log_occurred_at_brin'
    ),
    'brin',
    'audit time index is BRIN'
);
select ok(
    (
        select relrowsecurity from pg_class
        where oid = 'public.task_steps'::regclass
    ),
    'task_steps has RLS'
);
select ok(
    (
        select relrowsecurity from pg_class
        where oid = 'public.audit_log'::regclass
    ),
    'audit_log has RLS'
);
select policies_are(
    'public',
    'task_steps',
    array[
        'Owners read the live steps of their tasks',
        'Owners add steps to their tasks',
        'Owners change the live steps of their tasks',
        'Owners delete the live steps of their tasks',
        'Service role manages steps'
    ],
    'task_steps has the owner and service policies only'
);
select policy_roles_are(
    'public', 'task_steps', 'Owners read the live steps of their tasks',
    array['authenticated'], 'owner policies are scoped to authenticated'
);
select is_empty(
    $$select policyname from pg_policies
      where schemaname = 'public' and tablename = 'agent_task_executions'
        and (qual = 'true' or with_check = 'true')
        and not roles <@ array['service_role']::name []$$,
    'the legacy FOR ALL USING (true) policy is gone'
);
select policies_are(
    'public',
    'audit_log',
    array['Owners read the audit rows of their tasks', 'Service role reads the audit log'],
    'audit_log can only be read'
);
select has_trigger('public', 'task_steps', 'task_steps_check_insert', 'insert rules');
select has_trigger('public', 'task_steps', 'task_steps_check_update', 'update rules');
select has_trigger('public', 'task_steps', 'task_steps_soft_delete', 'soft delete');
select has_trigger(
    'public', 'task_steps', 'task_steps_close_gaps_after_delete', 'gaps close after DELETE'
);
select has_trigger(
    'public', 'task_steps', 'task_steps_close_gaps_after_soft_delete', 'gaps close after UPDATE'
);
select has_trigger('public', 'task_steps', 'task_steps_audit_insert', 'inserts are audited');
select has_trigger('public', 'task_steps', 'task_steps_audit_update', 'updates are audited');
select has_trigger('public', 'task_steps', 'task_steps_audit_delete', 'deletes are audited');
select has_trigger('public', 'agent_tasks', 'agent_tasks_audit_update', 'tasks are audited');
select function_returns(
    'public', 'save_task_steps', array['uuid', 'jsonb'], 'setof task_steps',
    'save_task_steps returns the live steps'
);
select function_returns(
    'public', 'reorder_task_steps', array['uuid', 'uuid[]'], 'setof task_steps',
    'reorder_task_steps takes the ordered ids'
);
select function_returns(
    'public', 'validate_task_steps', array['uuid'], 'jsonb', 'validate_task_steps returns jsonb'
);
select is_definer(
    'stepsync', 'restore_task_step', array['uuid'], 'the restore helper is a definer'
);
select isnt_definer('public', 'save_task_steps', array['uuid', 'jsonb'], 'save is invoker');
select isnt_definer('public', 'reorder_task_steps', array['uuid', 'uuid[]'], 'reorder is invoker');
select isnt_definer('public', 'validate_task_steps', array['uuid'], 'validate is invoker');
select isnt_definer('public', 'soft_delete_task_step', array['uuid'], 'soft delete is invoker');
select isnt_definer('public', 'restore_task_step', array['uuid'], 'restore is invoker');
select function_privs_are(
    'stepsync', 'purge_deleted_task_steps', array['interval', 'uuid'], 'authenticated',
    array[]::text[], 'authenticated cannot purge'
);
select function_privs_are(
    'public', 'save_task_steps', array['uuid', 'jsonb'], 'anon',
    array[]::text[], 'anon cannot call the RPCs'
);
select hasnt_function('public', 'execute_sql', 'no execute_sql');
select ok(
    exists (
        select from pg_publication_tables
        where pubname = 'supabase_realtime' and tablename = 'task_steps'
    ),
    'task_steps is published to Realtime'
);

select * from finish();
rollback;
