-- Validation: every problem that keeps a task from running, as the editor shows it and
-- as start_task_run refuses it. One set of rules, stepsync.step_problems, checks rows of
-- task_steps wherever they come from: validate_task_steps gives it the task's live
-- steps, validate_steps a list that is not saved (the editor's state, a draft), read by
-- the parser save_task_steps uses. SECURITY INVOKER throughout: the caller sees only
-- what row level security lets it see.

create or replace function stepsync.step_problems(
    p_task_id uuid, p_steps public.task_steps[]
)
returns jsonb
language plpgsql
stable
set search_path = ''
as $$
declare
    task_owner uuid;
    task_agent uuid;
    problems jsonb;
begin
    select t.user_id, t.agent_id into task_owner, task_agent
    from public.agent_tasks as t where t.id = p_task_id;
    if not found then
        raise exception 'task % not found', p_task_id using errcode = 'P0002';
    end if;

    with steps as (
        select
            s.*,
            row_number() over (order by s.step_order, s.id) as position,
            count(*) over (partition by s.step_order) as sharing_order,
            min(s.step_order) over (partition by s.id) as first_order_of_id,
            count(*) over () as live_count
        from unnest(p_steps) as s
    ),

    found_problems as (
        select
            'no_steps' as code,
            'the task has no steps' as message,
            null::uuid as step_id,
            null::integer as step_order,
            null::text as field
        where not exists (select from steps)
        union all
        -- The task's own agent runs every step without an override: it is held to the
        -- rule of an override.
        select
            'foreign_task_agent',
            format('the task''s agent %s does not belong to the task owner', task_agent),
            null::uuid,
            null::integer,
            'agent_id'
        where not exists (
            select from public.agents as a
            where a.id = task_agent and a.user_id = task_owner
        )
        union all
        select distinct
            'too_many_steps',
            format('the task has %s steps; at most 50 are allowed', steps.live_count),
            null::uuid,
            null::integer,
            null::text
        from steps
        where steps.live_count > 50
        union all
        select
            'duplicate_step_order',
            format('%s steps share position %s', steps.sharing_order, steps.step_order),
            steps.id,
            steps.step_order,
            'step_order'
        from steps
        where steps.sharing_order > 1
        union all
        select
            'step_order_gap',
            format(
                'step at position %s should be at %s: positions run 1..%s without gaps',
                steps.step_order, steps.position, steps.live_count
            ),
            steps.id,
            steps.step_order,
            'step_order'
        from steps
        where steps.sharing_order = 1 and steps.step_order <> steps.position
        union all
        select
            'step_order_out_of_range',
            format('position %s is outside 1..50', steps.step_order),
            steps.id,
            steps.step_order,
            'step_order'
        from steps
        where steps.step_order not between 1 and 50
        union all
        select
            'blank_step_name',
            'the step name is blank',
            steps.id,
            steps.step_order,
            'step_name'
        from steps
        where stepsync.is_blank(steps.step_name)
        union all
        select
            'step_name_too_long',
            format('the step name has %s characters; at most 200', char_length(steps.step_name)),
            steps.id,
            steps.step_order,
            'step_name'
        from steps
        where char_length(steps.step_name) > 200
        union all
        select
            'blank_instructions',
            'the instructions are blank',
            steps.id,
            steps.step_order,
            'instructions'
        from steps
        where stepsync.is_blank(steps.instructions)
        union all
        select
            'custom_without_template',
            'context_mode custom needs a context_template',
            steps.id,
            steps.step_order,
            'context_template'
        from steps
        where
            steps.context_mode = 'custom'
            and coalesce(stepsync.is_blank(steps.context_template), true)
        union all
        select
            'selective_without_paths',
            'context_mode selective needs at least one context_paths entry',
            steps.id,
            steps.step_order,
            'context_paths'
        from steps
        where steps.context_mode = 'selective' and cardinality(steps.context_paths) = 0
        union all
        select
            'foreign_agent',
            format('agent %s does not belong to the task owner', steps.agent_id),
            steps.id,
            steps.step_order,
            'agent_id'
        from steps
        where
            steps.agent_id is not null
            and not exists (
                select from public.agents as a
                where a.id = steps.agent_id and a.user_id = task_owner
            )
        union all
        select
            'inactive_agent',
            format('agent %s is not active', steps.agent_id),
            steps.id,
            steps.step_order,
            'agent_id'
        from steps
        inner join public.agents as a on steps.agent_id = a.id
        where a.user_id = task_owner and not a.active
        union all
        -- Only a list that is not saved can name a step twice or a step that is not (or
        -- no longer) one of the task's live steps.
        select
            'duplicate_step',
            format('step %s is already listed at position %s', steps.id, steps.first_order_of_id),
            steps.id,
            steps.step_order,
            'id'
        from steps
        where steps.id is not null and steps.step_order > steps.first_order_of_id
        union all
        select
            'unknown_step',
            format('step %s is not a live step of this task', steps.id),
            steps.id,
            steps.step_order,
            'id'
        from steps
        where
            steps.id is not null
            and not exists (
                select from public.task_steps as live
                where
                    live.id = steps.id
                    and live.task_id = p_task_id
                    and live.deleted_at is null
            )
        union all
        select
            'invalid_retry_backoff',
            'retry_backoff_max_seconds is below retry_backoff_seconds',
            steps.id,
            steps.step_order,
            'retry_backoff_max_seconds'
        from steps
        where steps.retry_backoff_max_seconds < steps.retry_backoff_seconds
    )

    select
        coalesce(
            jsonb_agg(
                jsonb_build_object(
                    'code', p.code,
                    'message', p.message,
                    'step_id', p.step_id,
                    'step_order', p.step_order,
                    'field', p.field
                )
                order by p.step_order nulls first, p.code
            ),
            '[]'::jsonb
        )
    into problems
    from found_problems as p;
    return problems;
end
$$;

revoke all on function stepsync.step_problems(uuid, public.task_steps[]) from public;
grant execute on function stepsync.step_problems(uuid, public.task_steps[])
to authenticated, service_role;

comment on function stepsync.step_problems(uuid, public.task_steps[]) is
'The validation rules: every problem of the given rows as the task''s steps, in order, as '
'a JSON array of {code, message, step_id, step_order, field}. Shared by '
'validate_task_steps (live steps) and validate_steps (a list not saved).';

create or replace function public.validate_task_steps(p_task_id uuid)
returns jsonb
language plpgsql
stable
security invoker
set search_path = ''
as $$
begin
    perform from public.agent_tasks as t where t.id = p_task_id;
    if not found then
        raise exception 'task % not found', p_task_id using errcode = 'P0002';
    end if;
    return stepsync.step_problems(
        p_task_id,
        array(
            select s from public.task_steps as s
            where s.task_id = p_task_id and s.deleted_at is null
            order by s.step_order, s.id
        )
    );
end
$$;

comment on function public.validate_task_steps(uuid) is
'Every problem that keeps the task from running, as a JSON array of {code, message, '
'step_id, step_order, field}; [] when the task is valid. Codes: no_steps, '
'foreign_task_agent, too_many_steps, '
'duplicate_step_order, step_order_gap, step_order_out_of_range, blank_step_name, '
'step_name_too_long, blank_instructions, custom_without_template, '
'selective_without_paths, foreign_agent, inactive_agent, invalid_retry_backoff.';

revoke all on function public.validate_task_steps(uuid) from public, anon;
grant execute on function public.validate_task_steps(uuid) to authenticated, service_role;

create or replace function public.validate_steps(p_task_id uuid, p_steps jsonb)
returns jsonb
language plpgsql
stable
security invoker
set search_path = ''
as $$
begin
    perform from public.agent_tasks as t where t.id = p_task_id;
    if not found then
        raise exception 'task % not found', p_task_id using errcode = 'P0002';
    end if;
    return stepsync.step_problems(p_task_id, stepsync.parse_steps(p_task_id, p_steps, false));
end
$$;

comment on function public.validate_steps(uuid, jsonb) is
'Every problem of a step list that is not saved (save_task_steps'' p_steps: the editor''s '
'state, a draft) as the task''s steps, writing nothing: the JSON array and codes of '
'validate_task_steps, plus duplicate_step and unknown_step (an id listed twice, an id '
'that is not a live step of the task). A list that is not one (not an array, an item '
'not an object, a value of the wrong type, an unknown field) is an error (22023).';

revoke all on function public.validate_steps(uuid, jsonb) from public, anon;
grant execute on function public.validate_steps(uuid, jsonb) to authenticated, service_role;
