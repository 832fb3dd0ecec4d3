-- Context assembly: what a step receives from its run.
--
-- One function, stepsync.build_step_context, turns a run context and a step definition
-- into the step's input. claim_steps uses it on real runs and the preview RPCs on
-- hypothetical ones, so the preview shows exactly what execution sends.
--
-- Run context (stepsync.run_context):
--   {"task": {"id", "name"}, "run": {"id", "trigger_type", "trigger_data"},
--    "steps": [{"order", "name", "status", "output", "error", "started_at",
--               "completed_at", "duration_ms", "attempts"}, ...]}
-- A step sees the steps before it only (stepsync.context_before adds "previous").

create or replace function stepsync.is_secret_key(p_key text)
returns boolean
language sql
immutable
parallel safe
set search_path = ''
as $$
    -- camelCase and kebab-case are folded to snake_case first, so apiKey, api-key and
    -- API_KEY all match; the words must stand alone (total_tokens is not a secret).
    select lower(
        regexp_replace(
            regexp_replace(p_key, '([a-z0-9])([A-Z])', '\1_\2', 'g'),
            '[^A-Za-z0-9]+', '_', 'g'
        )
    ) ~ (
        '(^|_)(password|passwd|passphrase|secret|token|api_?key|authorization|'
        || 'access_?key|private_?key|client_secret|credentials?|cookie|session_?key|'
        || 'bearer|signature)(_|$)'
    )
$$;

comment on function stepsync.is_secret_key(text) is
'Whether a JSON key looks like it holds a secret (password, token, api_key, ...).';

create or replace function stepsync.redact_secrets(p_value jsonb)
returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
begin
    -- Most values hold no secret-looking word at all: one regex over the text (a superset
    -- of is_secret_key) spares the walk.
    if p_value is null
        or p_value::text !~* (
            'password|passwd|passphrase|secret|token|api.?key|authorization|access.?key|'
            || 'private.?key|credential|cookie|session.?key|bearer|signature'
        ) then
        return p_value;
    end if;
    case jsonb_typeof(p_value)
        when 'object' then
            return coalesce(
                (
                    select jsonb_object_agg(
                        e.key,
                        case
                            when stepsync.is_secret_key(e.key) then '"[redacted]"'::jsonb
                            else stepsync.redact_secrets(e.value)
                        end
                    )
                    from jsonb_each(p_value) as e
                ),
                '{}'::jsonb
            );
        when 'array' then
            return coalesce(
                (
                    select jsonb_agg(stepsync.redact_secrets(e.value) order by e.position)
                    from jsonb_array_elements(p_value) with ordinality as e (value, position)
                ),
                '[]'::jsonb
            );
        else
            return p_value;
    end case;
end
$$;

comment on function stepsync.redact_secrets(jsonb) is
'Replaces the value of every secret-looking key, at any depth, with "[redacted]".';

create or replace function stepsync.truncate_json(p_value jsonb, p_max_chars integer)
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
    select case
        when p_value is null or length(p_value::text) <= p_max_chars then p_value
        else to_jsonb(
            left(p_value::text, p_max_chars)
            || format(
                '…[truncated %s bytes]',
                octet_length(p_value::text) - octet_length(left(p_value::text, p_max_chars))
            )
        )
    end
$$;

comment on function stepsync.truncate_json(jsonb, integer) is
'A value whose JSON text is longer than p_max_chars becomes a string: its first '
'p_max_chars characters and a marker "…[truncated N bytes]".';

create or replace function stepsync.run_context(p_run_id uuid)
returns jsonb
language sql
stable
set search_path = ''
as $$
    select jsonb_build_object(
        'task', jsonb_build_object(
            'id', r.task_id,
            'name', coalesce(r.metadata ->> 'task_name', t.name)
        ),
        'run', jsonb_build_object(
            'id', r.id,
            'trigger_type', r.trigger_type,
            'trigger_data', r.trigger_data
        ),
        'steps', coalesce(
            (
                select jsonb_agg(
                    jsonb_build_object(
                        'order', s.step_order,
                        'name', s.step_name,
                        'status', s.status,
                        'output', s.output,
                        'error', s.error_message,
                        'started_at', s.started_at,
                        'completed_at', s.completed_at,
                        'duration_ms', s.duration_ms,
                        'attempts', s.attempt
                    )
                    order by s.step_order
                )
                from public.task_step_executions as s
                where s.run_id = r.id
            ),
            '[]'::jsonb
        )
    )
    from public.agent_task_executions as r
    inner join public.agent_tasks as t on r.task_id = t.id
    where r.id = p_run_id
$$;

comment on function stepsync.run_context(uuid) is
'The run context of a run: task, run (trigger) and every step''s status, output, error, '
'timings and attempts, in order. Unredacted and untruncated.';

create or replace function stepsync.context_before(p_run_context jsonb, p_step_order integer)
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
    with earlier as (
        select coalesce(
            jsonb_agg(s.step order by (s.step ->> 'order')::integer),
            '[]'::jsonb
        ) as steps
        from jsonb_array_elements(p_run_context -> 'steps') as s (step)
        where (s.step ->> 'order')::integer < p_step_order
    )
    select p_run_context
        || jsonb_build_object(
            'steps', earlier.steps,
            'previous', earlier.steps -> -1
        )
    from earlier
$$;

comment on function stepsync.context_before(jsonb, integer) is
'The run context as step p_step_order sees it: only earlier steps ($.steps[0] is step 1), '
'plus "previous" (the step just before, or null). skip_if is evaluated over this.';

create or replace function stepsync.should_skip(p_context jsonb, p_skip_if jsonpath)
returns boolean
language sql
immutable
parallel safe
set search_path = ''
as $$
    -- A predicate (`$.previous.status == "failed"`) skips when true; a path or filter
    -- (`$.steps[0].output ? (@.done)`) skips when it selects anything other than a single
    -- false or null. Evaluation errors count as "do not skip".
    with result as (
        select jsonb_path_query_array(p_context, p_skip_if, '{}'::jsonb, true) as items
    )
    select p_skip_if is not null
        and jsonb_array_length(result.items) > 0
        and result.items not in ('[false]'::jsonb, '[null]'::jsonb)
    from result
$$;

comment on function stepsync.should_skip(jsonb, jsonpath) is
'Whether skip_if holds over a step''s context (see context_before).';

create or replace function stepsync.render_template(p_template text, p_context jsonb)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    rest text := p_template;
    rendered text := '';
    open_at integer;
    close_at integer;
    expression text;
    path jsonpath;
    items jsonb;
begin
    -- Grammar: {{ expr }} where expr is a jsonpath over the context without its leading
    -- "$." (steps[0].output.title, previous.output, task.name, context_data.key); a
    -- leading "$" is accepted too. Strings are inserted as is, other values as JSON.
    loop
        open_at := strpos(rest, '{{');
        exit when open_at = 0;
        close_at := strpos(substr(rest, open_at + 2), '}}');
        exit when close_at = 0;
        expression := btrim(substr(rest, open_at + 2, close_at - 1));
        rendered := rendered || left(rest, open_at - 1);
        rest := substr(rest, open_at + close_at + 3);
        begin
            path := (
                case when left(expression, 1) = '$' then expression else '$.' || expression end
            )::jsonpath;
        exception when others then
            rendered := rendered || format('[invalid placeholder: %s]', expression);
            continue;
        end;
        items := jsonb_path_query_array(p_context, path, '{}'::jsonb, true);
        rendered := rendered || case
            when jsonb_array_length(items) = 0
                then format('[missing: %s]', expression)
            when jsonb_array_length(items) > 1 then items::text
            when jsonb_typeof(items -> 0) = 'string' then items ->> 0
            else (items -> 0)::text
        end;
    end loop;
    return rendered || rest;
end
$$;

comment on function stepsync.render_template(text, jsonb) is
'Substitutes {{expr}} placeholders (jsonpath without "$.") with values from p_context; '
'unknown paths become "[missing: expr]", malformed ones "[invalid placeholder: expr]".';

create or replace function stepsync.build_step_context(
    p_run_context jsonb,
    p_step_order integer,
    p_include_previous_context boolean,
    p_context_mode public.step_context_mode,
    p_context_paths jsonpath[],
    p_context_template text,
    p_context_data jsonb,
    p_max_bytes integer default 65536
)
returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    visible jsonb := stepsync.redact_secrets(
        stepsync.context_before(p_run_context, p_step_order)
    );
    base jsonb;
    steps jsonb;
    budget integer;
    selected jsonb := '{}'::jsonb;
    path jsonpath;
    items jsonb;
    mode text := case
        when p_include_previous_context then p_context_mode::text else 'none'
    end;
begin
    -- Every value that can be large (outputs, trigger data, selections) shares the
    -- budget equally, with a floor so that each keeps a readable head.
    budget := greatest(
        256,
        p_max_bytes / greatest(1, jsonb_array_length(visible -> 'steps') + 1)
    );
    base := jsonb_build_object(
        'mode', mode,
        'task', visible -> 'task',
        'run', jsonb_set(
            visible -> 'run',
            '{trigger_data}',
            stepsync.truncate_json(visible #> '{run,trigger_data}', budget)
        ),
        'step', jsonb_build_object('order', p_step_order),
        'context_data', stepsync.redact_secrets(coalesce(p_context_data, '{}'::jsonb))
    );
    steps := coalesce(
        (
            select jsonb_agg(
                s.step || jsonb_build_object(
                    'output', stepsync.truncate_json(s.step -> 'output', budget)
                )
                order by s.position
            )
            from jsonb_array_elements(visible -> 'steps') with ordinality as s (step, position)
        ),
        '[]'::jsonb
    );

    case mode
        when 'none' then
            return base;
        when 'full' then
            return base || jsonb_build_object(
                'steps', coalesce(
                    (
                        select jsonb_agg(
                            jsonb_build_object(
                                'order', s.step -> 'order',
                                'name', s.step -> 'name',
                                'status', s.step -> 'status',
                                'output', s.step -> 'output',
                                'error', s.step -> 'error'
                            )
                            order by s.position
                        )
                        from jsonb_array_elements(steps) with ordinality as s (step, position)
                    ),
                    '[]'::jsonb
                )
            );
        when 'previous' then
            return base || jsonb_build_object(
                'previous', case
                    when jsonb_array_length(steps) = 0 then 'null'::jsonb
                    else jsonb_build_object(
                        'order', steps #> '{-1,order}',
                        'name', steps #> '{-1,name}',
                        'status', steps #> '{-1,status}',
                        'output', steps #> '{-1,output}',
                        'error', steps #> '{-1,error}'
                    )
                end
            );
        when 'metadata' then
            return base || jsonb_build_object(
                'steps', coalesce(
                    (
                        select jsonb_agg(
                            jsonb_build_object(
                                'order', s.step -> 'order',
                                'name', s.step -> 'name',
                                'status', s.step -> 'status',
                                'started_at', s.step -> 'started_at',
                                'completed_at', s.step -> 'completed_at',
                                'duration_ms', s.step -> 'duration_ms',
                                'attempts', s.step -> 'attempts'
                            )
                            order by s.position
                        )
                        from jsonb_array_elements(steps) with ordinality as s (step, position)
                    ),
                    '[]'::jsonb
                )
            );
        when 'selective' then
            -- Each path is evaluated over the untruncated (redacted) context: no result
            -- is null, one result is the value, several are an array.
            budget := greatest(256, p_max_bytes / greatest(1, cardinality(p_context_paths)));
            foreach path in array coalesce(p_context_paths, '{}'::jsonpath[]) loop
                items := jsonb_path_query_array(
                    visible || jsonb_build_object('context_data', base -> 'context_data'),
                    path, '{}'::jsonb, true
                );
                selected := selected || jsonb_build_object(
                    path::text,
                    stepsync.truncate_json(
                        case jsonb_array_length(items)
                            when 0 then 'null'::jsonb
                            when 1 then items -> 0
                            else items
                        end,
                        budget
                    )
                );
            end loop;
            return base || jsonb_build_object('selected', selected);
        when 'custom' then
            return base || jsonb_build_object(
                'rendered', left(
                    stepsync.render_template(
                        p_context_template,
                        visible || jsonb_build_object(
                            'steps', steps,
                            'previous', steps -> -1,
                            'context_data', base -> 'context_data'
                        )
                    ),
                    p_max_bytes
                )
            );
    end case;
    return base;
end
$$;

comment on function stepsync.build_step_context(
    jsonb, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb, integer
) is
'The input context of step p_step_order given its run context and definition: mode, task, '
'run, step, context_data, plus steps (full, metadata), previous, selected (selective) or '
'rendered (custom). Secrets redacted; large values truncated to share p_max_bytes.';

revoke all on function stepsync.is_secret_key(text) from public;
revoke all on function stepsync.redact_secrets(jsonb) from public;
revoke all on function stepsync.truncate_json(jsonb, integer) from public;
revoke all on function stepsync.run_context(uuid) from public;
revoke all on function stepsync.context_before(jsonb, integer) from public;
revoke all on function stepsync.should_skip(jsonb, jsonpath) from public;
revoke all on function stepsync.render_template(text, jsonb) from public;
revoke all on function stepsync.build_step_context(
    jsonb, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb, integer
) from public;

grant execute on function stepsync.is_secret_key(text) to service_role;
grant execute on function stepsync.redact_secrets(jsonb) to service_role;
grant execute on function stepsync.truncate_json(jsonb, integer) to service_role;
grant execute on function stepsync.run_context(uuid) to service_role;
grant execute on function stepsync.context_before(jsonb, integer) to service_role;
grant execute on function stepsync.should_skip(jsonb, jsonpath) to service_role;
grant execute on function stepsync.render_template(text, jsonb) to service_role;
grant execute on function stepsync.build_step_context(
    jsonb, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb, integer
) to service_role;
