-- Context assembly: what a step receives from its run.
--
-- One function, stepsync.build_step_context, turns a run context and a step definition
-- into the step's input. Leasing a step (lease_steps) uses it on real runs and the
-- preview RPCs on hypothetical ones, so the preview shows exactly what execution sends.
--
-- Run context (stepsync.run_context):
--   {"task": {"id", "name"}, "run": {"id", "trigger_type", "trigger_data"},
--    "steps": [{"order", "name", "status", "output", "error", "started_at",
--               "completed_at", "duration_ms", "attempts"}, ...]}
-- A step sees the steps before it only (stepsync.context_before adds "previous").
--
-- Building the input context is most of what leasing a step costs, and calling a helper
-- once per step can cost more than its work: a SQL-language function with its own
-- search_path is never inlined, and its query is planned again by every statement that
-- calls it. So:
-- - the run context's two parts are views (run_context_heads: task and run;
--   run_context_entries: one entry per step run), which the planner inlines: lease_steps
--   joins them into its one statement and run_context reads them too, one definition of
--   the shape;
-- - the helpers called per step are PL/pgSQL (their plans are kept for the session);
-- - build_step_context touches only what the step's mode shows: `none` the task and run,
--   `previous` also the last earlier step, `full` and `metadata` the earlier steps; only
--   `selective` and `custom`, which read the whole context, build it. Redaction goes by
--   key, and no key of the run context's own structure (task, run, steps and their
--   fields) looks secret, so redacting a part gives what that part of the redacted whole
--   would be. truncate_json and redact_secrets are called only for values that need them.

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

revoke all on function stepsync.is_secret_key(text) from public;
grant execute on function stepsync.is_secret_key(text) to service_role;

create or replace function stepsync.redact_secrets(p_value jsonb)
returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
begin
    -- Every key is_secret_key matches holds one of these, in any case, whatever its
    -- separators (apiKey, api-key, API_KEY all hold "key"); most values hold none, and
    -- one search of their text spares the walk.
    if p_value is null
        or p_value::text !~* 'pass|secret|token|key|authori|credential|cookie|bearer|signature' then
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

revoke all on function stepsync.redact_secrets(jsonb) from public;
grant execute on function stepsync.redact_secrets(jsonb) to service_role;

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

revoke all on function stepsync.truncate_json(jsonb, integer) from public;
grant execute on function stepsync.truncate_json(jsonb, integer) to service_role;

create or replace view stepsync.run_context_heads
with (security_invoker = true) as
select
    r.id as run_id,
    jsonb_build_object(
        'task', jsonb_build_object(
            'id', r.task_id,
            -- The task's name as the run started, else looked up by key.
            'name', coalesce(
                r.metadata ->> 'task_name',
                (
                    select t.name from public.agent_tasks as t
                    where t.id = r.task_id
                )
            )
        ),
        'run', jsonb_build_object(
            'id', r.id,
            'trigger_type', r.trigger_type,
            'trigger_data', r.trigger_data
        )
    ) as head
from public.agent_task_executions as r;

comment on view stepsync.run_context_heads is
'The task and run parts of each run''s context (see run_context).';
comment on column stepsync.run_context_heads.run_id is 'The run.';
comment on column stepsync.run_context_heads.head is
'{"task": {"id", "name"}, "run": {"id", "trigger_type", "trigger_data"}}.';

create or replace view stepsync.run_context_entries
with (security_invoker = true) as
select
    s.run_id,
    s.step_order,
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
    ) as entry
from public.task_step_executions as s;

comment on view stepsync.run_context_entries is
'Each step run as it appears in the "steps" list of its run''s context (see run_context).';
comment on column stepsync.run_context_entries.run_id is 'The run.';
comment on column stepsync.run_context_entries.step_order is 'Position of the step in the run.';
comment on column stepsync.run_context_entries.entry is
'{"order", "name", "status", "output", "error", "started_at", "completed_at", '
'"duration_ms", "attempts"}.';

revoke all on stepsync.run_context_heads, stepsync.run_context_entries
from public, anon, authenticated;
grant select on stepsync.run_context_heads, stepsync.run_context_entries to service_role;

create or replace function stepsync.run_context(p_run_id uuid)
returns jsonb
language sql
stable
set search_path = ''
as $$
    select h.head || jsonb_build_object(
        'steps', coalesce(
            (
                select jsonb_agg(e.entry order by e.step_order)
                from stepsync.run_context_entries as e
                where e.run_id = h.run_id
            ),
            '[]'::jsonb
        )
    )
    from stepsync.run_context_heads as h
    where h.run_id = p_run_id
$$;

comment on function stepsync.run_context(uuid) is
'The run context of a run: task, run (trigger) and every step''s status, output, error, '
'timings and attempts, in order. Unredacted and untruncated.';

revoke all on function stepsync.run_context(uuid) from public;
grant execute on function stepsync.run_context(uuid) to service_role;

create or replace function stepsync.steps_before(p_run_context jsonb, p_step_order integer)
returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    earlier jsonb;
begin
    -- Run contexts list their steps in order, so when the last one is earlier, all are.
    if p_step_order is not null
        and coalesce((p_run_context #>> '{steps,-1,order}')::integer < p_step_order, true) then
        return coalesce(p_run_context -> 'steps', '[]'::jsonb);
    end if;
    select coalesce(jsonb_agg(s.step order by (s.step ->> 'order')::integer), '[]'::jsonb)
    into earlier
    from jsonb_array_elements(p_run_context -> 'steps') as s (step)
    where (s.step ->> 'order')::integer < p_step_order;
    return earlier;
end
$$;

comment on function stepsync.steps_before(jsonb, integer) is
'The steps of a run context before step p_step_order, in order.';

revoke all on function stepsync.steps_before(jsonb, integer) from public, anon, authenticated;
grant execute on function stepsync.steps_before(jsonb, integer) to service_role;

create or replace function stepsync.context_before(p_run_context jsonb, p_step_order integer)
returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    earlier jsonb := stepsync.steps_before(p_run_context, p_step_order);
begin
    return p_run_context || jsonb_build_object('steps', earlier, 'previous', earlier -> -1);
end
$$;

comment on function stepsync.context_before(jsonb, integer) is
'The run context as step p_step_order sees it: only the steps before it (the context''s '
'steps are in order), and "previous", the last of them.';

revoke all on function stepsync.context_before(jsonb, integer) from public;
grant execute on function stepsync.context_before(jsonb, integer) to service_role;

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

revoke all on function stepsync.should_skip(jsonb, jsonpath) from public;
grant execute on function stepsync.should_skip(jsonb, jsonpath) to service_role;

create or replace function stepsync.render_template(p_template text, p_context jsonb)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    -- No template renders as nothing (an unfinished draft step may have none); a null
    -- here would never reach the end of the loop below.
    rest text := coalesce(p_template, '');
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

revoke all on function stepsync.render_template(text, jsonb) from public;
grant execute on function stepsync.render_template(text, jsonb) to service_role;

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
    earlier jsonb := stepsync.steps_before(p_run_context, p_step_order);
    run jsonb := stepsync.redact_secrets(p_run_context -> 'run');
    mode text := case
        when p_include_previous_context then p_context_mode::text else 'none'
    end;
    visible jsonb;
    base jsonb;
    steps jsonb;
    last_step jsonb;
    budget integer;
    selected jsonb := '{}'::jsonb;
    path jsonpath;
    items jsonb;
begin
    -- Every value that can be large (outputs, trigger data, selections) shares the
    -- budget equally, with a floor so that each keeps a readable head.
    budget := greatest(256, p_max_bytes / greatest(1, jsonb_array_length(earlier) + 1));
    base := jsonb_build_object(
        'mode', mode,
        'task', stepsync.redact_secrets(p_run_context -> 'task'),
        'run', case
            when length((run -> 'trigger_data')::text) <= budget then run
            else jsonb_set(
                run, '{trigger_data}', stepsync.truncate_json(run -> 'trigger_data', budget)
            )
        end,
        'step', jsonb_build_object('order', p_step_order),
        'context_data', case
            when p_context_data is null or p_context_data = '{}'::jsonb then '{}'::jsonb
            else stepsync.redact_secrets(p_context_data)
        end
    );

    case mode
        when 'none' then
            return base;
        when 'previous' then
            last_step := stepsync.redact_secrets(earlier -> -1);
            return base || jsonb_build_object(
                'previous', case
                    when last_step is null then 'null'::jsonb
                    else jsonb_build_object(
                        'order', last_step -> 'order',
                        'name', last_step -> 'name',
                        'status', last_step -> 'status',
                        'output', case
                            when length((last_step -> 'output')::text) <= budget
                                then last_step -> 'output'
                            else stepsync.truncate_json(last_step -> 'output', budget)
                        end,
                        'error', last_step -> 'error'
                    )
                end
            );
        when 'selective' then
            -- Each path is evaluated over the untruncated (redacted) context: no result
            -- is null, one result is the value, several are an array.
            visible := stepsync.redact_secrets(
                stepsync.context_before(p_run_context, p_step_order)
            ) || jsonb_build_object('context_data', base -> 'context_data');
            budget := greatest(256, p_max_bytes / greatest(1, cardinality(p_context_paths)));
            foreach path in array coalesce(p_context_paths, '{}'::jsonpath[]) loop
                items := jsonb_path_query_array(visible, path, '{}'::jsonb, true);
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
        else
            null;
    end case;

    -- full, metadata, custom: every earlier step, redacted, outputs truncated, in one
    -- pass that keeps the fields the mode shows (custom keeps them all).
    steps := coalesce(
        (
            select jsonb_agg(
                case mode
                    when 'full' then jsonb_build_object(
                        'order', e.step -> 'order',
                        'name', e.step -> 'name',
                        'status', e.step -> 'status',
                        'output', e.output,
                        'error', e.step -> 'error'
                    )
                    when 'metadata' then jsonb_build_object(
                        'order', e.step -> 'order',
                        'name', e.step -> 'name',
                        'status', e.step -> 'status',
                        'started_at', e.step -> 'started_at',
                        'completed_at', e.step -> 'completed_at',
                        'duration_ms', e.step -> 'duration_ms',
                        'attempts', e.step -> 'attempts'
                    )
                    else e.step || jsonb_build_object('output', e.output)
                end
                order by e.position
            )
            from (
                select
                    s.step,
                    s.position,
                    case
                        when length((s.step -> 'output')::text) <= budget then s.step -> 'output'
                        else stepsync.truncate_json(s.step -> 'output', budget)
                    end as output
                from jsonb_array_elements(stepsync.redact_secrets(earlier))
                    with ordinality as s (step, position)
            ) as e
        ),
        '[]'::jsonb
    );
    case mode
        when 'full', 'metadata' then
            return base || jsonb_build_object('steps', steps);
        else
            return base || jsonb_build_object(
                'rendered', left(
                    stepsync.render_template(
                        p_context_template,
                        stepsync.redact_secrets(
                            stepsync.context_before(p_run_context, p_step_order)
                        ) || jsonb_build_object(
                            'steps', steps,
                            'previous', steps -> -1,
                            'context_data', base -> 'context_data'
                        )
                    ),
                    p_max_bytes
                )
            );
    end case;
end
$$;

comment on function stepsync.build_step_context(
    jsonb, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb, integer
) is
'The input context of step p_step_order given its run context and definition: mode, task, '
'run, step, context_data, plus steps (full, metadata), previous, selected (selective) or '
'rendered (custom). Secrets redacted; large values truncated to share p_max_bytes.';

revoke all on function stepsync.build_step_context(
    jsonb, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb, integer
) from public;
grant execute on function stepsync.build_step_context(
    jsonb, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb, integer
) to service_role;
