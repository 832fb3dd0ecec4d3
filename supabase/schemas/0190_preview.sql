-- Preview: every step's input as a new run would send it (the editor's "preview mode").
--
-- The steps previewed are the live ones, the task's draft (p_use_draft) or a list that
-- is not saved (p_steps, as save_task_steps takes it, read by the same parser, with
-- unfinished steps shown as they are). The run context is hypothetical: each earlier
-- step contributes its result from the task's last run (matched by step id), or, where
-- it has none (a new step has no id yet), a marked placeholder
-- "<output of step N: not run yet>". The input itself comes from step_input, the
-- function that leasing a step uses: a step whose input cannot be built shows
-- {"context_error": why}, as a run would fail it, and the other steps still show theirs.

create or replace function stepsync.preview_task_run(
    p_task_id uuid, p_steps jsonb default null, p_use_draft boolean default false
)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
    task public.agent_tasks;
    source text := 'live';
    listed jsonb := p_steps;
    listed_steps public.task_steps[];
    last_run_id uuid;
    run_context jsonb;
    previews jsonb := '[]'::jsonb;
    definition record;
    earlier record;
begin
    task := stepsync.authorized_task(p_task_id);
    if p_steps is not null and coalesce(p_use_draft, false) then
        raise exception 'give p_steps or p_use_draft, not both' using errcode = '22023';
    end if;
    if coalesce(p_use_draft, false) then
        select d.steps into listed from public.task_step_drafts as d where d.task_id = task.id;
        if not found then
            raise exception 'task % has no draft', task.id using errcode = 'P0002';
        end if;
        source := 'draft';
    elsif p_steps is not null then
        source := 'steps';
    end if;
    if listed is not null then
        -- Ids resolve to the live steps of this task only, which the caller may see.
        listed_steps := stepsync.parse_steps(task.id, listed, false);
    end if;

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
        'steps', '[]'::jsonb
    );

    -- In order, each step's input from the steps before it; then its own entry joins the
    -- context for the steps after it.
    for definition in
        select
            d.step_id, d.step_order, d.step_name, d.instructions, d.skip_if,
            d.include_previous_context, d.context_mode, d.context_paths,
            d.context_template, d.context_data
        from stepsync.step_definitions(task.id) as d
        where listed is null
        union all
        select
            s.id, s.step_order, s.step_name, s.instructions, s.skip_if,
            s.include_previous_context, s.context_mode, s.context_paths,
            s.context_template, s.context_data
        from unnest(listed_steps) as s
        order by 2
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

        select e.status, e.output, e.error_message, e.started_at, e.completed_at,
            e.duration_ms, e.attempt
        into earlier
        from public.task_step_executions as e
        where
            e.run_id = last_run_id
            and e.kind = 'step'
            and e.status in ('completed', 'failed', 'skipped')
            and (
                e.step_id = definition.step_id
                -- A legacy one-step run matches the task's legacy step.
                or (
                    listed is null and definition.step_id is null
                    and e.step_id is null and e.step_order = 1
                )
            )
        limit 1;
        run_context := jsonb_set(
            run_context,
            '{steps}',
            (run_context -> 'steps') || jsonb_build_array(
                case
                    when earlier.status is not null then jsonb_build_object(
                        'order', definition.step_order,
                        'name', definition.step_name,
                        'status', earlier.status,
                        'output', earlier.output,
                        'error', earlier.error_message,
                        'started_at', earlier.started_at,
                        'completed_at', earlier.completed_at,
                        'duration_ms', earlier.duration_ms,
                        'attempts', earlier.attempt
                    )
                    else jsonb_build_object(
                        'order', definition.step_order,
                        'name', definition.step_name,
                        'status', 'pending',
                        'output', format(
                            '<output of step %s: not run yet>', definition.step_order
                        ),
                        'error', null,
                        'started_at', null,
                        'completed_at', null,
                        'duration_ms', null,
                        'attempts', 0
                    )
                end
            )
        );
    end loop;

    return jsonb_build_object(
        'task_id', task.id,
        'source', source,
        'based_on_run_id', last_run_id,
        'steps', previews
    );
end
$$;

comment on function stepsync.preview_task_run(uuid, jsonb, boolean) is
'Every step''s input as a new manual run would send it, built from the last run''s results '
'or marked placeholders: of the live steps, the draft (p_use_draft) or an unsaved list '
'(p_steps). For the task''s owner and the service. Use public.preview_task_run.';

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

revoke all on function stepsync.preview_task_run(uuid, jsonb, boolean) from public;
revoke all on function stepsync.preview_step_context(uuid) from public;
grant execute on function stepsync.preview_task_run(uuid, jsonb, boolean)
to authenticated, service_role;
grant execute on function stepsync.preview_step_context(uuid) to authenticated, service_role;

create or replace function public.preview_task_run(
    p_task_id uuid, p_steps jsonb default null, p_use_draft boolean default false
)
returns jsonb
language sql
stable
security invoker
set search_path = ''
as $$
    select stepsync.preview_task_run(p_task_id, p_steps, p_use_draft)
$$;

comment on function public.preview_task_run(uuid, jsonb, boolean) is
'Preview mode: {"task_id", "source", "based_on_run_id", "steps": [{"step_id", "order", '
'"name", "instructions", "would_skip", "input"}]}, each input exactly as execution would '
'build it, from the last run''s outputs or placeholders "<output of step N: not run '
'yet>". source: live (the live steps), draft (p_use_draft: the task''s draft) or steps '
'(p_steps: a list as save_task_steps takes it, not saved; new items have a null '
'step_id). A malformed list is an error (22023).';

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

revoke all on function public.preview_task_run(uuid, jsonb, boolean) from public, anon;
revoke all on function public.preview_step_context(uuid) from public, anon;
grant execute on function public.preview_task_run(uuid, jsonb, boolean)
to authenticated, service_role;
grant execute on function public.preview_step_context(uuid) to authenticated, service_role;
