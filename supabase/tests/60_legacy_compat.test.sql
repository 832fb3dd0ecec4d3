-- Online compatibility triggers and the backfill functions' privileges.
begin;
set local search_path = extensions, public;
select plan(9);

insert into auth.users (id, email)
values ('00000000-0000-0000-0000-00000000c0a1', 'compat@example.test');
insert into public.agents (id, user_id, name)
values (
    '00000000-0000-0000-0000-00000000a6e1',
    '00000000-0000-0000-0000-00000000c0a1',
    'Agent'
);
insert into public.agent_tasks (id, agent_id, user_id, name, instructions, status)
values (
    '00000000-0000-0000-0000-0000000071a5',
    '00000000-0000-0000-0000-00000000a6e1',
    '00000000-0000-0000-0000-00000000c0a1',
    'Digest',
    'Summarise the inbox',
    'completed'
);

select results_eq(
    $$select step_order, step_name, instructions, status::text from public.task_steps
      where task_id = '00000000-0000-0000-0000-0000000071a5'$$,
    $$values (1, 'Digest', 'Summarise the inbox', 'completed')$$,
    'a legacy insert gets step 1, its status from the task'
);

update public.agent_tasks set instructions = 'Summarise the inbox twice'
where id = '00000000-0000-0000-0000-0000000071a5';
select is(
    (
        select instructions from public.task_steps
        where task_id = '00000000-0000-0000-0000-0000000071a5'
    ),
    'Summarise the inbox twice',
    'a legacy edit reaches step 1'
);

insert into public.task_steps (task_id, step_order, step_name, instructions)
values ('00000000-0000-0000-0000-0000000071a5', 2, 'Send', 'Mail it');
select is(
    (
        select instructions from public.agent_tasks
        where id = '00000000-0000-0000-0000-0000000071a5'
    ),
    'Multi-step task with 2 steps: 1. Digest; 2. Send',
    'a multi-step task keeps a readable summary'
);

select throws_ok(
    $$update public.agent_tasks set instructions = 'free text'
      where id = '00000000-0000-0000-0000-0000000071a5'$$,
    '23514',
    null,
    'free text on a multi-step task is refused'
);

insert into public.agent_tasks (agent_id, user_id, name, instructions)
values (
    '00000000-0000-0000-0000-00000000a6e1',
    '00000000-0000-0000-0000-00000000c0a1',
    'Blank',
    '  '
);
select is_empty(
    $$select from public.task_steps as s
      inner join public.agent_tasks as t on s.task_id = t.id
      where t.name = 'Blank'$$,
    'blank instructions make no step'
);

select ok(
    not has_function_privilege(
        'authenticated', 'stepsync.backfill_legacy_tasks_batch(uuid, integer)', 'execute'
    ),
    'authenticated cannot run a backfill batch'
);
select ok(
    not has_function_privilege(
        'anon', 'stepsync.backfill_rollback_batch(uuid, uuid, integer)', 'execute'
    ),
    'anon cannot roll back'
);
select ok(
    has_function_privilege(
        'service_role', 'stepsync.backfill_legacy_tasks_batch(uuid, integer)', 'execute'
    ),
    'service_role runs the backfill'
);
select ok(
    not has_table_privilege('authenticated', 'stepsync.backfill_runs', 'select'),
    'backfill runs are not visible to API users'
);

select * from finish();
rollback;
