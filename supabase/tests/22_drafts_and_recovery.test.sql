-- Drafts, validating unsaved steps, resume, compensation and run outcomes: structure,
-- row level security and who may call what.
begin;
set local search_path = extensions, public;
select plan(22);

select has_table('public', 'task_step_drafts', 'task_step_drafts exists');
select col_is_unique('public', 'task_step_drafts', 'task_id', 'one draft per task');
select ok(
    (
        select relrowsecurity from pg_class
        where oid = 'public.task_step_drafts'::regclass
    ),
    'RLS is enabled on task_step_drafts'
);
select policies_are(
    'public', 'task_step_drafts',
    array['Owners manage the drafts of their tasks', 'Service role manages drafts'],
    'task_step_drafts has only the owner and service policies'
);
select ok(
    not has_table_privilege('anon', 'public.task_step_drafts', 'select')
    and not has_table_privilege('authenticated', 'public.task_step_drafts', 'truncate'),
    'anon cannot read drafts; nobody on the API can truncate them'
);
select has_trigger(
    'public', 'task_step_drafts', 'task_step_drafts_audit_update', 'drafts are audited'
);

select has_column(
    'public', 'task_steps', 'compensate_instructions', 'steps may say how to undo them'
);
select has_column('public', 'task_step_executions', 'kind', 'step runs say what they are');
select has_column(
    'public', 'task_step_executions', 'reused_from', 'reused step runs point at their origin'
);
select has_column('public', 'agent_task_executions', 'outcome', 'runs have an outcome');
select has_column(
    'public', 'agent_task_executions', 'compensation', 'runs show their compensation'
);
select has_column(
    'public', 'agent_task_executions', 'resumed_from_run_id', 'a resumed run names its origin'
);
select enum_has_labels(
    'public', 'task_run_outcome', array['succeeded', 'partial', 'failed', 'cancelled'],
    'the outcomes of a run'
);

select function_privs_are(
    'public', 'save_task_steps_draft', array['uuid', 'jsonb'], 'anon', '{}'::text[],
    'anon cannot save drafts'
);
select function_privs_are(
    'public', 'publish_task_steps_draft', array['uuid', 'boolean'], 'authenticated',
    array['EXECUTE'], 'owners publish drafts (RLS decides which)'
);
select function_privs_are(
    'public', 'validate_steps', array['uuid', 'jsonb'], 'anon', '{}'::text[],
    'anon cannot validate steps'
);
select function_privs_are(
    'public', 'resume_task_run', array['uuid', 'integer', 'boolean'], 'anon', '{}'::text[],
    'anon cannot resume runs'
);
select function_privs_are(
    'public', 'resume_task_run', array['uuid', 'integer', 'boolean'], 'authenticated',
    array['EXECUTE'], 'owners resume (their own) runs'
);
select function_privs_are(
    'stepsync', 'start_compensation', array['uuid', 'text'], 'authenticated', '{}'::text[],
    'only the engine starts compensations'
);
select ok(
    not (
        select bool_or(p.prosecdef) from pg_proc as p
        where p.oid in (
            'public.save_task_steps_draft(uuid, jsonb)'::regprocedure,
            'public.publish_task_steps_draft(uuid, boolean)'::regprocedure,
            'public.discard_task_steps_draft(uuid)'::regprocedure,
            'public.validate_steps(uuid, jsonb)'::regprocedure,
            'public.resume_task_run(uuid, integer, boolean)'::regprocedure
        )
    ),
    'the new public RPCs are security invoker'
);
select is(
    (
        select count(*)::integer from pg_proc
        where
            pronamespace = 'public'::regnamespace
            and proname in ('cancel_task_run', 'preview_task_run', 'resume_task_run')
    ),
    3,
    'one function per RPC name: PostgREST calls by name without ambiguity'
);
select is(
    (
        select provolatile::text from pg_proc
        where oid = 'public.validate_steps(uuid, jsonb)'::regprocedure
    ),
    's',
    'validate_steps writes nothing (stable)'
);

select * from finish();
rollback;
