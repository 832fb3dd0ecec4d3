-- RPCs the UI calls through PostgREST to edit a task's steps. All are SECURITY INVOKER in
-- public: row level security decides what the caller may touch. Errors name the
-- offending item and field (and the limit it breaks, 0015_limits.sql), quote at most a
-- short excerpt of what was sent, and any error leaves nothing written (one statement,
-- one transaction).

-- A task_steps row holding the column defaults, read from the catalog so the defaults
-- are defined only once, on the table.
create or replace function stepsync.task_step_defaults()
returns public.task_steps
language plpgsql
volatile
set search_path = ''
as $$
declare
    step public.task_steps;
begin
    execute (
        select
            'select (row('
            || string_agg(
                coalesce(pg_catalog.pg_get_expr(d.adbin, d.adrelid), 'null')
                || '::' || pg_catalog.format_type(a.atttypid, a.atttypmod),
                ', ' order by a.attnum
            )
            || ')::public.task_steps).*'
        from pg_catalog.pg_attribute as a
        left join pg_catalog.pg_attrdef as d
            on a.attrelid = d.adrelid and a.attnum = d.adnum
        where
            a.attrelid = 'public.task_steps'::regclass
            and a.attnum > 0
            and not a.attisdropped
    ) into step;
    return step;
end
$$;

revoke all on function stepsync.task_step_defaults() from public;
grant execute on function stepsync.task_step_defaults() to authenticated, service_role;

comment on function stepsync.task_step_defaults() is
'A new task_steps row with every column default applied (id, timestamps, settings).';

create or replace function stepsync.user_jsonpath(
    p_text text, p_field text, p_max_chars integer
)
returns jsonpath
language plpgsql
immutable
set search_path = ''
as $$
declare
    parsed jsonpath;
    problem text;
begin
    -- Its printed form may be longer than what was sent (keys get quoted), but never
    -- many times longer: a text far over the limit is refused before it is parsed.
    if char_length(p_text) > 4 * p_max_chars then
        raise exception '%: % characters, more than the limit of %',
            p_field, char_length(p_text), p_max_chars
            using errcode = '22023';
    end if;
    begin
        parsed := p_text::jsonpath;
    exception when others then
        raise exception '%: not a valid jsonpath: %', p_field, stepsync.excerpt(sqlerrm, 200)
            using errcode = '22023';
    end;
    problem := stepsync.jsonpath_problem(parsed, p_max_chars);
    if problem is not null then
        raise exception '%: %', p_field, problem
            using
                errcode = '22023',
                hint = 'Paths select with .key, [n], [last], [*], .* and filters ?(@… == '
                || 'literal); see docs/schema.md, "Limits".';
    end if;
    return parsed;
end
$$;

revoke all on function stepsync.user_jsonpath(text, text, integer) from public;
grant execute on function stepsync.user_jsonpath(text, text, integer)
to authenticated, service_role;

comment on function stepsync.user_jsonpath(text, text, integer) is
'A jsonpath a user wrote, parsed and held to the checked subset '
'(stepsync.jsonpath_problem); errors (22023) name p_field.';

-- Applies one JSON step object onto a row, checking every field; errors are
-- 22023 "steps[<index>].<field>: <problem>". Not strict (p_strict false), a field of the
-- right type is taken even when its content would keep the task from running (blank
-- instructions, a custom mode without template, ...): validate_steps reports those as
-- problems, with the codes of validate_task_steps, and a draft may hold them until it
-- is published. A value of the wrong type or an unknown field is an error either way.
create or replace function stepsync.task_step_from_json(
    p_step public.task_steps, p_item jsonb, p_index integer, p_strict boolean default true
)
returns public.task_steps
language plpgsql
stable
set search_path = ''
as $$
declare
    step public.task_steps := p_step;
    item_name text := format('steps[%s]', p_index);
    field text;
    value jsonb;
    text_value text;
    number_value numeric;
    path_value jsonpath;
    paths jsonpath[];
    lowest integer;
    highest integer;
    problem text;
begin
    if jsonb_typeof(p_item) is distinct from 'object' then
        raise exception '%: must be a JSON object', item_name using errcode = '22023';
    end if;
    for field, value in select e.key, e.value from jsonb_each(p_item) as e loop
        text_value := value #>> '{}';
        case
            when field in (
                'id', 'task_id', 'step_order', 'status', 'execution_result',
                'created_at', 'updated_at', 'deleted_at', 'deleted_by'
            ) then
                null; -- identity and position come from the call; the rest is read-only
            when field in (
                'step_name', 'instructions', 'context_template', 'compensate_instructions'
            ) then
                if jsonb_typeof(value) = 'null'
                    and field in ('context_template', 'compensate_instructions') then
                    text_value := null;
                elsif jsonb_typeof(value) <> 'string' then
                    raise exception '%.%: must be a string', item_name, field
                        using errcode = '22023';
                elsif p_strict and field = 'step_name' and (
                    char_length(text_value) > stepsync.input_limit('step_name_chars')
                    or stepsync.is_blank(text_value)
                ) then
                    raise exception '%.step_name: must have 1 to % characters and not be blank',
                        item_name, stepsync.input_limit('step_name_chars')
                        using errcode = '22023';
                elsif p_strict and field = 'instructions' and stepsync.is_blank(text_value) then
                    raise exception '%.instructions: must not be blank', item_name
                        using errcode = '22023';
                elsif field in ('instructions', 'compensate_instructions')
                    and octet_length(text_value) > stepsync.input_limit('instructions_bytes') then
                    raise exception '%.%: % bytes, more than the limit of %',
                        item_name, field, octet_length(text_value),
                        stepsync.input_limit('instructions_bytes')
                        using errcode = '22023';
                elsif field = 'context_template'
                    and stepsync.template_problem(text_value) is not null then
                    raise exception '%.context_template: %',
                        item_name, stepsync.template_problem(text_value)
                        using errcode = '22023';
                end if;
                case field
                    when 'step_name' then step.step_name := text_value;
                    when 'instructions' then step.instructions := text_value;
                    when 'context_template' then step.context_template := text_value;
                    -- An empty compensation field in a form means none.
                    else step.compensate_instructions := nullif(btrim(text_value), '');
                end case;
            when field = 'include_previous_context' then
                if jsonb_typeof(value) <> 'boolean' then
                    raise exception '%.include_previous_context: must be true or false',
                        item_name
                        using errcode = '22023';
                end if;
                step.include_previous_context := value::boolean;
            when field = 'context_data' then
                if jsonb_typeof(value) <> 'object' then
                    raise exception '%.context_data: must be a JSON object', item_name
                        using errcode = '22023';
                end if;
                problem := stepsync.json_problem(
                    value, stepsync.input_limit('context_data_bytes')
                );
                if problem is not null then
                    raise exception '%.context_data: %', item_name, problem
                        using errcode = '22023';
                end if;
                step.context_data := value;
            when field = 'context_mode' then
                if jsonb_typeof(value) <> 'string'
                    or text_value <> all(enum_range(null::public.step_context_mode)::text[]) then
                    raise exception '%.context_mode: must be one of %', item_name,
                        array_to_string(enum_range(null::public.step_context_mode)::text[], ', ')
                        using errcode = '22023';
                end if;
                step.context_mode := text_value::public.step_context_mode;
            when field = 'on_failure' then
                if jsonb_typeof(value) <> 'string'
                    or text_value <> all(enum_range(null::public.step_failure_action)::text[]) then
                    raise exception '%.on_failure: must be one of %', item_name,
                        array_to_string(enum_range(null::public.step_failure_action)::text[], ', ')
                        using errcode = '22023';
                end if;
                step.on_failure := text_value::public.step_failure_action;
            when field = 'skip_if' then
                if jsonb_typeof(value) = 'null' then
                    step.skip_if := null;
                elsif jsonb_typeof(value) <> 'string' then
                    raise exception '%.skip_if: must be a jsonpath string', item_name
                        using errcode = '22023';
                else
                    path_value := stepsync.user_jsonpath(
                        text_value, item_name || '.skip_if', stepsync.input_limit('skip_if_chars')
                    );
                    step.skip_if := path_value;
                end if;
            when field = 'context_paths' then
                if jsonb_typeof(value) <> 'array' then
                    raise exception '%.context_paths: must be an array of jsonpath strings',
                        item_name
                        using errcode = '22023';
                end if;
                if jsonb_array_length(value) > stepsync.input_limit('context_paths') then
                    raise exception '%.context_paths: % paths, more than the limit of %',
                        item_name, jsonb_array_length(value), stepsync.input_limit('context_paths')
                        using errcode = '22023';
                end if;
                paths := '{}';
                for text_value, number_value in
                    select e.value #>> '{}', e.ordinality - 1
                    from jsonb_array_elements(value) with ordinality as e
                loop
                    if jsonb_typeof(value -> number_value::integer) <> 'string' then
                        raise exception '%.context_paths[%]: must be a jsonpath string',
                            item_name, number_value
                            using errcode = '22023';
                    end if;
                    path_value := stepsync.user_jsonpath(
                        text_value,
                        format('%s.context_paths[%s]', item_name, number_value),
                        stepsync.input_limit('jsonpath_chars')
                    );
                    paths := paths || path_value;
                end loop;
                step.context_paths := paths;
            when field in (
                'max_attempts', 'retry_backoff_seconds', 'retry_backoff_max_seconds',
                'timeout_seconds', 'max_lost_leases'
            ) then
                number_value := case when jsonb_typeof(value) = 'number' then value::numeric end;
                lowest := case when field in ('max_attempts', 'timeout_seconds') then 1 else 0 end;
                highest := case field
                    when 'max_attempts' then 20
                    when 'max_lost_leases' then 20
                    when 'retry_backoff_seconds' then 3600
                    else 86400
                end;
                if number_value is null
                    or number_value <> trunc(number_value)
                    or number_value not between lowest and highest then
                    raise exception '%.%: must be a whole number between % and %',
                        item_name, field, lowest, highest
                        using errcode = '22023';
                end if;
                case field
                    when 'max_attempts' then step.max_attempts := number_value;
                    when 'max_lost_leases' then step.max_lost_leases := number_value;
                    when 'retry_backoff_seconds' then step.retry_backoff_seconds := number_value;
                    when 'retry_backoff_max_seconds' then
                        step.retry_backoff_max_seconds := number_value;
                    else step.timeout_seconds := number_value;
                end case;
            when field = 'agent_id' then
                if jsonb_typeof(value) = 'null' then
                    step.agent_id := null;
                elsif jsonb_typeof(value) <> 'string'
                    or text_value !~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$' then
                    raise exception '%.agent_id: must be an agent id (uuid) or null', item_name
                        using errcode = '22023';
                else
                    step.agent_id := text_value::uuid;
                end if;
            else
                raise exception '%.%: unknown field', item_name, stepsync.excerpt(field, 40)
                    using errcode = '22023',
                    hint = 'Fields: step_name, instructions, include_previous_context, '
                    'context_data, context_mode, context_paths, context_template, skip_if, '
                    'on_failure, max_attempts, retry_backoff_seconds, '
                    'retry_backoff_max_seconds, timeout_seconds, max_lost_leases, agent_id, '
                    'compensate_instructions (and id).';
        end case;
    end loop;

    if step.step_name is null then
        step.step_name := format('Step %s', p_index + 1);
    end if;
    if not p_strict then
        -- Missing instructions are blank instructions to validate_steps.
        step.instructions := coalesce(step.instructions, '');
        return step;
    end if;
    if step.instructions is null then
        raise exception '%.instructions: required for a new step', item_name
            using errcode = '22023';
    end if;
    if step.context_mode = 'custom'
        and coalesce(stepsync.is_blank(step.context_template), true) then
        raise exception '%.context_template: required when context_mode is custom', item_name
            using errcode = '22023';
    end if;
    if step.context_mode = 'selective' and cardinality(step.context_paths) = 0 then
        raise exception '%.context_paths: at least one path is required when context_mode '
        'is selective', item_name
            using errcode = '22023';
    end if;
    if step.retry_backoff_max_seconds < step.retry_backoff_seconds then
        raise exception '%.retry_backoff_max_seconds: must not be below retry_backoff_seconds',
            item_name
            using errcode = '22023';
    end if;
    return step;
end
$$;

revoke all on function stepsync.task_step_from_json(public.task_steps, jsonb, integer, boolean)
from public;
grant execute on function stepsync.task_step_from_json(
    public.task_steps, jsonb, integer, boolean
) to authenticated, service_role;

comment on function stepsync.task_step_from_json(public.task_steps, jsonb, integer, boolean) is
'Applies a JSON step object to a row, checking each field and its limits '
'(stepsync.input_limits()); errors name steps[index].field. Not strict, content that '
'validate_steps reports as a problem is taken as given (the byte limits still hold).';

-- A step list as save_task_steps receives it, read into task_steps rows in list order
-- (step_order = position): items with an id start from that live step of the task,
-- items without one from the column defaults. Strict (save_task_steps), every problem is
-- an error naming steps[index].field. Not strict (validate_steps, drafts, previews),
-- only a list that is not one (a value of the wrong type, an unknown field) is an
-- error; the rest stays in the rows for stepsync.step_problems to report: a new item
-- keeps a null id, an id that is not a live step of the task is kept as given, and so
-- is a foreign agent.
create or replace function stepsync.parse_steps(
    p_task_id uuid, p_steps jsonb, p_strict boolean
)
returns public.task_steps[]
language plpgsql
volatile
set search_path = ''
as $$
declare
    item jsonb;
    item_index integer;
    step public.task_steps;
    base public.task_steps;
    parsed public.task_steps[] := '{}';
    listed uuid[] := '{}';
    step_id uuid;
begin
    if jsonb_typeof(p_steps) is distinct from 'array' then
        raise exception 'steps: must be a JSON array of step objects' using errcode = '22023';
    end if;
    if p_strict and jsonb_array_length(p_steps) = 0 then
        raise exception 'steps: a task needs at least one step' using errcode = '22023';
    end if;
    if p_strict and jsonb_array_length(p_steps) > 50 then
        raise exception 'steps: a task has at most 50 steps (got %)', jsonb_array_length(p_steps)
            using errcode = '22023';
    end if;

    for item, item_index in
        select e.value, e.ordinality - 1
        from jsonb_array_elements(p_steps) with ordinality as e
    loop
        if jsonb_typeof(item) is distinct from 'object' then
            raise exception 'steps[%]: must be a JSON object', item_index
                using errcode = '22023';
        end if;
        if item ? 'task_id' and item ->> 'task_id' is distinct from p_task_id::text then
            raise exception 'steps[%].task_id: must be % or left out', item_index, p_task_id
                using errcode = '22023';
        end if;
        if coalesce(jsonb_typeof(item -> 'id'), 'null') = 'null' then
            base := stepsync.task_step_defaults();
            base.task_id := p_task_id;
            if not p_strict then
                base.id := null;
            end if;
        else
            begin
                step_id := (item ->> 'id')::uuid;
            exception when invalid_text_representation then
                raise exception 'steps[%].id: not a step id (uuid): %',
                    item_index, stepsync.excerpt((item -> 'id')::text, 60)
                    using errcode = '22023';
            end;
            if p_strict and step_id = any(listed) then
                raise exception 'steps[%].id: step % is listed twice', item_index, step_id
                    using errcode = '22023';
            end if;
            select s.* into base
            from public.task_steps as s
            where s.id = step_id and s.task_id = p_task_id and s.deleted_at is null;
            if not found and p_strict then
                raise exception 'steps[%].id: % is not a live step of task %',
                    item_index, step_id, p_task_id
                    using errcode = '22023';
            elsif not found then
                base := stepsync.task_step_defaults();
                base.id := step_id;
                base.task_id := p_task_id;
            end if;
            listed := listed || step_id;
        end if;
        step := stepsync.task_step_from_json(base, item, item_index, p_strict);
        step.step_order := item_index + 1;
        if p_strict
            and step.agent_id is not null
            and step.agent_id is distinct from base.agent_id
            and not exists (
                select
                from public.agents as a
                inner join public.agent_tasks as t on a.user_id = t.user_id
                where a.id = step.agent_id and t.id = p_task_id
            ) then
            raise exception 'steps[%].agent_id: agent % does not belong to the task owner',
                item_index, step.agent_id
                using errcode = '22023';
        end if;
        parsed := parsed || step;
    end loop;
    return parsed;
end
$$;

revoke all on function stepsync.parse_steps(uuid, jsonb, boolean) from public;
grant execute on function stepsync.parse_steps(uuid, jsonb, boolean)
to authenticated, service_role;

comment on function stepsync.parse_steps(uuid, jsonb, boolean) is
'Reads a step list (save_task_steps'' p_steps) into task_steps rows in list order. '
'Strict: every problem is an error naming steps[index].field. Not strict: only a '
'malformed list is an error, the rest is left for step_problems (new items have a null '
'id). Runs as the caller: ids resolve to the live steps it can see.';

create or replace function public.save_task_steps(p_task_id uuid, p_steps jsonb)
returns setof public.task_steps
language plpgsql
security invoker
set search_path = ''
as $$
declare
    saved public.task_steps[];
    kept uuid[];
begin
    perform from public.agent_tasks as t where t.id = p_task_id for update;
    if not found then
        raise exception 'task % not found', p_task_id using errcode = 'P0002';
    end if;
    saved := stepsync.parse_steps(p_task_id, p_steps, true);
    -- The listed steps that exist already (each a live step of the task: parse_steps
    -- checked); the others are new.
    kept := array(
        select r.id from unnest(saved) as r
        where exists (
            select from public.task_steps as s
            where s.id = r.id and s.task_id = p_task_id and s.deleted_at is null
        )
    );

    -- Positions move freely until every statement below is done.
    set constraints public.task_steps_live_order_unique deferred;

    update public.task_steps as s
    set
        step_order = r.step_order,
        step_name = r.step_name,
        instructions = r.instructions,
        include_previous_context = r.include_previous_context,
        context_data = r.context_data,
        context_mode = r.context_mode,
        context_paths = r.context_paths,
        context_template = r.context_template,
        skip_if = r.skip_if,
        on_failure = r.on_failure,
        max_attempts = r.max_attempts,
        retry_backoff_seconds = r.retry_backoff_seconds,
        retry_backoff_max_seconds = r.retry_backoff_max_seconds,
        timeout_seconds = r.timeout_seconds,
        max_lost_leases = r.max_lost_leases,
        agent_id = r.agent_id,
        compensate_instructions = r.compensate_instructions
    from unnest(saved) as r
    where
        s.id = r.id
        and s.id = any(kept)
        and (
            s.step_order, s.step_name, s.instructions, s.include_previous_context,
            s.context_data, s.context_mode, s.context_paths::text, s.context_template,
            s.skip_if::text, s.on_failure, s.max_attempts, s.retry_backoff_seconds,
            s.retry_backoff_max_seconds, s.timeout_seconds, s.max_lost_leases, s.agent_id,
            s.compensate_instructions
        ) is distinct from (
            r.step_order, r.step_name, r.instructions, r.include_previous_context,
            r.context_data, r.context_mode, r.context_paths::text, r.context_template,
            r.skip_if::text, r.on_failure, r.max_attempts, r.retry_backoff_seconds,
            r.retry_backoff_max_seconds, r.timeout_seconds, r.max_lost_leases, r.agent_id,
            r.compensate_instructions
        );

    insert into public.task_steps (
        id, task_id, step_order, step_name, instructions, include_previous_context,
        context_data, context_mode, context_paths, context_template, skip_if, on_failure,
        max_attempts, retry_backoff_seconds, retry_backoff_max_seconds, timeout_seconds,
        max_lost_leases, agent_id, compensate_instructions
    )
    select
        r.id, r.task_id, r.step_order, r.step_name, r.instructions,
        r.include_previous_context, r.context_data, r.context_mode, r.context_paths,
        r.context_template, r.skip_if, r.on_failure, r.max_attempts,
        r.retry_backoff_seconds, r.retry_backoff_max_seconds, r.timeout_seconds,
        r.max_lost_leases, r.agent_id, r.compensate_instructions
    from unnest(saved) as r
    where r.id <> all(kept)
    order by r.step_order;

    -- Through DELETE, which the soft-delete trigger turns into a soft delete (for the
    -- service role too, with stepsync.force_soft_delete).
    perform pg_catalog.set_config('stepsync.force_soft_delete', 'on', true);
    delete from public.task_steps as s
    where
        s.task_id = p_task_id
        and s.deleted_at is null
        and s.id <> all(array(select r.id from unnest(saved) as r));
    perform pg_catalog.set_config('stepsync.force_soft_delete', 'off', true);

    set constraints public.task_steps_live_order_unique immediate;

    return query
    select s.* from public.task_steps as s
    where s.task_id = p_task_id and s.deleted_at is null
    order by s.step_order;
end
$$;

comment on function public.save_task_steps(uuid, jsonb) is
'Makes p_steps (a JSON array of step objects, in order) the task''s live steps: items '
'with an id update that step, items without one create a step, live steps left out are '
'soft-deleted. All or nothing; errors name steps[index].field. Returns the live steps.';

revoke all on function public.save_task_steps(uuid, jsonb) from public, anon;
grant execute on function public.save_task_steps(uuid, jsonb) to authenticated, service_role;

create or replace function public.reorder_task_steps(p_task_id uuid, p_step_ids uuid[])
returns setof public.task_steps
language plpgsql
security invoker
set search_path = ''
as $$
declare
    repeated uuid;
    missing uuid[];
    unknown uuid[];
begin
    perform from public.agent_tasks as t where t.id = p_task_id for update;
    if not found then
        raise exception 'task % not found', p_task_id using errcode = 'P0002';
    end if;
    if p_step_ids is null or array_position(p_step_ids, null) is not null then
        raise exception 'p_step_ids: must be an array of step ids without nulls'
            using errcode = '22023';
    end if;
    if cardinality(p_step_ids) > stepsync.input_limit('step_ids') then
        raise exception 'p_step_ids: % ids, more than a task''s % steps',
            cardinality(p_step_ids), stepsync.input_limit('step_ids')
            using errcode = '22023';
    end if;
    select x.id into repeated
    from unnest(p_step_ids) as x (id)
    group by x.id
    having count(*) > 1
    limit 1;
    if found then
        raise exception 'p_step_ids: step % is listed twice', repeated using errcode = '22023';
    end if;
    select array_agg(s.id order by s.step_order) into missing
    from public.task_steps as s
    where s.task_id = p_task_id and s.deleted_at is null and s.id <> all(p_step_ids);
    select array_agg(x.id) into unknown
    from unnest(p_step_ids) as x (id)
    where not exists (
        select from public.task_steps as s
        where s.id = x.id and s.task_id = p_task_id and s.deleted_at is null
    );
    if missing is not null or unknown is not null then
        raise exception 'p_step_ids: must list exactly the live steps of task %', p_task_id
            using
                errcode = '22023',
                detail = concat_ws(
                    '; ',
                    'missing: ' || array_to_string(missing[1:10], ', ')
                    || case when cardinality(missing) > 10 then ', …' else '' end,
                    'not live steps of this task: ' || array_to_string(unknown[1:10], ', ')
                    || case when cardinality(unknown) > 10 then ', …' else '' end
                );
    end if;

    update public.task_steps as s
    set step_order = o.position
    from unnest(p_step_ids) with ordinality as o (id, position)
    where
        s.id = o.id
        and s.task_id = p_task_id
        and s.deleted_at is null
        and s.step_order <> o.position;

    return query
    select s.* from public.task_steps as s
    where s.task_id = p_task_id and s.deleted_at is null
    order by s.step_order;
end
$$;

comment on function public.reorder_task_steps(uuid, uuid[]) is
'Puts the task''s live steps in the order of p_step_ids (which must list exactly them), '
'in one UPDATE. Returns the live steps in their new order.';

revoke all on function public.reorder_task_steps(uuid, uuid[]) from public, anon;
grant execute on function public.reorder_task_steps(uuid, uuid[]) to authenticated, service_role;
