-- Preview: every step's input as a new run would send it (the editor's "preview mode").
--
-- The run context is hypothetical: each earlier step contributes its result from the
-- task's last run (matched by step id), or, where it has none, a marked placeholder
-- "<output of step N: not run yet>". The input itself comes from step_input, the
-- function that leasing a step uses: a step whose input cannot be built shows
-- {"context_error": why}, as a run would fail it, and the other steps still show theirs.

create or replace function stepsync.preview_task_run(p_task_id uuid)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
    task public.agent_tasks;
    last_run_id uuid;
    run_context jsonb;
    previews jsonb := '[]'::jsonb;
    definition record;
begin
    task := stepsync.authorized_task(p_task_id);

    select r.id into last_run_id
    from public.agent_task_executions as r
    where r.task_id = task.id and r.step_count > 0
    order by r.created_at desc, r.id desc
    limit 1;

    run_context := jsonb_build_object(
        'task', jsonb_build_object('id', task.id, 'name', task.name),
        'run', jsonb_build_object(
            'id', null, 'trigger_type', 'manual', 'trigger_data', '{}'::jsonb
        ),
        'steps', (
            select coalesce(jsonb_agg(
                case
                    when e.status in ('completed', 'failed', 'skipped') then jsonb_build_object(
                        'order', d.step_order,
                        'name', d.step_name,
                        'status', e.status,
                        'output', e.output,
                        'error', e.error_message,
                        'started_at', e.started_at,
                        'completed_at', e.completed_at,
                        'duration_ms', e.duration_ms,
                        'attempts', e.attempt
                    )
                    else jsonb_build_object(
                        'order', d.step_order,
                        'name', d.step_name,
                        'status', 'pending',
                        'output', format('<output of step %s: not run yet>', d.step_order),
                        'error', null,
                        'started_at', null,
                        'completed_at', null,
                        'duration_ms', null,
                        'attempts', 0
                    )
                end
                order by d.step_order
            ), '[]'::jsonb)
            from stepsync.step_definitions(task.id) as d
            left join public.task_step_executions as e
                on
                    e.run_id = last_run_id
                    and (
                        e.step_id = d.step_id
                        or (d.step_id is null and e.step_id is null and e.step_order = 1)
                    )
        )
    );

    for definition in
        select d.* from stepsync.step_definitions(task.id) as d order by d.step_order
    loop
        previews := previews || jsonb_build_array(
            jsonb_build_object(
                'step_id', definition.step_id,
                'order', definition.step_order,
                'name', definition.step_name,
                'instructions', definition.instructions,
                'would_skip', stepsync.should_skip(
                    stepsync.context_before(run_context, definition.step_order),
                    definition.skip_if
                ),
                'input', stepsync.step_input(
                    run_context,
                    definition.step_order,
                    definition.include_previous_context,
                    definition.context_mode,
                    definition.context_paths,
                    definition.context_template,
                    definition.context_data
                )
            )
        );
    end loop;

    return jsonb_build_object(
        'task_id', task.id,
        'based_on_run_id', last_run_id,
        'steps', previews
    );
end
$$;

comment on function stepsync.preview_task_run(uuid) is
'Every step''s input as a new manual run would send it, built from the last run''s results '
'or marked placeholders. For the task''s owner and the service. Use public.preview_task_run.';

create or replace function stepsync.preview_step_context(p_step_id uuid)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
    step_task_id uuid;
    step_owner uuid;
begin
    select s.task_id, t.user_id into step_task_id, step_owner
    from public.task_steps as s
    inner join public.agent_tasks as t on s.task_id = t.id
    where s.id = p_step_id and s.deleted_at is null;
    if not found
        or (not stepsync.caller_is_service() and step_owner is distinct from auth.uid()) then
        raise exception 'step % not found', p_step_id
            using errcode = 'P0002',
            hint = 'Check the step id (deleted steps have no preview); only the task''s owner '
            || 'and the service may preview it.';
    end if;

    return (
        select p.preview || jsonb_build_object('based_on_run_id', run.preview -> 'based_on_run_id')
        from (select stepsync.preview_task_run(step_task_id) as preview) as run
        cross join lateral jsonb_array_elements(run.preview -> 'steps') as p (preview)
        where p.preview ->> 'step_id' = p_step_id::text
    );
end
$$;

comment on function stepsync.preview_step_context(uuid) is
'One step''s entry of preview_task_run. For the task''s owner and the service. Use '
'public.preview_step_context.';

revoke all on function stepsync.preview_task_run(uuid) from public;
revoke all on function stepsync.preview_step_context(uuid) from public;
grant execute on function stepsync.preview_task_run(uuid) to authenticated, service_role;
grant execute on function stepsync.preview_step_context(uuid) to authenticated, service_role;

create or replace function public.preview_task_run(p_task_id uuid)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
    select stepsync.preview_task_run(p_task_id)
$$;

comment on function public.preview_task_run(uuid) is
'Preview mode: {"task_id", "based_on_run_id", "steps": [{"step_id", "order", "name", '
'"instructions", "would_skip", "input"}]}, each input exactly as execution would build it, '
'from the last run''s outputs or placeholders "<output of step N: not run yet>".';

create or replace function public.preview_step_context(p_step_id uuid)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
    select stepsync.preview_step_context(p_step_id)
$$;

comment on function public.preview_step_context(uuid) is
'Context preview of one step: its preview_task_run entry ({"step_id", "order", "name", '
'"instructions", "would_skip", "input", "based_on_run_id"}).';

revoke all on function public.preview_task_run(uuid) from public, anon;
revoke all on function public.preview_step_context(uuid) from public, anon;
grant execute on function public.preview_task_run(uuid) to authenticated, service_role;
grant execute on function public.preview_step_context(uuid) to authenticated, service_role;
