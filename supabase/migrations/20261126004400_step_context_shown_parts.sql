-- Context assembly works on the parts a step's mode shows; same results.
--
-- build_step_context used to start from the whole visible run context whatever the mode:
-- every earlier step merged into a copy of the run context (context_before), all of it
-- turned into text and searched for secret-looking words (redact_secrets), and the step
-- list rebuilt from it. Redaction goes by key, and no key of the run context's own
-- structure (task, run, steps and their fields) looks secret, so redacting a part gives
-- what that part of the redacted whole would be. Now each mode touches only what it
-- shows: `none` the task and run, `previous` also the last earlier step, `full` and
-- `metadata` the earlier steps; only `selective` and `custom`, which read the whole
-- context, build it. redact_secrets' first test (does the text hold a secret-looking word
-- at all?) is a shorter pattern of the same words' common parts: a looser filter, as
-- cheap to pass and half as dear to run.

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

revoke all on function stepsync.steps_before(jsonb, integer) from public, anon, authenticated;
grant execute on function stepsync.steps_before(jsonb, integer) to service_role;
