-- Run engine flow, as the app and the service call it: the owner starts a run through
-- the API, the service claims and completes its steps, a stale token is refused.
begin;
set local search_path = extensions, public;
select plan(17);

insert into auth.users (id, email) values
('00000000-0000-0000-0000-00000000a001', 'owner@example.test'),
('00000000-0000-0000-0000-00000000a002', 'other@example.test');
insert into public.agents (id, user_id, name) values
('00000000-0000-0000-0000-00000000b001', '00000000-0000-0000-0000-00000000a001', 'Agent');
insert into public.agent_tasks (id, agent_id, user_id, name, instructions) values (
    '00000000-0000-0000-0000-00000000c001',
    '00000000-0000-0000-0000-00000000b001',
    '00000000-0000-0000-0000-00000000a001',
    'Two steps',
    'Legacy text'
);
update public.task_steps set deleted_at = now()
where task_id = '00000000-0000-0000-0000-00000000c001';
insert into public.task_steps (
    task_id, step_order, step_name, instructions, include_previous_context, context_mode
) values
('00000000-0000-0000-0000-00000000c001', 1, 'Fetch', 'Fetch it', false, 'previous'),
('00000000-0000-0000-0000-00000000c001', 2, 'Sum up', 'Sum it up', true, 'previous');

-- Another user can neither start nor preview the task.
select set_config(
    'request.jwt.claims',
    '{"sub": "00000000-0000-0000-0000-00000000a002", "role": "authenticated"}',
    true
);
set local role authenticated;
select throws_ok(
    $$select public.start_task_run('00000000-0000-0000-0000-00000000c001')$$,
    'P0002', null, 'another user cannot start the task'
);
select throws_ok(
    $$select public.preview_task_run('00000000-0000-0000-0000-00000000c001')$$,
    'P0002', null, 'another user cannot preview the task'
);
select throws_ok(
    $$select * from stepsync.claim_steps('w', 1, 30)$$,
    '42501', null, 'an API user cannot claim steps'
);
reset role;

-- The owner starts a run through the API.
select set_config(
    'request.jwt.claims',
    '{"sub": "00000000-0000-0000-0000-00000000a001", "role": "authenticated"}',
    true
);
set local role authenticated;
select isnt(
    public.start_task_run('00000000-0000-0000-0000-00000000c001', 'manual', '{}'),
    null,
    'the owner starts a run through the API'
);
select is(
    (select count(*)::integer from public.task_step_executions),
    2,
    'the owner sees the two step rows of their run'
);
select is(
    (
        select preview -> 'steps' -> 1 -> 'input' -> 'previous' ->> 'output'
        from public.preview_task_run('00000000-0000-0000-0000-00000000c001') as preview
    ),
    '<output of step 1: not run yet>',
    'the preview marks an output that does not exist yet'
);
reset role;
select set_config('request.jwt.claims', '', true);

select results_eq(
    $$select status::text from public.task_step_executions order by step_order$$,
    array['queued', 'pending'],
    'step 1 is queued, step 2 waits'
);

-- The service claims and completes.
set local role service_role;
create temporary table claimed on commit drop as
select * from stepsync.claim_steps('pgtap', 10, 30);
select is((select count(*)::integer from claimed), 1, 'one step is ready');
select is((select step_name from claimed), 'Fetch', 'it is step 1');
select is(
    (select context -> 'mode' #>> '{}' from claimed),
    'none',
    'step 1 gets no earlier context'
);
select is(stepsync.queue_depth(), 0::bigint, 'nothing else is due');
select ok(
    stepsync.complete_step(
        (select step_execution_id from claimed), (select lease_token from claimed), '"fetched"'
    ),
    'the lease holder completes step 1'
);
select ok(
    not stepsync.complete_step(
        (select step_execution_id from claimed), (select lease_token from claimed), '"again"'
    ),
    'completing twice is refused'
);
truncate claimed;
insert into claimed select * from stepsync.claim_steps('pgtap', 10, 30);
select is(
    (select context -> 'previous' -> 'output' #>> '{}' from claimed),
    'fetched',
    'step 2 receives step 1''s output'
);
select is(
    stepsync.fail_step(
        (select step_execution_id from claimed), (select lease_token from claimed) - 1, 'x'
    ),
    'stale',
    'a wrong token cannot fail the step'
);
select ok(
    stepsync.complete_step(
        (select step_execution_id from claimed), (select lease_token from claimed), '"summary"'
    ),
    'the lease holder completes step 2'
);
reset role;

select results_eq(
    $$select status::text, output from public.agent_task_executions$$,
    $$values ('completed', 'summary')$$,
    'the run completed with the last step''s output'
);

select * from finish();
rollback;
