-- Run engine structure: tables, RLS, policies, privileges, triggers, realtime.
begin;
set local search_path = extensions, public;
select plan(24);

select has_table('public', 'task_step_executions', 'task_step_executions exists');
select has_column('public', 'agent_task_executions', 'user_id', 'runs have an owner');
select has_column('public', 'agent_task_executions', 'step_count', 'runs count their steps');
select has_column('public', 'agent_task_executions', 'cancelled_at', 'runs record cancellation');
select col_is_unique(
    'public', 'task_step_executions', array['run_id', 'step_order'],
    'one row per position of a run'
);
select ok(
    (
        select relrowsecurity from pg_class
        where oid = 'public.task_step_executions'::regclass
    ),
    'RLS is enabled on task_step_executions'
);
select policies_are(
    'public', 'task_step_executions',
    array['Owners read their step runs', 'Service role manages step runs'],
    'task_step_executions has only the owner-read and service policies'
);
select is(
    (
        select count(*)::integer from pg_policies
        where
            schemaname = 'public'
            and tablename = 'agent_task_executions'
            and (cmd <> 'SELECT' or roles && array['anon', 'public']::name[])
            and roles <> array['service_role']::name[]
    ),
    0,
    'only the service role has a write policy on runs (the legacy hole is closed)'
);
select policy_cmd_is(
    'public', 'task_step_executions', 'Owners read their step runs', 'select',
    'owners only read step runs'
);
select ok(
    not has_table_privilege('authenticated', 'public.task_step_executions', 'insert')
    and not has_table_privilege('authenticated', 'public.task_step_executions', 'update')
    and not has_table_privilege('anon', 'public.agent_task_executions', 'select'),
    'API users cannot write step rows; anon cannot read runs'
);

select function_privs_are(
    'stepsync', 'claim_steps', array['text', 'integer', 'integer'], 'authenticated', '{}'::text[],
    'authenticated cannot claim steps'
);
select function_privs_are(
    'stepsync', 'claim_steps', array['text', 'integer', 'integer'], 'anon', '{}'::text[],
    'anon cannot claim steps'
);
select function_privs_are(
    'stepsync', 'complete_step', array['uuid', 'bigint', 'jsonb'], 'authenticated',
    '{}'::text[], 'authenticated cannot complete steps'
);
select function_privs_are(
    'stepsync', 'fail_step', array['uuid', 'bigint', 'text', 'boolean'], 'authenticated',
    '{}'::text[], 'authenticated cannot fail steps'
);
select function_privs_are(
    'stepsync', 'reap_expired_leases', array['integer'], 'service_role', array['EXECUTE'],
    'service_role can reap'
);
select function_privs_are(
    'public', 'start_task_run', array['uuid', 'text', 'jsonb'], 'anon', '{}'::text[],
    'anon cannot start runs'
);
select function_privs_are(
    'public', 'start_task_run', array['uuid', 'text', 'jsonb'], 'authenticated',
    array['EXECUTE'], 'authenticated can start (their own) runs'
);

select ok(
    not (
        select prosecdef from pg_proc
        where oid = 'public.start_task_run(uuid, text, jsonb)'::regprocedure
    )
    and not (
        select prosecdef from pg_proc
        where oid = 'public.cancel_task_run(uuid, boolean)'::regprocedure
    )
    and not (
        select prosecdef from pg_proc
        where oid = 'public.preview_task_run(uuid, jsonb, boolean)'::regprocedure
    )
    and not (
        select prosecdef from pg_proc
        where oid = 'public.preview_step_context(uuid)'::regprocedure
    ),
    'the public RPCs are security invoker'
);
select is(
    (
        select count(*)::integer from pg_proc
        where
            pronamespace = 'stepsync'::regnamespace
            and prosecdef
            and not coalesce('search_path=""' = any(proconfig), false)
    ),
    0,
    'every security-definer function in stepsync pins search_path to empty'
);
select is(
    (
        select count(*)::integer from pg_proc as p
        where
            (
                p.pronamespace = 'stepsync'::regnamespace
                or p.oid in (
                    'public.start_task_run(uuid, text, jsonb)'::regprocedure,
                    'public.cancel_task_run(uuid, boolean)'::regprocedure
                )
            )
            and p.proconfig is null
    ),
    0,
    'every run engine function has a fixed search_path'
);

select has_trigger(
    'public', 'task_step_executions', 'task_step_executions_notify_ready',
    'ready steps are announced'
);
select has_trigger(
    'public', 'agent_task_executions', 'agent_task_executions_notify_status',
    'run status changes are announced'
);
select ok(
    exists (
        select from pg_publication_tables
        where pubname = 'supabase_realtime' and tablename = 'task_step_executions'
    ),
    'task_step_executions is published to realtime'
);
select ok(
    exists (
        select from pg_publication_tables
        where pubname = 'supabase_realtime' and tablename = 'agent_task_executions'
    ),
    'agent_task_executions is published to realtime'
);

select * from finish();
rollback;
