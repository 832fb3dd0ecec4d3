-- Task triggers: cron and time zone checks on write, the fire record's uniqueness, the
-- legacy executor's run refused for a user in the rollout, emit_task_event's refusals.
begin;
set local search_path = extensions, public;
select plan(10);

insert into auth.users (id, email)
values ('00000000-0000-0000-0000-00000000c0b1', 'triggers@example.test');
insert into public.agents (id, user_id, name)
values (
    '00000000-0000-0000-0000-00000000a6b1',
    '00000000-0000-0000-0000-00000000c0b1',
    'Agent'
);

select is(
    stepsync.cron_problem('0 9 * * 1-5 # weekday mornings'), null, 'a valid cron expression'
);
select is(
    stepsync.cron_problem('0 9 31 2 *'),
    'day of month: day 31 never comes in month(s) 2',
    'a day that never comes is named'
);
select is(stepsync.time_zone_problem('Europe/Paris'), null, 'an IANA zone');
select isnt(stepsync.time_zone_problem('PST'), null, 'an abbreviation is not a zone');

select throws_ok(
    $$insert into public.agent_tasks (agent_id, user_id, name, instructions, cron_expression)
      values ('00000000-0000-0000-0000-00000000a6b1', '00000000-0000-0000-0000-00000000c0b1',
              'Bad', 'x', '61 * * * *')$$,
    '22023',
    $$cron_expression '61 * * * *' minute: '61' is not a value (0-59), *, a range a-b, $$
    || $$a step */n or a list$$,
    'a bad cron expression is refused on write'
);
select throws_ok(
    $$insert into public.agent_tasks
          (agent_id, user_id, name, instructions, cron_expression, timezone)
      values ('00000000-0000-0000-0000-00000000a6b1', '00000000-0000-0000-0000-00000000c0b1',
              'Bad', 'x', '0 9 * * *', 'Mars/Olympus')$$,
    '22023',
    null,
    'an unknown time zone is refused on write'
);

insert into public.agent_tasks (
    id, agent_id, user_id, name, instructions, cron_expression, timezone, next_run_at
)
values (
    '00000000-0000-0000-0000-0000000071b1',
    '00000000-0000-0000-0000-00000000a6b1',
    '00000000-0000-0000-0000-00000000c0b1',
    'Digest',
    'Summarise the inbox',
    '0 9 * * *',
    'Europe/Paris',
    '2025-06-02 07:00+00'
);

select throws_ok(
    $$insert into public.agent_task_executions (task_id, agent_id, status, trigger_type,
          instructions_used, started_at)
      values ('00000000-0000-0000-0000-0000000071b1', '00000000-0000-0000-0000-00000000a6b1',
              'running', 'scheduled', 'x', '2025-06-02 07:00:01+00')$$,
    '55000',
    null,
    'the legacy executor cannot start a task of a user in the rollout'
);

insert into public.task_schedule_fires (task_id, fire_at, user_id, outcome)
values (
    '00000000-0000-0000-0000-0000000071b1',
    '2025-06-02 07:00+00',
    '00000000-0000-0000-0000-00000000c0b1',
    'skipped'
);
select throws_ok(
    $$insert into public.task_schedule_fires (task_id, fire_at, user_id, outcome)
      values ('00000000-0000-0000-0000-0000000071b1', '2025-06-02 07:00+00',
              '00000000-0000-0000-0000-00000000c0b1', 'completed')$$,
    '23505',
    null,
    'a fire time is decided once'
);

select throws_ok(
    $$select * from public.emit_task_event('webhook', '{}')$$,
    '22023',
    $$unknown event type 'webhook'$$,
    'an unknown event type is refused'
);
select throws_ok(
    $$select * from public.emit_task_event('email_received', '[1]')$$,
    '22023',
    'event data must be a JSON object, not array',
    'event data that is not an object is refused'
);

select * from finish();
rollback;
