-- Context assembly at claim time, cheaper; same results.
--
-- Building a step's input context was most of what a claim cost. Most of that was not the
-- work itself but calling SQL-language helpers once per claimed step: a SQL function
-- with its own search_path is never inlined, and its query is planned again for every
-- statement that calls it. So:
-- - the run context's two parts are views (stepsync.run_context_heads: task and run;
--   stepsync.run_context_entries: one entry per step run), which the planner inlines.
--   Leasing a step (migration …004100) joins them into its statement, run_context reads
--   them too: one definition of the shape, no per-step call;
-- - context_before is PL/pgSQL (its plan is kept for the session) and leaves a context
--   alone when all its steps are already earlier;
-- - build_step_context calls truncate_json and redact_secrets only for values that need
--   them (a value whose text fits the budget is its own truncation; an empty
--   context_data has nothing to redact), and prepares the step list only for the modes
--   that show it.

create or replace view stepsync.run_context_heads
with (security_invoker = true) as
select
    r.id as run_id,
    jsonb_build_object(
        'task', jsonb_build_object(
            'id', r.task_id,
            'name', coalesce(r.metadata ->> 'task_name', t.name)
        ),
        'run', jsonb_build_object(
            'id', r.id,
            'trigger_type', r.trigger_type,
            'trigger_data', r.trigger_data
        )
    ) as head
from public.agent_task_executions as r
inner join public.agent_tasks as t on r.task_id = t.id;

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

create or replace function stepsync.context_before(p_run_context jsonb, p_step_order integer)
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
        earlier := coalesce(p_run_context -> 'steps', '[]'::jsonb);
    else
        select coalesce(jsonb_agg(s.step order by (s.step ->> 'order')::integer), '[]'::jsonb)
        into earlier
        from jsonb_array_elements(p_run_context -> 'steps') as s (step)
        where (s.step ->> 'order')::integer < p_step_order;
    end if;
    return p_run_context || jsonb_build_object('steps', earlier, 'previous', earlier -> -1);
end
$$;

comment on function stepsync.context_before(jsonb, integer) is
'The run context as step p_step_order sees it: only the steps before it (the context''s '
'steps are in order), and "previous", the last of them.';

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
        'run', case
            when length((visible #> '{run,trigger_data}')::text) <= budget then visible -> 'run'
            else jsonb_set(
                visible -> 'run',
                '{trigger_data}',
                stepsync.truncate_json(visible #> '{run,trigger_data}', budget)
            )
        end,
        'step', jsonb_build_object('order', p_step_order),
        'context_data', case
            when p_context_data is null or p_context_data = '{}'::jsonb then '{}'::jsonb
            else stepsync.redact_secrets(p_context_data)
        end
    );
    -- The step list, outputs truncated, only as far as the mode shows it: all steps, only
    -- the last one (previous), or none (none, selective: those read visible itself).
    steps := coalesce(
        (
            select jsonb_agg(
                case
                    when length((s.step -> 'output')::text) <= budget then s.step
                    else s.step || jsonb_build_object(
                        'output', stepsync.truncate_json(s.step -> 'output', budget)
                    )
                end
                order by s.position
            )
            from jsonb_array_elements(
                case
                    when mode in ('none', 'selective') then '[]'::jsonb
                    when mode = 'previous' then jsonb_path_query_array(visible, '$.steps[last]')
                    else visible -> 'steps'
                end
            ) with ordinality as s (step, position)
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
