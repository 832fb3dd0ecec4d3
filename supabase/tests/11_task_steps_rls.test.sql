-- Row level security on steps and the audit log, as PostgREST runs requests.
begin;
set local search_path = extensions, public;
select plan(12);

insert into auth.users (id, email) values
('10000000-0000-0000-0000-000000000001', 'owner@example.test'),
('10000000-0000-0000-0000-000000000002', 'other@example.test');
insert into public.agents (id, user_id, name) values
('20000000-0000-0000-0000-000000000001', '10000000-0000-0000-0000-000000000001', 'Mine');
insert into public.agent_tasks (id, agent_id, user_id, name, instructions) values (
    '30000000-0000-0000-0000-000000000001',
    '20000000-0000-0000-0000-000000000001',
    '10000000-0000-0000-0000-000000000001',
    'Task',
    'Do it'
);
update public.task_steps set deleted_at = now()
where task_id = '30000000-0000-0000-0000-000000000001';
insert into public.task_steps (task_id, step_order, step_name, instructions) values
('30000000-0000-0000-0000-000000000001', 1, 'One', 'First'),
('30000000-0000-0000-0000-000000000001', 2, 'Two', 'Second');

-- The owner.
set local role authenticated;
select set_config(
    'request.jwt.claims',
    '{"sub": "10000000-0000-0000-0000-000000000001", "role": "authenticated"}',
    true
);
select results_eq(
    'select step_name from public.task_steps order by step_order',
    array['One', 'Two'],
    'the owner sees the live steps'
);
select lives_ok(
    $$delete from public.task_steps where step_name = 'One'$$,
    'the owner deletes a step'
);
select results_eq(
    'select step_name, step_order from public.task_steps',
    $$values ('Two'::text, 1)$$,
    'the deleted step is hidden and the next one moved up'
);
select ok(
    (select count(*) from public.audit_log) > 0,
    'the owner reads the history of the task'
);
select throws_ok(
    $$update public.audit_log set tag = 'x'$$,
    '42501',
    null,
    'the owner cannot change history'
);
select throws_ok(
    $$insert into public.task_steps (task_id, step_order, step_name, instructions)
      values ('30000000-0000-0000-0000-000000000001', 51, 'Too far', 'x')$$,
    '23514',
    null,
    'a task has at most 50 steps'
);

-- Another signed-in user.
select set_config(
    'request.jwt.claims',
    '{"sub": "10000000-0000-0000-0000-000000000002", "role": "authenticated"}',
    true
);
select is_empty('select * from public.task_steps', 'another user sees no steps');
select is_empty('select * from public.audit_log', 'another user sees no history');
select throws_ok(
    $$insert into public.task_steps (task_id, step_order, step_name, instructions)
      values ('30000000-0000-0000-0000-000000000001', 3, 'Sneaky', 'x')$$,
    '42501',
    null,
    'another user cannot add a step to the task'
);
select throws_ok(
    $$select public.save_task_steps(
        '30000000-0000-0000-0000-000000000001', '[{"instructions": "x"}]'
    )$$,
    'P0002',
    null,
    'another user cannot save the steps of the task'
);

-- anon.
reset role;
set local role anon;
select set_config('request.jwt.claims', '{"role": "anon"}', true);
select throws_ok('select * from public.task_steps', '42501', null, 'anon cannot read steps');
select throws_ok(
    'select * from public.agent_task_executions', '42501', null, 'anon cannot read runs'
);

reset role;
select * from finish();
rollback;
