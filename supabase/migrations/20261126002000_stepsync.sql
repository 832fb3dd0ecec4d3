-- stepsync: schema stepsync, the workflow tables and every function, trigger, policy,
-- grant and comment of the engine, on top of the legacy baseline.
--
-- Written by scripts/build_schema_migration.py from supabase/schemas/*.sql, in file
-- order: read and edit those files (see supabase/schemas/README.md), not this one.

-- Schema stepsync and the types the workflow tables share.
--
-- stepsync holds what the API must not reach: service-only functions, security-definer
-- helpers and bookkeeping tables. PostgREST does not expose it (supabase/config.toml),
-- and the API roles get no more than usage here; each object grants its own privileges.

create schema if not exists stepsync;
comment on schema stepsync is
'stepsync internals: service-only functions and security-definer helpers. '
'Not exposed by PostgREST.';
revoke all on schema stepsync from public;
grant usage on schema stepsync to service_role, authenticated;

-- Created only where missing: a database upgraded from the earlier task_steps variant
-- already has task_step_status, and 20261126001000_upgrade_earlier_task_steps.sql has
-- given it every value below (a value added in this transaction could not be used here).
do $types$
begin
    if to_regtype('public.task_step_status') is null then
        create type public.task_step_status as enum (
            'pending', 'queued', 'running', 'completed', 'failed', 'skipped', 'cancelled'
        );
    end if;
    if to_regtype('public.step_context_mode') is null then
        create type public.step_context_mode as enum (
            'full', 'previous', 'selective', 'metadata', 'custom'
        );
    end if;
    if to_regtype('public.step_failure_action') is null then
        create type public.step_failure_action as enum ('stop', 'continue');
    end if;
end
$types$;

comment on type public.task_step_status is
'Status of a step in its latest run (definition snapshot) or of a step execution.';
comment on type public.step_context_mode is
'What a step receives from earlier steps of its run: full, previous, selective (jsonpaths), '
'metadata (no outputs) or custom (a {{…}} template).';
comment on type public.step_failure_action is
'When a step fails for good: stop the run (remaining steps skipped) or continue with the next.';

-- Limits: what one user may put into the database and ask it to compute.
--
-- Every value a user writes or hands to a run has a size, a nesting depth or a count it
-- cannot exceed, checked where it enters (the step rules of 0030_task_steps_rules.sql and
-- save_task_steps, start_task_run for trigger data, complete_steps for step outputs); a
-- refused value gets an error naming the limit and nothing is written. The limits live
-- in one place, stepsync.input_limits(), so the checks, the error messages and the docs
-- (docs/schema.md, "Limits") agree. The quotas on runs are settings an operator may
-- change (stepsync.settings).
--
-- jsonpath expressions users write (skip_if, context_paths, template placeholders) are
-- restricted to a checked subset whose evaluation is linear in the size of the context:
-- no like_regex (backtracking), no .** (whole-tree walks), no ranges or lists in
-- subscripts (they repeat the same node), no variables, no arithmetic, a comparison has a
-- literal on one side (two sequences compare pairwise), and inside a filter paths start
-- at @ (a $ path there is walked again for every candidate). Each step of a path then
-- maps a set of distinct nodes to distinct nodes, so a path costs at most its length
-- times the size of the document. No .* either: a value is reached through the keys a
-- path names, so a path naming no secret-looking key selects no secret's value by it
-- (paths run before redaction, see build_step_context).

create or replace function stepsync.input_limits()
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
    select jsonb_build_object(
        -- a step's definition
        'step_name_chars', 200,
        'instructions_bytes', 100000,
        'context_data_bytes', 16384,
        'context_template_bytes', 20000,
        'template_placeholders', 100,
        'context_paths', 10,
        'jsonpath_chars', 500,
        'skip_if_chars', 1000,
        'jsonpath_filters', 4,
        'jsonpath_nesting', 8,
        -- what a run is given and what its steps return
        'json_levels', 32,
        'trigger_data_bytes', 65536,
        'output_bytes', 65536,
        'error_chars', 10000,
        -- what a step receives
        'context_chars', 65536,
        'task_name_chars', 200,
        -- one call
        'step_ids', 50
    )
$$;

comment on function stepsync.input_limits() is
'Every input limit, by name: sizes (bytes of UTF-8 text, of JSON text for JSON values), '
'nesting levels and counts. The one definition the checks, messages and docs use.';

revoke all on function stepsync.input_limits() from public;
grant execute on function stepsync.input_limits() to authenticated, service_role;

create or replace function stepsync.input_limit(p_name text)
returns integer
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    found_limit integer := (stepsync.input_limits() ->> p_name)::integer;
begin
    -- A misspelt name must not read as "no limit".
    if found_limit is null then
        raise exception 'no input limit named %', coalesce(quote_literal(p_name), 'null')
            using errcode = '22023';
    end if;
    return found_limit;
end
$$;

comment on function stepsync.input_limit(text) is
'One limit of stepsync.input_limits(); an unknown name is an error, never "unlimited".';

revoke all on function stepsync.input_limit(text) from public;
grant execute on function stepsync.input_limit(text) to authenticated, service_role;

create or replace function stepsync.is_blank(p_text text)
returns boolean
language sql
immutable
parallel safe
set search_path = ''
as $$
    -- Unicode whitespace and the invisible format characters (no-break, zero-width and
    -- ideographic spaces, the byte order mark): a text of only these says nothing.
    select p_text !~ (
        '[^[:space:]\u0085\u00a0\u1680\u180e\u2000-\u200f\u2028\u2029\u202f\u205f'
        || '\u2060-\u2064\u3000\ufeff]'
    )
$$;

comment on function stepsync.is_blank(text) is
'Whether a text holds nothing but whitespace (Unicode spaces, zero-width and format '
'characters included): the not-blank rule of names, instructions and templates.';

revoke all on function stepsync.is_blank(text) from public;
grant execute on function stepsync.is_blank(text) to authenticated, service_role;

create or replace function stepsync.excerpt(p_text text, p_chars integer default 80)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
    select case
        when char_length(p_text) <= p_chars then p_text
        else left(p_text, p_chars) || format('… (%s characters)', char_length(p_text))
    end
$$;

comment on function stepsync.excerpt(text, integer) is
'The start of a text for an error message, with its length when cut: errors quote what '
'they refuse without growing with it.';

revoke all on function stepsync.excerpt(text, integer) from public;
grant execute on function stepsync.excerpt(text, integer) to authenticated, service_role;

create or replace function stepsync.json_problem(
    p_value jsonb, p_max_bytes integer, p_max_levels integer default null
)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    levels integer := coalesce(p_max_levels, stepsync.input_limit('json_levels'));
    bytes bigint;
begin
    if p_value is null then
        return null;
    end if;
    -- JSON text can be at most six times the stored form (\u0001 escapes), so a small
    -- value needs no conversion to text.
    if pg_catalog.pg_column_size(p_value) * 6 > p_max_bytes then
        bytes := octet_length(p_value::text);
        if bytes > p_max_bytes then
            return format('is %s bytes of JSON, more than the limit of %s', bytes, p_max_bytes);
        end if;
    end if;
    -- Nesting: a value at level N + 1 (the top is level 0) exists. jsonpath walks the
    -- levels itself, stopping at that level, so a value nested thousands deep costs no
    -- deeper recursion than the limit; a value smaller than N + 1 containers is never
    -- that deep.
    if pg_catalog.pg_column_size(p_value) > 4 * levels
        and jsonb_path_exists(p_value, format('strict $.**{%s}', levels + 1)::jsonpath) then
        return format('nests deeper than %s levels', levels);
    end if;
    return null;
end
$$;

comment on function stepsync.json_problem(jsonb, integer, integer) is
'Why a JSON value breaks the limits (more than p_max_bytes of JSON text, or nested deeper '
'than p_max_levels, default json_levels), or null. Linear, without recursion.';

revoke all on function stepsync.json_problem(jsonb, integer, integer) from public;
grant execute on function stepsync.json_problem(jsonb, integer, integer)
to authenticated, service_role;

create or replace function stepsync.jsonpath_problem(p_path jsonpath, p_max_chars integer)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    -- PostgreSQL prints a jsonpath in one canonical form (keys quoted, operators spaced),
    -- so the checks read that text token by token.
    canonical text := p_path::text;
    tokens text[];
    kinds text[];
    token text;
    kind text;
    i integer;
    open_kinds text[] := '{}';
    filters integer := 0;
    nesting integer := 0;
begin
    if p_path is null then
        return null;
    end if;
    if char_length(canonical) > p_max_chars then
        return format('is %s characters long, more than the limit of %s',
            char_length(canonical), p_max_chars);
    end if;
    select array_agg(m.found[1] order by m.n)
    into tokens
    from regexp_matches(
        canonical,
        '(\$"(?:[^"\\]|\\.)*"|\.\*\*(?:\{[^}]*\})?|\."(?:[^"\\]|\\.)*"|"(?:[^"\\]|\\.)*"'
        || '|\.\*|\[\*\]|\[[^]]*\]|\.[a-z_]+\((?:\))?|\?\(|[$@]|==|!=|<>|<=|>=|<|>|&&'
        || '|\|\||!|[()]|-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|[A-Za-z_]+|\S)',
        'g'
    ) with ordinality as m (found, n);

    kinds := array_fill(''::text, array[coalesce(cardinality(tokens), 0)]);
    for i in 1 .. coalesce(cardinality(tokens), 0) loop
        token := tokens[i];
        kind := case
            when token ~ '^\$"' then 'variables ($name) are not allowed'
            when token ~ '^\.\*\*' then '.** (every level) is not allowed'
            when token ~ '^\."' or token = '[*]' then 'step'
            when token = '.*' then '.* (every member) is not allowed: name the keys'
            when token ~ '^"' then 'literal'
            when token ~ '^\[' then case
                when token ~ '^\[\s*([0-9]+|last(\s*-\s*[0-9]+)?)\s*\]$' then 'step'
                else format('subscript %s: only one index, last or last - n is allowed',
                    token)
            end
            when token ~ '^\.[a-z_]+\(\)$' then case
                when token in (
                    '.size()', '.type()', '.double()', '.abs()', '.floor()', '.ceiling()',
                    '.string()', '.boolean()', '.integer()', '.number()', '.bigint()'
                ) then 'step'
                else format('method %s is not allowed', token)
            end
            when token ~ '^\.[a-z_]+\($' then format('method %s…) is not allowed', token)
            when token = '?(' then 'filter'
            when token in ('$', '@') then 'root'
            when token in ('==', '!=', '<>', '<', '<=', '>', '>=') then 'comparison'
            when token in ('&&', '||', '!', '(', ')') then token
            when token ~ '^-?[0-9]' then 'literal'
            when token in ('true', 'false', 'null') then 'literal'
            when token in ('exists', 'starts', 'with', 'is', 'unknown') then 'word'
            when token in ('strict', 'lax') and i = 1 then 'word'
            when token in ('like_regex', 'flag') then 'like_regex is not allowed'
            else format('%s is not allowed', token)
        end;
        if kind not in (
            'step', 'literal', 'filter', 'root', 'comparison', 'word',
            '&&', '||', '!', '(', ')'
        ) then
            return kind;
        end if;
        kinds[i] := kind;
        if kind in ('filter', '(') then
            open_kinds := open_kinds || kind;
            nesting := greatest(nesting, cardinality(open_kinds));
            filters := filters + (kind = 'filter')::integer;
        elsif kind = ')' then
            open_kinds := open_kinds[1:cardinality(open_kinds) - 1];
        elsif token = '$' and 'filter' = any(open_kinds) then
            return 'inside a filter a path starts at @, not $';
        end if;
    end loop;

    if filters > stepsync.input_limit('jsonpath_filters') then
        return format('has %s filters, more than the limit of %s',
            filters, stepsync.input_limit('jsonpath_filters'));
    end if;
    if nesting > stepsync.input_limit('jsonpath_nesting') then
        return format('nests parentheses %s deep, more than the limit of %s',
            nesting, stepsync.input_limit('jsonpath_nesting'));
    end if;
    -- A comparison walks every pair of its sides: one side must be a single literal.
    for i in 1 .. coalesce(cardinality(tokens), 0) loop
        if kinds[i] = 'comparison'
            and kinds[i - 1] is distinct from 'literal'
            and kinds[i + 1] is distinct from 'literal' then
            return format('comparison %s: one side must be a literal (a string, number, '
                'true, false or null)', tokens[i]);
        end if;
    end loop;
    return null;
end
$$;

comment on function stepsync.jsonpath_problem(jsonpath, integer) is
'Why a user''s jsonpath falls outside the checked subset (see 0015_limits.sql: no '
'like_regex, .**, ranges or lists in subscripts, variables, arithmetic or other methods '
'than size, type and the number and string conversions; a literal on one side of every '
'comparison; @ paths inside filters; at most p_max_chars characters, jsonpath_filters '
'filters, jsonpath_nesting parentheses), or null when it is inside it.';

revoke all on function stepsync.jsonpath_problem(jsonpath, integer) from public;
grant execute on function stepsync.jsonpath_problem(jsonpath, integer)
to authenticated, service_role;

create or replace function stepsync.template_placeholders(p_template text)
returns table (placeholder integer, expression text, literal_before text)
language sql
immutable
parallel safe
set search_path = ''
as $$
    -- {{ expr }} with the shortest match, found in one pass: the n-th placeholder and the
    -- literal text before it (the text after the last one is the row with no expression).
    with pieces as (
        select p.piece, p.ordinality
        from regexp_split_to_table(p_template, '\{\{.*?\}\}') with ordinality as p (piece)
    ),

    found as (
        select btrim(m.match[1]) as expression, m.ordinality
        from regexp_matches(p_template, '\{\{(.*?)\}\}', 'g') with ordinality as m (match)
    )

    select pieces.ordinality::integer, found.expression, pieces.piece
    from pieces
    left join found on pieces.ordinality = found.ordinality
    order by pieces.ordinality
$$;

comment on function stepsync.template_placeholders(text) is
'A template cut at its {{…}} placeholders, in one linear pass: each placeholder''s '
'expression (trimmed) with the literal text before it; the last row has the text after '
'the last placeholder and a null expression.';

revoke all on function stepsync.template_placeholders(text) from public;
grant execute on function stepsync.template_placeholders(text) to authenticated, service_role;

create or replace function stepsync.placeholder_path(p_expression text)
returns jsonpath
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
begin
    return (
        case when left(p_expression, 1) = '$' then p_expression else '$.' || p_expression end
    )::jsonpath;
exception when others then
    return null;
end
$$;

comment on function stepsync.placeholder_path(text) is
'The jsonpath of a template placeholder (its expression, "$." added unless it starts '
'with $), or null when it does not parse.';

revoke all on function stepsync.placeholder_path(text) from public;
grant execute on function stepsync.placeholder_path(text) to authenticated, service_role;

create or replace function stepsync.template_problem(p_template text)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    placeholder record;
    problem text;
    count_found integer := 0;
begin
    if p_template is null then
        return null;
    end if;
    if octet_length(p_template) > stepsync.input_limit('context_template_bytes') then
        return format('is %s bytes, more than the limit of %s',
            octet_length(p_template), stepsync.input_limit('context_template_bytes'));
    end if;
    for placeholder in
        select t.placeholder, t.expression
        from stepsync.template_placeholders(p_template) as t
        where t.expression is not null
    loop
        count_found := count_found + 1;
        if count_found > stepsync.input_limit('template_placeholders') then
            return format('has more than %s placeholders',
                stepsync.input_limit('template_placeholders'));
        end if;
        -- One that does not parse renders as "[invalid placeholder: …]" and costs nothing.
        problem := stepsync.jsonpath_problem(
            stepsync.placeholder_path(placeholder.expression),
            stepsync.input_limit('jsonpath_chars')
        );
        if problem is not null then
            return format('placeholder %s {{%s}}: %s',
                placeholder.placeholder, stepsync.excerpt(placeholder.expression, 60), problem);
        end if;
    end loop;
    return null;
end
$$;

comment on function stepsync.template_problem(text) is
'Why a custom template breaks the limits (size, placeholder count, a placeholder outside '
'the jsonpath subset), or null.';

revoke all on function stepsync.template_problem(text) from public;
grant execute on function stepsync.template_problem(text) to authenticated, service_role;

-- Run quotas: settings an operator changes (as the service role) without a migration.
create table if not exists stepsync.settings (
    name text primary key check (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    value integer not null check (value >= 0),
    description text not null,
    updated_at timestamptz not null default now()
);

alter table stepsync.settings enable row level security;
revoke all on stepsync.settings from public, anon, authenticated;
grant select, update on stepsync.settings to service_role;

create policy "Service role manages settings" on stepsync.settings
for all to service_role using (true) with check (true);

comment on policy "Service role manages settings" on stepsync.settings is
'Only the service role reads and changes the settings; the engine reads them as owner.';

insert into stepsync.settings (name, value, description)
values
(
    'max_active_runs_per_user',
    20,
    'Runs (pending or running) one user may have at once; start_task_run refuses more '
    || 'for API callers (SQLSTATE 53400). 0: no limit.'
),
(
    'max_active_runs_per_task',
    5,
    'Runs (pending or running) one task may have at once; start_task_run refuses more '
    || 'for API callers (SQLSTATE 53400). 0: no limit.'
),
(
    'user_step_spacing_ms',
    1000,
    'How far apart a user''s queued steps are placed in the claim order (milliseconds): '
    || 'a user with many queued steps takes turns with the others instead of going first.'
)
on conflict (name) do nothing;

comment on table stepsync.settings is
'Operator settings of the run engine (quotas, fairness), by name; see docs/schema.md.';
comment on column stepsync.settings.name is 'Setting name.';
comment on column stepsync.settings.value is 'Its value (an integer; the unit is in the name).';
comment on column stepsync.settings.description is 'What it does.';
comment on column stepsync.settings.updated_at is 'When it was last changed.';

create or replace function stepsync.setting(p_name text)
returns integer
language plpgsql
stable
set search_path = ''
as $$
declare
    found_value integer;
begin
    select s.value into found_value from stepsync.settings as s where s.name = p_name;
    if not found then
        raise exception 'no setting named %', coalesce(quote_literal(p_name), 'null')
            using errcode = '22023';
    end if;
    return found_value;
end
$$;

comment on function stepsync.setting(text) is
'The value of one stepsync.settings row; an unknown name is an error.';

revoke all on function stepsync.setting(text) from public, anon, authenticated;
grant execute on function stepsync.setting(text) to service_role;

-- task_steps: the ordered steps of an agent task (the workflow definition).
--
-- Runs never write here except the latest-run snapshot (status, execution_result) the UI
-- shows; each run works on its own copy in task_step_executions.
--
-- The table is created with the columns the earlier task_steps variant also had, and the
-- others are added to it: a database upgraded from that variant
-- (20261126001000_upgrade_earlier_task_steps.sql) already has the table, and ends with the
-- same columns, constraints and indexes as a new one. That upgrade dropped the variant's
-- own constraints and indexes, so they are all added here.

create table if not exists public.task_steps (
    id uuid primary key default gen_random_uuid(),
    task_id uuid not null references public.agent_tasks (id) on delete cascade,
    step_order integer not null,
    step_name text not null,
    instructions text not null,
    include_previous_context boolean not null default false,
    context_data jsonb not null default '{}'::jsonb,
    status public.task_step_status not null default 'pending',
    execution_result jsonb not null default '{}'::jsonb,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- The columns the earlier variant lacks: workflow settings, agent override, soft delete.
alter table public.task_steps
add column if not exists context_mode public.step_context_mode not null default 'previous',
add column if not exists context_paths jsonpath[] not null default '{}',
add column if not exists context_template text,
add column if not exists skip_if jsonpath,
add column if not exists on_failure public.step_failure_action not null default 'stop',
add column if not exists max_attempts integer not null default 1,
add column if not exists max_lost_leases integer not null default 3,
add column if not exists retry_backoff_seconds integer not null default 5,
add column if not exists retry_backoff_max_seconds integer not null default 600,
add column if not exists timeout_seconds integer not null default 300,
add column if not exists agent_id uuid references public.agents (id) on delete set null,
add column if not exists compensate_instructions text,
add column if not exists deleted_at timestamptz,
add column if not exists deleted_by uuid;

alter table public.task_steps
add constraint task_steps_step_order_range check (step_order between 1 and 50),
add constraint task_steps_step_name_length check (
    char_length(step_name) <= stepsync.input_limit('step_name_chars')
    and not stepsync.is_blank(step_name)
),
add constraint task_steps_instructions_not_blank check (
    not stepsync.is_blank(instructions)
),
add constraint task_steps_instructions_size check (
    octet_length(instructions) <= stepsync.input_limit('instructions_bytes')
),
add constraint task_steps_context_data_object check (jsonb_typeof(context_data) = 'object'),
add constraint task_steps_custom_needs_template check (
    context_mode <> 'custom' or not coalesce(stepsync.is_blank(context_template), true)
),
add constraint task_steps_context_template_size check (
    octet_length(context_template) <= stepsync.input_limit('context_template_bytes')
),
add constraint task_steps_selective_needs_paths check (
    context_mode <> 'selective' or cardinality(context_paths) > 0
),
add constraint task_steps_context_paths_count check (
    cardinality(context_paths) <= stepsync.input_limit('context_paths')
),
add constraint task_steps_max_attempts_range check (max_attempts between 1 and 20),
add constraint task_steps_max_lost_leases_range check (max_lost_leases between 0 and 20),
add constraint task_steps_backoff_range check (
    retry_backoff_seconds between 0 and 3600
    and retry_backoff_max_seconds between retry_backoff_seconds and 86400
),
add constraint task_steps_timeout_range check (timeout_seconds between 1 and 86400),
add constraint task_steps_compensate_not_blank check (btrim(compensate_instructions) <> ''),
-- Order is unique among live steps only, and checked at the end of each statement so a
-- single UPDATE can permute the order (reorder_task_steps). Its index serves every
-- (task_id, step_order) lookup of live steps; a step number of 1..50 caps a task at
-- 50 live steps.
add constraint task_steps_live_order_unique exclude using btree (
    task_id with =, step_order with =
) where (deleted_at is null) deferrable initially immediate;

create index if not exists task_steps_task_id_idx on public.task_steps (task_id);
create index if not exists task_steps_agent_id_idx on public.task_steps (agent_id)
where agent_id is not null;

alter table public.task_steps enable row level security;

comment on table public.task_steps is
'Ordered steps of an agent task: the workflow definition. 1–50 live steps per task; '
'soft-deleted rows keep deleted_at.';
comment on column public.task_steps.step_order is
'1-based position among the task''s live steps; unique among live rows (deferrable).';
comment on column public.task_steps.step_name is 'Short label shown in the UI.';
comment on column public.task_steps.instructions is
'What the agent is asked to do in this step: not blank, at most instructions_bytes '
'(stepsync.input_limits()).';
comment on column public.task_steps.include_previous_context is
'Whether the step receives context from earlier steps (shaped by context_mode).';
comment on column public.task_steps.context_data is
'Static JSON object always given to the step with its instructions (at most '
'context_data_bytes of JSON, json_levels deep: checked by stepsync.check_task_step).';
comment on column public.task_steps.status is
'Status of this step in the task''s latest run (a snapshot for the UI).';
comment on column public.task_steps.execution_result is
'Result of this step in the task''s latest run (a snapshot for the UI).';
comment on column public.task_steps.context_mode is
'How earlier steps are summarised when include_previous_context is true.';
comment on column public.task_steps.context_paths is
'jsonpath expressions over the run context, for context_mode = selective; each inside '
'the checked subset (stepsync.jsonpath_problem).';
comment on column public.task_steps.context_template is
'Template with {{…}} placeholders over the run context, for context_mode = custom; '
'placeholders inside the checked jsonpath subset (stepsync.template_problem).';
comment on column public.task_steps.skip_if is
'jsonpath predicate over the run context, inside the checked subset; when true the step '
'is skipped.';
comment on column public.task_steps.on_failure is
'What a failure (attempts exhausted) does to the run: stop or continue.';
comment on column public.task_steps.max_attempts is
'Attempts before the step fails for good (1 = no retry). Counts the step''s own errors '
'and timeouts; a lost lease (its worker died or lost the database) is not one.';
comment on column public.task_steps.max_lost_leases is
'How often the step may lose its lease (its worker died or lost the database) and be '
'queued again without using an attempt; one more loss fails it. Protects the workers '
'from a step that kills whoever runs it.';
comment on column public.task_steps.retry_backoff_seconds is
'Base delay before a retry; doubled each attempt, with jitter.';
comment on column public.task_steps.retry_backoff_max_seconds is
'Upper bound of the retry delay.';
comment on column public.task_steps.timeout_seconds is
'Longest one attempt may run before it counts as failed.';
comment on column public.task_steps.agent_id is
'Optional agent override for this step; must belong to the task''s owner.';
comment on column public.task_steps.compensate_instructions is
'What undoes this step''s effects when a later failure stops its run (or a cancel asks '
'for it): run as a compensation step after the run stops, newest completed step first. '
'Null: the step needs no undoing.';
comment on column public.task_steps.deleted_at is 'Soft delete: when the step was deleted.';
comment on column public.task_steps.deleted_by is 'Soft delete: who deleted the step.';
comment on column public.task_steps.created_at is 'When the step was created.';
comment on column public.task_steps.updated_at is 'When the step was last changed.';
comment on constraint task_steps_live_order_unique on public.task_steps is
'Live steps of a task have distinct positions; deferrable for one-statement reorders.';
comment on index public.task_steps_task_id_idx is
'Serves the cascade from agent_tasks and RLS lookups that include soft-deleted rows.';
comment on index public.task_steps_agent_id_idx is
'Serves the agent foreign key (on delete set null) without scanning every step.';
comment on column public.task_steps.id is 'Step id.';
comment on column public.task_steps.task_id is 'The agent task this step belongs to.';
comment on constraint task_steps_step_order_range on public.task_steps is
'Positions run 1..50: with unique live positions, at most 50 live steps per task.';
comment on constraint task_steps_step_name_length on public.task_steps is
'A step name has at most step_name_chars (200) characters and is not blank (Unicode '
'whitespace and invisible characters count as blank).';
comment on constraint task_steps_instructions_not_blank on public.task_steps is
'Every step says what to do (Unicode whitespace and invisible characters are blank).';
comment on constraint task_steps_instructions_size on public.task_steps is
'Instructions hold at most instructions_bytes (stepsync.input_limits()).';
comment on constraint task_steps_context_template_size on public.task_steps is
'A custom template holds at most context_template_bytes (stepsync.input_limits()).';
comment on constraint task_steps_context_paths_count on public.task_steps is
'A selective step names at most context_paths jsonpaths (stepsync.input_limits()).';
comment on constraint task_steps_context_data_object on public.task_steps is
'Static context is a JSON object.';
comment on constraint task_steps_custom_needs_template on public.task_steps is
'context_mode custom needs a template that is not blank.';
comment on constraint task_steps_selective_needs_paths on public.task_steps is
'context_mode selective needs at least one jsonpath.';
comment on constraint task_steps_max_attempts_range on public.task_steps is
'1 to 20 attempts.';
comment on constraint task_steps_max_lost_leases_range on public.task_steps is
'0 to 20 lost leases before the step fails.';
comment on constraint task_steps_backoff_range on public.task_steps is
'Backoff base 0..3600 s, its cap between the base and 86400 s.';
comment on constraint task_steps_timeout_range on public.task_steps is
'An attempt may run 1 s to 24 h.';
comment on constraint task_steps_compensate_not_blank on public.task_steps is
'A compensation says what to do; no compensation is null.';

-- Rules checked on every write of a step that the column constraints cannot express,
-- each failing with a message that names the field.
--
-- - A step stays in its task (task_id never changes).
-- - The agent override must be an agent the task's owner owns. The function runs as the
--   caller, so for an API user a foreign agent is invisible and reported the same way.
-- - step_order 1..50 with a message about the 50-step limit; an insert without one
--   appends the step.
-- - The limits a column constraint cannot check cheaply (0015_limits.sql): context_data
--   size and depth, skip_if and context_paths inside the jsonpath subset, the template's
--   placeholders. They are checked when the value is written or changed, not again when
--   the engine writes a step's latest-run snapshot.
-- - updated_at follows every change.

create or replace function stepsync.check_task_step()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
    problem text;
    path_index integer;
begin
    if tg_op = 'UPDATE' and new.task_id is distinct from old.task_id then
        raise exception 'task_id: a step cannot move to another task'
            using errcode = '23514';
    end if;
    -- A REST insert without a position appends the step after the task's live steps.
    if tg_op = 'INSERT' and new.step_order is null then
        select coalesce(max(s.step_order), 0) + 1 into new.step_order
        from public.task_steps as s
        where s.task_id = new.task_id and s.deleted_at is null;
    end if;
    if new.step_order is not null and new.step_order not between 1 and 50 then
        raise exception 'step_order: % is outside 1..50 (a task has at most 50 steps)',
            new.step_order
            using errcode = '23514';
    end if;
    if new.agent_id is not null
        and (tg_op = 'INSERT' or new.agent_id is distinct from old.agent_id)
        and not exists (
            select
            from public.agents as a
            inner join public.agent_tasks as t on a.user_id = t.user_id
            where a.id = new.agent_id and t.id = new.task_id
        ) then
        raise exception 'agent_id: agent % does not belong to the owner of task %',
            new.agent_id, new.task_id
            using errcode = '23514';
    end if;
    if tg_op = 'INSERT' or new.context_data is distinct from old.context_data then
        problem := stepsync.json_problem(
            new.context_data, stepsync.input_limit('context_data_bytes')
        );
        if problem is not null then
            raise exception 'context_data: %', problem using errcode = '23514';
        end if;
    end if;
    if tg_op = 'INSERT' or new.skip_if::text is distinct from old.skip_if::text then
        problem := stepsync.jsonpath_problem(new.skip_if, stepsync.input_limit('skip_if_chars'));
        if problem is not null then
            raise exception 'skip_if: %', problem using errcode = '23514';
        end if;
    end if;
    if tg_op = 'INSERT' or new.context_paths::text is distinct from old.context_paths::text then
        for path_index in 1 .. coalesce(cardinality(new.context_paths), 0) loop
            problem := stepsync.jsonpath_problem(
                new.context_paths[path_index], stepsync.input_limit('jsonpath_chars')
            );
            if problem is not null then
                raise exception 'context_paths[%]: %', path_index - 1, problem
                    using errcode = '23514';
            end if;
        end loop;
    end if;
    if tg_op = 'INSERT' or new.context_template is distinct from old.context_template then
        problem := stepsync.template_problem(new.context_template);
        if problem is not null then
            raise exception 'context_template: %', problem using errcode = '23514';
        end if;
    end if;
    if tg_op = 'UPDATE' then
        new.updated_at := now();
    end if;
    return new;
end
$$;

revoke all on function stepsync.check_task_step() from public;

comment on function stepsync.check_task_step() is
'Trigger: a step stays in its task, its agent override belongs to the task owner, '
'its order is within 1..50 (appended when not given), its context_data, skip_if, '
'context_paths and template are within the limits (checked when written or changed); '
'keeps updated_at current.';

-- On INSERT the trigger only fires when there is something to check, so a bulk insert
-- of plain steps (a backfill batch) pays nothing for it; the limits of plain columns are
-- column constraints (0020_task_steps.sql).
create trigger task_steps_check_insert
before insert on public.task_steps
for each row
when (
    new.agent_id is not null
    or new.step_order is null
    or new.step_order not between 1 and 50
    or new.context_data <> '{}'::jsonb
    or new.skip_if is not null
    or cardinality(new.context_paths) > 0
    or new.context_template is not null
)
execute function stepsync.check_task_step();

create trigger task_steps_check_update
before update on public.task_steps
for each row execute function stepsync.check_task_step();

comment on trigger task_steps_check_insert on public.task_steps is
'Checks a new step''s agent override, order and JSON/jsonpath/template limits (clear '
'errors); appends it when no position is given.';
comment on trigger task_steps_check_update on public.task_steps is
'Checks a changed step''s task, agent override and order; keeps updated_at current.';

-- Audit: an append-only history of every insert, update and delete on the workflow tables.
--
-- Statement-level triggers with transition tables write one set-based INSERT per statement,
-- so a bulk write (a backfill batch) costs one extra statement, not one per row. Each row
-- records who (auth.uid() and the database role), when, the operation, the old and new row,
-- the task it belongs to and its owner, and an optional tag from the setting
-- stepsync.audit_tag (a backfill sets it to its run id; only the service's tag counts, an
-- API caller's is ignored). Owners read the rows of their own tasks through the API;
-- nobody updates or deletes them, not even the table owner without first dropping the
-- guard trigger.
--
-- The history is complete without repeating itself: an INSERT records the whole new row
-- and a DELETE the whole old one, an UPDATE of a small row (both versions within 4 KB)
-- the whole old and new row, and of a larger one every changed column (old and new
-- value) and, for readability, the unchanged columns of up to 256 bytes; a large
-- unchanged value (instructions, context_data) is already in the row's earlier history.
-- Columns that copy data kept elsewhere (task_steps.execution_result, the latest run's
-- result, which task_step_executions holds) are recorded with their members over 256
-- bytes replaced by a digest {"md5", "bytes"}, so a finished run does not copy its
-- outputs into the audit.
--
-- Any table with a uuid id and a task_id (or run_id) column joins with one call:
--     select stepsync.attach_audit('public.task_step_executions');

create table if not exists public.audit_log (
    id bigint generated always as identity primary key,
    occurred_at timestamptz not null default now(),
    table_schema text not null,
    table_name text not null,
    operation text not null check (operation in ('INSERT', 'UPDATE', 'DELETE')),
    record_id uuid,
    task_id uuid,
    owner_id uuid,
    actor_id uuid,
    actor_role text not null,
    tag text,
    transaction_id xid8 not null default pg_current_xact_id(),
    old_record jsonb,
    new_record jsonb
);

create index if not exists audit_log_occurred_at_brin on public.audit_log
using brin (occurred_at);
create index if not exists audit_log_owner_id_idx on public.audit_log (owner_id);
create index if not exists audit_log_task_id_idx on public.audit_log (task_id, id);

comment on table public.audit_log is
'Append-only history of changes to the workflow tables, written only by audit triggers.';
comment on column public.audit_log.id is 'Position in the history (increasing).';
comment on constraint audit_log_operation_check on public.audit_log is
'The three audited operations.';
comment on column public.audit_log.occurred_at is 'Start time of the writing transaction.';
comment on column public.audit_log.table_schema is 'Schema of the changed table.';
comment on column public.audit_log.table_name is 'Name of the changed table.';
comment on column public.audit_log.operation is 'INSERT, UPDATE or DELETE.';
comment on column public.audit_log.record_id is 'Primary key (id) of the changed row.';
comment on column public.audit_log.task_id is 'The agent task the changed row belongs to.';
comment on column public.audit_log.owner_id is
'Owner of that task when the change happened; owners read their own rows.';
comment on column public.audit_log.actor_id is 'auth.uid() of the writer (null for the service).';
comment on column public.audit_log.actor_role is
'Database role that made the change (authenticated, service_role, postgres, ...).';
comment on column public.audit_log.tag is
'Value of the setting stepsync.audit_tag, e.g. the backfill run that made the change.';
comment on column public.audit_log.transaction_id is 'Transaction that made the change.';
comment on column public.audit_log.old_record is 'The row before the change (UPDATE, DELETE).';
comment on column public.audit_log.new_record is 'The row after the change (INSERT, UPDATE).';
comment on index public.audit_log_occurred_at_brin is
'Time-range scans over the append-only history (BRIN: tiny, insertion ordered).';
comment on index public.audit_log_owner_id_idx is 'Serves the owners'' read policy.';
comment on index public.audit_log_task_id_idx is 'History of one task, in order.';

alter table public.audit_log enable row level security;
revoke all on public.audit_log from public, anon, authenticated, service_role;
grant select on public.audit_log to authenticated, service_role;
-- Its identity sequence too: setval by an API role would make every later audited write
-- collide with an existing id, and with it every write of the workflow tables fail.
revoke all on sequence public.audit_log_id_seq from public, anon, authenticated, service_role;

create policy "Owners read the audit rows of their tasks" on public.audit_log
for select to authenticated
using (owner_id = (select auth.uid()));

create policy "Service role reads the audit log" on public.audit_log
for select to service_role
using (true);

comment on policy "Owners read the audit rows of their tasks" on public.audit_log is
'Owners read the history of their own tasks, including tasks since deleted.';
comment on policy "Service role reads the audit log" on public.audit_log is
'The service reads all history; nobody writes it except the audit triggers.';

create or replace function stepsync.refuse_audit_change()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    raise exception 'audit_log is append-only: % is not allowed', tg_op
        using errcode = '42501';
end
$$;

revoke all on function stepsync.refuse_audit_change() from public;

comment on function stepsync.refuse_audit_change() is
'Trigger: refuses UPDATE, DELETE and TRUNCATE on the audit log.';

create trigger audit_log_append_only
before update or delete on public.audit_log
for each row execute function stepsync.refuse_audit_change();

create trigger audit_log_no_truncate
before truncate on public.audit_log
for each statement execute function stepsync.refuse_audit_change();

comment on trigger audit_log_append_only on public.audit_log is
'Audit rows are never changed or removed.';
comment on trigger audit_log_no_truncate on public.audit_log is
'The audit log is never emptied.';

create or replace function stepsync.audit_digest(p_value jsonb)
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
    -- Members (or the value itself) over 256 bytes become {"md5", "bytes"} of their JSON
    -- text: the audit row says what changed and proves what it was, without the copy.
    select case
        when p_value is null or pg_catalog.pg_column_size(p_value) <= 256 then p_value
        when jsonb_typeof(p_value) = 'object' then (
            select jsonb_object_agg(
                e.key,
                case
                    when pg_catalog.pg_column_size(e.value) <= 256 then e.value
                    else jsonb_build_object(
                        'md5', md5(e.value::text), 'bytes', octet_length(e.value::text)
                    )
                end
            )
            from jsonb_each(p_value) as e
        )
        else jsonb_build_object('md5', md5(p_value::text), 'bytes', octet_length(p_value::text))
    end
$$;

revoke all on function stepsync.audit_digest(jsonb) from public;

comment on function stepsync.audit_digest(jsonb) is
'A copied value as the audit records it: members over 256 bytes (or the whole value) '
'replaced by {"md5", "bytes"} of their JSON text.';

-- SECURITY DEFINER so that the caller needs no privilege on audit_log (a trigger function
-- cannot be called directly, and execute is revoked anyway). The database role comes
-- from the role setting, which SET ROLE changes and a definer does not. TG_ARGV[0] names
-- the column holding the task id (default task_id; agent_tasks passes id); a row with
-- only a run_id finds its task through agent_task_executions. The owner comes from the
-- row itself (agent_tasks), else from the task, or for a row removed together with its
-- task, from that task's earlier audit rows. An UPDATE that leaves a row exactly as it was
-- writes nothing for that row.
--
-- One static INSERT … SELECT straight from the transition table per operation (the three
-- differ only in where the old and new rows come from): PL/pgSQL keeps the plans (a
-- trigger function gets its own cached copy per table), each row goes to jsonb once and
-- its id is read from the row, not from the jsonb. (Gathering the rows into jsonb arrays
-- and unnesting them in a second function costs more than the audit rows themselves on
-- bulk writes such as a backfill batch.) Every lookup is a scalar subquery on a primary
-- key (or the task's history), so it stays an index probe per audited row however large
-- the tables grow; a join here is planned as a hash of the whole agent_tasks table. The
-- plan does not depend on the arguments, so it is generic: custom planning on every
-- small write costs several times the insert itself.
create or replace function stepsync.audit_statement()
returns trigger
language plpgsql
security definer
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set search_path = ''
as $$
declare
    task_column text := coalesce(tg_argv[0], 'task_id');
    actor_id uuid := auth.uid();
    actor_role text := coalesce(
        nullif(current_setting('role', true), 'none'), session_user::text
    );
    -- Only the service's tag is recorded: an API caller can set any setting in its
    -- own transaction, and must not be able to make its changes look like a backfill's.
    tag text := case
        when stepsync.caller_is_service()
            then nullif(current_setting('stepsync.audit_tag', true), '')
    end;
    digest_columns text[] := string_to_array(coalesce(tg_argv[1], ''), ',');
begin
    if tg_op = 'INSERT' then
        insert into public.audit_log (
            table_schema, table_name, operation, record_id, task_id, owner_id,
            actor_id, actor_role, tag, old_record, new_record
        )
        select
            tg_table_schema,
            tg_table_name,
            tg_op,
            owned.record_id,
            owned.task_id,
            coalesce(
                owned.own_user_id,
                (select t.user_id from public.agent_tasks as t where t.id = owned.task_id),
                (
                    select a.owner_id from public.audit_log as a
                    where a.task_id = owned.task_id and a.owner_id is not null
                    order by a.id desc
                    limit 1
                )
            ),
            actor_id,
            actor_role,
            tag,
            null,
            owned.new_record
        from (
            select
                changed.new_record,
                changed.record_id,
                case
                    when task_column = 'id' then (changed.new_record ->> 'user_id')::uuid
                end as own_user_id,
                coalesce(
                    (changed.new_record ->> task_column)::uuid,
                    (
                        select e.task_id from public.agent_task_executions as e
                        where e.id = (changed.new_record ->> 'run_id')::uuid
                    )
                ) as task_id
            from (
                select n.id as record_id, to_jsonb(n) as new_record
                from new_rows as n
                offset 0
            ) as changed
            offset 0
        ) as owned;
    elsif tg_op = 'UPDATE' then
        insert into public.audit_log (
            table_schema, table_name, operation, record_id, task_id, owner_id,
            actor_id, actor_role, tag, old_record, new_record
        )
        select
            tg_table_schema,
            tg_table_name,
            tg_op,
            owned.record_id,
            owned.task_id,
            coalesce(
                owned.own_user_id,
                (select t.user_id from public.agent_tasks as t where t.id = owned.task_id),
                (
                    select a.owner_id from public.audit_log as a
                    where a.task_id = owned.task_id and a.owner_id is not null
                    order by a.id desc
                    limit 1
                )
            ),
            actor_id,
            actor_role,
            tag,
            kept.old_part,
            kept.new_part
        from (
            select
                changed.old_record,
                changed.new_record,
                changed.record_id,
                case
                    when task_column = 'id' then (changed.new_record ->> 'user_id')::uuid
                end as own_user_id,
                coalesce(
                    (changed.new_record ->> task_column)::uuid,
                    (
                        select e.task_id from public.agent_task_executions as e
                        where e.id = (changed.new_record ->> 'run_id')::uuid
                    )
                ) as task_id
            from (
                select n.id as record_id, to_jsonb(o) as old_record, to_jsonb(n) as new_record
                from old_rows as o inner join new_rows as n on o.id = n.id
                offset 0
            ) as changed
            where changed.old_record is distinct from changed.new_record
            offset 0
        ) as owned
        cross join lateral (
            -- A small row (both versions within 4 KB of storage) is recorded whole; a
            -- larger one by what changed, with its small unchanged columns.
            select
                case
                    when pg_catalog.pg_column_size(owned.old_record)
                        + pg_catalog.pg_column_size(owned.new_record) <= 4096
                        then owned.old_record
                    else (
                        select jsonb_object_agg(
                            field.key,
                            case
                                when field.key = any(digest_columns) and field.changed
                                    then stepsync.audit_digest(field.old_value)
                                else field.old_value
                            end
                        )
                        from (
                            select
                                n.key,
                                owned.old_record -> n.key as old_value,
                                n.value is distinct from owned.old_record -> n.key as changed,
                                n.value as new_value
                            from jsonb_each(owned.new_record) as n (key, value)
                        ) as field
                        where field.changed or pg_catalog.pg_column_size(field.new_value) <= 256
                    )
                end as old_part,
                case
                    when pg_catalog.pg_column_size(owned.old_record)
                        + pg_catalog.pg_column_size(owned.new_record) <= 4096
                        then owned.new_record
                    else (
                        select jsonb_object_agg(
                            field.key,
                            case
                                when field.key = any(digest_columns) and field.changed
                                    then stepsync.audit_digest(field.new_value)
                                else field.new_value
                            end
                        )
                        from (
                            select
                                n.key,
                                n.value is distinct from owned.old_record -> n.key as changed,
                                n.value as new_value
                            from jsonb_each(owned.new_record) as n (key, value)
                        ) as field
                        where field.changed or pg_catalog.pg_column_size(field.new_value) <= 256
                    )
                end as new_part
        ) as kept;
    else
        insert into public.audit_log (
            table_schema, table_name, operation, record_id, task_id, owner_id,
            actor_id, actor_role, tag, old_record, new_record
        )
        select
            tg_table_schema,
            tg_table_name,
            tg_op,
            owned.record_id,
            owned.task_id,
            coalesce(
                owned.own_user_id,
                (select t.user_id from public.agent_tasks as t where t.id = owned.task_id),
                (
                    select a.owner_id from public.audit_log as a
                    where a.task_id = owned.task_id and a.owner_id is not null
                    order by a.id desc
                    limit 1
                )
            ),
            actor_id,
            actor_role,
            tag,
            owned.old_record,
            null
        from (
            select
                changed.old_record,
                changed.record_id,
                case
                    when task_column = 'id' then (changed.old_record ->> 'user_id')::uuid
                end as own_user_id,
                coalesce(
                    (changed.old_record ->> task_column)::uuid,
                    (
                        select e.task_id from public.agent_task_executions as e
                        where e.id = (changed.old_record ->> 'run_id')::uuid
                    )
                ) as task_id
            from (
                select o.id as record_id, to_jsonb(o) as old_record
                from old_rows as o
                offset 0
            ) as changed
            offset 0
        ) as owned;
    end if;
    return null;
end
$$;

revoke all on function stepsync.audit_statement() from public;

comment on function stepsync.audit_statement() is
'Statement trigger: writes one audit_log row per changed row with one static INSERT … SELECT '
'from the transition table (UPDATE of a row over 4 KB: changed columns, and unchanged ones '
'up to 256 bytes). '
'TG_ARGV[0] = column holding the task id (default task_id); TG_ARGV[1] = comma-separated '
'columns recorded as digests of their large members (stepsync.audit_digest).';

create or replace function stepsync.attach_audit(
    p_table regclass,
    p_task_column text default 'task_id',
    p_digest_columns text[] default '{}'
)
returns void
language plpgsql
set search_path = ''
as $$
declare
    table_name text := (select c.relname from pg_catalog.pg_class as c where c.oid = p_table);
    operation text;
begin
    foreach operation in array array['insert', 'update', 'delete'] loop
        execute format(
            'create or replace trigger %I after %s on %s referencing %s'
            ' for each statement execute function stepsync.audit_statement(%L, %L)',
            table_name || '_audit_' || operation,
            operation,
            p_table,
            case operation
                when 'insert' then 'new table as new_rows'
                when 'update' then 'old table as old_rows new table as new_rows'
                else 'old table as old_rows'
            end,
            p_task_column,
            array_to_string(coalesce(p_digest_columns, '{}'), ',')
        );
        execute format(
            'comment on trigger %I on %s is %L',
            table_name || '_audit_' || operation,
            p_table,
            'Writes the audit_log rows of each ' || upper(operation) || ' statement.'
        );
    end loop;
end
$$;

revoke all on function stepsync.attach_audit(regclass, text, text[]) from public;

comment on function stepsync.attach_audit(regclass, text, text[]) is
'Audits a table: three statement triggers (insert, update, delete) into audit_log. '
'For migrations; the table needs a uuid id column and a task id (or run_id) column. '
'p_digest_columns: columns that copy data kept elsewhere, recorded by digest on UPDATE.';

select stepsync.attach_audit('public.task_steps', 'task_id', array['execution_result']);
select stepsync.attach_audit('public.agent_tasks', 'id');

-- Soft delete of steps.
--
-- An API user's DELETE on a step (a plain REST DELETE included) marks it deleted
-- instead: deleted_at, deleted_by, and the task's following live steps move up to close
-- the gap. Roles that bypass row level security (service_role, the database owner) really
-- delete, unless the transaction-local setting stepsync.force_soft_delete is on (the RPCs
-- set it), and so does the cascade from deleting the task: there the parent row is
-- already gone. A task keeps at least one live step when an API user deletes.
--
-- Closing the gap happens once per statement, after it: a BEFORE DELETE trigger that
-- renumbered other rows would collide with a DELETE that goes on to visit them. The
-- trigger notes the task in a transaction-local setting and a statement trigger compacts
-- the noted tasks. An UPDATE that sets deleted_at directly (the service, a test set-up;
-- RLS refuses it to owners, whose row would leave their view) compacts through an AFTER
-- row trigger, which runs once the UPDATE is complete.

create or replace function stepsync.close_task_step_gaps(p_task_ids uuid[])
returns void
language plpgsql
set search_path = ''
as $$
declare
    bypasses_rls boolean := (
        select r.rolsuper or r.rolbypassrls from pg_catalog.pg_roles as r
        where r.rolname = current_user
    );
    empty_task uuid;
begin
    update public.task_steps as s
    set step_order = ranked.position
    from (
        select
            t.id,
            row_number() over (partition by t.task_id order by t.step_order, t.id) as position
        from public.task_steps as t
        where t.task_id = any(p_task_ids) and t.deleted_at is null
    ) as ranked
    where s.id = ranked.id and s.step_order <> ranked.position;

    if not bypasses_rls then
        select t.id into empty_task
        from public.agent_tasks as t
        where
            t.id = any(p_task_ids)
            and not exists (
                select from public.task_steps as s
                where s.task_id = t.id and s.deleted_at is null
            )
        limit 1;
        if found then
            raise exception 'task % needs at least one step: its last step cannot be deleted',
                empty_task
                using errcode = '23514',
                hint = 'Add the new step first, or replace all steps with save_task_steps.';
        end if;
    end if;
end
$$;

revoke all on function stepsync.close_task_step_gaps(uuid[]) from public;
grant execute on function stepsync.close_task_step_gaps(uuid[])
to authenticated, service_role;

comment on function stepsync.close_task_step_gaps(uuid[]) is
'Renumbers the live steps of the given tasks 1..n in their order (one UPDATE); refuses, '
'for API users, to leave a task without live steps. Runs as the caller (RLS applies).';

-- SECURITY DEFINER because the soft-deleted row must leave the owner's view, and RLS
-- does not let an UPDATE hide the row it changes. The trigger only fires for rows the
-- caller's DELETE already reached through RLS, so it acts on nothing else. The caller's
-- role comes from the role setting (SET ROLE), which a definer does not change.
create or replace function stepsync.soft_delete_on_delete()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    caller_bypasses_rls boolean := (
        select r.rolsuper or r.rolbypassrls from pg_catalog.pg_roles as r
        where r.rolname = coalesce(
            nullif(pg_catalog.current_setting('role', true), 'none'), session_user::text
        )
    );
    noted text;
begin
    if old.deleted_at is not null
        or not exists (select from public.agent_tasks as t where t.id = old.task_id)
        or (
            caller_bypasses_rls
            and pg_catalog.current_setting('stepsync.force_soft_delete', true)
            is distinct from 'on'
        ) then
        return old;
    end if;
    update public.task_steps
    set deleted_at = now(), deleted_by = auth.uid()
    where id = old.id;
    noted := coalesce(pg_catalog.current_setting('stepsync.soft_deleted_tasks', true), '');
    if strpos(noted, old.task_id::text) = 0 then
        perform pg_catalog.set_config(
            'stepsync.soft_deleted_tasks', concat_ws(',', nullif(noted, ''), old.task_id::text), true
        );
    end if;
    return null;
end
$$;

revoke all on function stepsync.soft_delete_on_delete() from public;

comment on function stepsync.soft_delete_on_delete() is
'Trigger: turns an API user''s DELETE of a live step into a soft delete; really deletes '
'for roles that bypass RLS (unless stepsync.force_soft_delete is on), soft-deleted rows, '
'and the cascade from the task.';

create or replace function stepsync.close_gaps_after_delete()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
    noted text := nullif(pg_catalog.current_setting('stepsync.soft_deleted_tasks', true), '');
begin
    if noted is not null then
        perform pg_catalog.set_config('stepsync.soft_deleted_tasks', '', true);
        perform stepsync.close_task_step_gaps(
            array(select distinct x::uuid from unnest(string_to_array(noted, ',')) as x)
        );
    end if;
    return null;
end
$$;

revoke all on function stepsync.close_gaps_after_delete() from public;

comment on function stepsync.close_gaps_after_delete() is
'Statement trigger: closes the order gaps left by the soft deletes of one DELETE.';

create or replace function stepsync.close_gaps_after_soft_delete()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    -- Nested under soft_delete_on_delete the enclosing DELETE is still running; its
    -- statement trigger compacts instead.
    if pg_catalog.pg_trigger_depth() = 1 then
        perform stepsync.close_task_step_gaps(array[new.task_id]);
    end if;
    return null;
end
$$;

revoke all on function stepsync.close_gaps_after_soft_delete() from public;

comment on function stepsync.close_gaps_after_soft_delete() is
'Row trigger after an UPDATE that soft-deletes a step: closes the order gap.';

create trigger task_steps_soft_delete
before delete on public.task_steps
for each row execute function stepsync.soft_delete_on_delete();

create trigger task_steps_close_gaps_after_delete
after delete on public.task_steps
for each statement execute function stepsync.close_gaps_after_delete();

create trigger task_steps_close_gaps_after_soft_delete
after update of deleted_at on public.task_steps
for each row
when (old.deleted_at is null and new.deleted_at is not null)
execute function stepsync.close_gaps_after_soft_delete();

comment on trigger task_steps_soft_delete on public.task_steps is
'An API user''s DELETE becomes a soft delete; service role and task cascade really delete.';
comment on trigger task_steps_close_gaps_after_delete on public.task_steps is
'Closes the order gaps of the steps soft-deleted by a DELETE statement.';
comment on trigger task_steps_close_gaps_after_soft_delete on public.task_steps is
'Closes the order gap when an UPDATE soft-deletes a step.';

create index if not exists task_steps_deleted_at_idx on public.task_steps (deleted_at)
where deleted_at is not null;

comment on index public.task_steps_deleted_at_idx is
'Finds soft-deleted steps for the purge without touching live ones.';

create or replace function stepsync.purge_deleted_task_steps(
    p_older_than interval default interval '30 days', p_task_id uuid default null
)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
    purged bigint;
begin
    if p_older_than is null or p_older_than < interval '0' then
        raise exception 'p_older_than must be a non-negative interval' using errcode = '22023';
    end if;
    delete from public.task_steps
    where
        deleted_at is not null
        and deleted_at <= now() - p_older_than
        and (p_task_id is null or task_id = p_task_id);
    get diagnostics purged = row_count;
    return purged;
end
$$;

revoke all on function stepsync.purge_deleted_task_steps(interval, uuid)
from public, anon, authenticated;
grant execute on function stepsync.purge_deleted_task_steps(interval, uuid) to service_role;

comment on function stepsync.purge_deleted_task_steps(interval, uuid) is
'Service only: removes for good the steps soft-deleted at least p_older_than ago '
'(optionally of one task). Returns how many.';

-- Row level security for steps and tasks, in the form Supabase recommends for speed:
-- policies scoped `to authenticated`, auth.uid() wrapped in a scalar subquery so it is
-- evaluated once per statement, and the task lookup an uncorrelated IN over the indexed
-- agent_tasks.user_id (a hashed subplan, not a join per row).
--
-- Owners see and change the live steps of their own tasks; soft-deleted steps are
-- invisible to them (restore_task_step brings one back). anon gets nothing. service_role
-- bypasses RLS; its policies only document that it may do everything.

revoke all on public.task_steps from anon;

-- Every column a policy or ownership check looks up is indexed. A live project may
-- already have such an index under another name; one is created only where none leads
-- with the column.
do $policy_indexes$
declare
    wanted record;
begin
    for wanted in
        select *
        from (
            values
            ('agent_tasks', 'user_id', 'idx_agent_tasks_user_id'),
            ('agents', 'user_id', 'idx_agents_user_id'),
            ('agent_task_executions', 'task_id', 'idx_agent_task_executions_task_id')
        ) as w (table_name, column_name, index_name)
    loop
        if not exists (
            select
            from pg_index as i
            inner join pg_attribute as a
                on i.indrelid = a.attrelid and a.attnum = i.indkey[0]
            where
                i.indrelid = ('public.' || wanted.table_name)::regclass
                and a.attname = wanted.column_name
        ) then
            execute format(
                'create index %I on public.%I (%I)',
                wanted.index_name, wanted.table_name, wanted.column_name
            );
        end if;
    end loop;
end
$policy_indexes$;

create policy "Owners read the live steps of their tasks" on public.task_steps
for select to authenticated
using (
    deleted_at is null
    and task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
);

create policy "Owners add steps to their tasks" on public.task_steps
for insert to authenticated
with check (
    deleted_at is null
    and task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
);

-- Soft deleting is a DELETE (the soft-delete trigger does the rest), not an UPDATE.
create policy "Owners change the live steps of their tasks" on public.task_steps
for update to authenticated
using (
    deleted_at is null
    and task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
)
with check (
    deleted_at is null
    and task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
);

create policy "Owners delete the live steps of their tasks" on public.task_steps
for delete to authenticated
using (
    deleted_at is null
    and task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
);

create policy "Service role manages steps" on public.task_steps
for all to service_role
using (true)
with check (true);

-- agent_tasks: the legacy owner policy, rewritten in the recommended form. It checked
-- only user_id, so an owner could point their task at another user's agent, and every
-- run of the task then executed that agent. A task's agent must now be one of its
-- owner's agents: the policy checks it for API users, and stepsync.check_task_agent
-- for every writer (the service included). Tasks written before are listed below and
-- refused by start_task_run, never run.
drop policy if exists "Users manage their own tasks" on public.agent_tasks;

create policy "Owners manage their tasks" on public.agent_tasks
for all to authenticated
using (user_id = (select auth.uid()))
with check (
    user_id = (select auth.uid())
    and agent_id in (
        select a.id from public.agents as a
        where a.user_id = (select auth.uid())
    )
);

create policy "Service role manages tasks" on public.agent_tasks
for all to service_role
using (true)
with check (true);

comment on policy "Owners read the live steps of their tasks" on public.task_steps is
'Owners see the live steps of their own tasks; soft-deleted steps stay hidden.';
comment on policy "Owners add steps to their tasks" on public.task_steps is
'Owners add live steps to their own tasks.';
comment on policy "Owners change the live steps of their tasks" on public.task_steps is
'Owners edit the live steps of their own tasks (a step cannot move to another task).';
comment on policy "Owners delete the live steps of their tasks" on public.task_steps is
'Owners delete (soft-delete, through the trigger) the live steps of their own tasks.';
comment on policy "Service role manages steps" on public.task_steps is
'The service may do everything (it bypasses RLS; stated for clarity).';
comment on policy "Owners manage their tasks" on public.agent_tasks is
'Owners read and write their own tasks, whose agent must be one of their own agents.';
comment on policy "Service role manages tasks" on public.agent_tasks is
'The service may do everything (it bypasses RLS; stated for clarity).';

-- agent_task_executions: the app shipped it with `FOR ALL USING (true)`, which let any
-- signed-in or anonymous caller read, change or delete every user's run history. Owners
-- read the runs of their own tasks; writes belong to the service, and API users change
-- runs only through functions that check ownership themselves (start_task_run,
-- cancel_task_run).

drop policy if exists "System can manage task executions" on public.agent_task_executions;
drop policy if exists "Users can view their task executions" on public.agent_task_executions;

create policy "Owners read the runs of their tasks" on public.agent_task_executions
for select to authenticated
using (
    task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
);

create policy "Service role manages runs" on public.agent_task_executions
for all to service_role
using (true)
with check (true);

revoke all on public.agent_task_executions from anon;

comment on policy "Owners read the runs of their tasks" on public.agent_task_executions is
'Owners read the run history of their own tasks; they write it only through functions.';
comment on policy "Service role manages runs" on public.agent_task_executions is
'The service records and updates runs.';

create or replace function stepsync.check_task_agent()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    -- Runs as the writer: for an API user another user's agent is invisible and reported
    -- the same way as a missing one.
    if not exists (
        select from public.agents as a
        where a.id = new.agent_id and a.user_id = new.user_id
    ) then
        raise exception 'agent_id: agent % does not belong to the task''s owner', new.agent_id
            using errcode = '23514',
            hint = 'A task runs with one of its owner''s agents.';
    end if;
    return new;
end
$$;

revoke all on function stepsync.check_task_agent() from public;

comment on function stepsync.check_task_agent() is
'Trigger: a task''s agent belongs to the task''s owner (every writer, the service too).';

create or replace trigger agent_tasks_check_agent
before insert or update of agent_id, user_id on public.agent_tasks
for each row execute function stepsync.check_task_agent();

comment on trigger agent_tasks_check_agent on public.agent_tasks is
'A task''s own agent must be its owner''s, as a step''s agent override must.';

create or replace function stepsync.tasks_with_foreign_agents()
returns table (task_id uuid, user_id uuid, agent_id uuid, agent_owner uuid)
language sql
stable
set search_path = ''
as $$
    select t.id, t.user_id, t.agent_id, a.user_id
    from public.agent_tasks as t
    left join public.agents as a on t.agent_id = a.id
    where a.user_id is distinct from t.user_id
    order by t.id
$$;

revoke all on function stepsync.tasks_with_foreign_agents() from public, anon, authenticated;
grant execute on function stepsync.tasks_with_foreign_agents() to service_role;

comment on function stepsync.tasks_with_foreign_agents() is
'Tasks whose agent is not their owner''s (written before the rule): start_task_run refuses '
'them until the task is given one of its owner''s agents. Service only.';

-- Reported when the migration runs, not fixed: which agent was meant is the owner's call.
do $foreign_agents$
declare
    found_count bigint;
    listed text;
begin
    select count(*), string_agg(
        format('task %s (owner %s) uses agent %s', f.task_id, f.user_id, f.agent_id), '; '
    ) filter (where f.n <= 20)
    into found_count, listed
    from (
        select t.*, row_number() over (order by t.task_id) as n
        from stepsync.tasks_with_foreign_agents() as t
    ) as f;
    if found_count > 0 then
        raise warning '% task(s) name an agent their owner does not own: start_task_run '
        'refuses them until each is given one of its owner''s agents', found_count
            using
                detail = listed,
                hint = 'List them all with select * from stepsync.tasks_with_foreign_agents().';
    end if;
end
$foreign_agents$;

-- API roles reach these tables through PostgREST, which needs no more than select,
-- insert, update and delete under RLS. TRUNCATE bypasses RLS (and the soft delete), and
-- TRIGGER would let a role attach its own code to every writer's statements.
revoke truncate, references, trigger
on public.task_steps, public.agent_tasks, public.agents, public.agent_task_executions
from public, anon, authenticated;

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

-- Drafts: a task's steps saved without touching the live definition, then published or
-- discarded.
--
-- One draft per task holds a step list exactly as save_task_steps takes it (p_steps),
-- and the version of the live definition it was based on. Runs, schedules and previews
-- of the live steps never read it. Saving a draft checks the list's form only (the
-- types of its fields): an unfinished step is what a draft is for, and validate_steps
-- and preview_task_run show what is missing. Publishing goes through save_task_steps
-- itself, so a draft becomes live under exactly the rules of a direct save, all or
-- nothing, audited like every change of task_steps.
--
-- The version is a fingerprint of the live definition (each live step's columns except
-- its latest-run snapshot and timestamps), not a counter: a counter would need a write to
-- the task on every change of its steps, the backfill included, where the fingerprint
-- costs nothing until a draft is saved or published. The draft keeps the version of its
-- first save; saving it again does not move it, since its content still derives from
-- what the editor loaded then. Publishing a draft whose live definition has changed since
-- is refused unless forced.

create or replace function stepsync.definition_version(p_task_id uuid)
returns text
language sql
stable
set search_path = ''
as $$
    select md5(
        coalesce(
            string_agg(
                (
                    to_jsonb(s) - array[
                        'status', 'execution_result', 'created_at', 'updated_at',
                        'deleted_at', 'deleted_by'
                    ]
                )::text,
                ',' order by s.step_order
            ),
            ''
        )
    )
    from public.task_steps as s
    where s.task_id = p_task_id and s.deleted_at is null
$$;

revoke all on function stepsync.definition_version(uuid) from public;
grant execute on function stepsync.definition_version(uuid) to authenticated, service_role;

comment on function stepsync.definition_version(uuid) is
'Fingerprint of a task''s live definition (its live steps, without their latest-run '
'snapshot and timestamps): equal while the steps are, different once any changes. Runs '
'as the caller.';

create table if not exists public.task_step_drafts (
    id uuid primary key default gen_random_uuid(),
    task_id uuid not null references public.agent_tasks (id) on delete cascade,
    steps jsonb not null,
    based_on_version text not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    updated_by uuid,
    constraint task_step_drafts_one_per_task unique (task_id),
    constraint task_step_drafts_steps_array check (jsonb_typeof(steps) = 'array')
);

alter table public.task_step_drafts enable row level security;

comment on table public.task_step_drafts is
'One unpublished step list per task (save_task_steps_draft), with the version of the live '
'definition it was based on. Runs and schedules never read it.';
comment on column public.task_step_drafts.id is 'Draft id.';
comment on column public.task_step_drafts.task_id is 'The task whose steps the draft replaces.';
comment on column public.task_step_drafts.steps is
'The draft step list, as given (save_task_steps'' p_steps: items with an id edit that '
'step, items without one add a step).';
comment on column public.task_step_drafts.based_on_version is
'stepsync.definition_version of the live steps when the draft was first saved; publishing '
'is refused (unless forced) once the live steps differ.';
comment on column public.task_step_drafts.created_at is 'When the draft was first saved.';
comment on column public.task_step_drafts.updated_at is 'When the draft was last saved.';
comment on column public.task_step_drafts.updated_by is
'auth.uid() of whoever saved it last (null for the service).';
comment on constraint task_step_drafts_one_per_task on public.task_step_drafts is
'A task has at most one draft.';
comment on constraint task_step_drafts_steps_array on public.task_step_drafts is
'A draft holds a step list.';
comment on index public.task_step_drafts_one_per_task is
'The draft of a task; serves the cascade from agent_tasks and the owners'' policies.';

-- Owners may also read and write their draft directly (REST): what they could store
-- there, publishing checks like any save.
revoke all on public.task_step_drafts from public, anon, authenticated;
grant select, insert, update, delete on public.task_step_drafts to authenticated;

create policy "Owners manage the drafts of their tasks" on public.task_step_drafts
for all to authenticated
using (
    task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
)
with check (
    task_id in (
        select t.id from public.agent_tasks as t
        where t.user_id = (select auth.uid())
    )
);

create policy "Service role manages drafts" on public.task_step_drafts
for all to service_role
using (true)
with check (true);

comment on policy "Owners manage the drafts of their tasks" on public.task_step_drafts is
'Only a task''s owner reads or writes its draft.';
comment on policy "Service role manages drafts" on public.task_step_drafts is
'The service may do everything (it bypasses RLS; stated for clarity).';

select stepsync.attach_audit('public.task_step_drafts');

create or replace function public.is_stale(p_draft public.task_step_drafts)
returns boolean
language sql
stable
security invoker
set search_path = ''
as $$
    select p_draft.based_on_version <> stepsync.definition_version(p_draft.task_id)
$$;

comment on function public.is_stale(public.task_step_drafts) is
'Whether the live steps changed since the draft was based on them (then publishing it '
'needs p_force). PostgREST computed column: select=*,is_stale.';

revoke all on function public.is_stale(public.task_step_drafts) from public, anon;
grant execute on function public.is_stale(public.task_step_drafts)
to authenticated, service_role;

create or replace function public.save_task_steps_draft(p_task_id uuid, p_steps jsonb)
returns public.task_step_drafts
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    draft public.task_step_drafts;
begin
    -- The same lock as save_task_steps: the version recorded is the one of the steps as
    -- they are when the draft is saved.
    perform from public.agent_tasks as t where t.id = p_task_id for update;
    if not found then
        raise exception 'task % not found', p_task_id using errcode = 'P0002';
    end if;
    if jsonb_typeof(p_steps) = 'array' and jsonb_array_length(p_steps) > 50 then
        raise exception 'steps: a task has at most 50 steps (got %)', jsonb_array_length(p_steps)
            using errcode = '22023';
    end if;
    -- The form of the list, as save_task_steps reads it; its completeness is checked on
    -- publish.
    perform stepsync.parse_steps(p_task_id, p_steps, false);

    insert into public.task_step_drafts as d (task_id, steps, based_on_version, updated_by)
    values (p_task_id, p_steps, stepsync.definition_version(p_task_id), auth.uid())
    on conflict (task_id) do update
        set
            steps = excluded.steps,
            updated_at = now(),
            updated_by = excluded.updated_by
    returning d.* into draft;
    return draft;
end
$$;

comment on function public.save_task_steps_draft(uuid, jsonb) is
'Saves p_steps (a step list as save_task_steps takes it) as the task''s draft, leaving the '
'live steps alone; replaces an earlier draft but keeps the version it was based on. The '
'list''s form is checked (22023 naming steps[index].field), not its completeness '
'(validate_steps). Returns the draft.';

revoke all on function public.save_task_steps_draft(uuid, jsonb) from public, anon;
grant execute on function public.save_task_steps_draft(uuid, jsonb)
to authenticated, service_role;

create or replace function public.publish_task_steps_draft(
    p_task_id uuid, p_force boolean default false
)
returns setof public.task_steps
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    draft public.task_step_drafts;
begin
    perform from public.agent_tasks as t where t.id = p_task_id for update;
    if not found then
        raise exception 'task % not found', p_task_id using errcode = 'P0002';
    end if;
    select d.* into draft
    from public.task_step_drafts as d
    where d.task_id = p_task_id
    for update;
    if not found then
        raise exception 'task % has no draft', p_task_id
            using errcode = 'P0002',
            hint = 'Save one with save_task_steps_draft.';
    end if;
    if draft.based_on_version <> stepsync.definition_version(p_task_id)
        and not coalesce(p_force, false) then
        raise exception 'the draft of task % is out of date: its live steps changed after the '
        'draft was based on them', p_task_id
            using errcode = '55000',
            hint = 'Review the live steps, then discard the draft or publish it with '
            'p_force => true to replace them.';
    end if;

    -- One code path with a direct save: the same rules, errors and audit.
    return query select * from public.save_task_steps(p_task_id, draft.steps);
    delete from public.task_step_drafts as d where d.id = draft.id;
end
$$;

comment on function public.publish_task_steps_draft(uuid, boolean) is
'Makes the task''s draft its live steps through save_task_steps (same rules and errors, '
'all or nothing, audited) and removes the draft; returns the live steps. Refused (55000) '
'when the live steps changed after the draft was based on them, unless p_force.';

revoke all on function public.publish_task_steps_draft(uuid, boolean) from public, anon;
grant execute on function public.publish_task_steps_draft(uuid, boolean)
to authenticated, service_role;

create or replace function public.discard_task_steps_draft(p_task_id uuid)
returns boolean
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
    perform from public.agent_tasks as t where t.id = p_task_id;
    if not found then
        raise exception 'task % not found', p_task_id using errcode = 'P0002';
    end if;
    delete from public.task_step_drafts as d where d.task_id = p_task_id;
    return found;
end
$$;

comment on function public.discard_task_steps_draft(uuid) is
'Removes the task''s draft: true if there was one. The live steps stay as they are.';

revoke all on function public.discard_task_steps_draft(uuid) from public, anon;
grant execute on function public.discard_task_steps_draft(uuid) to authenticated, service_role;

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

-- Deleting and restoring a step from the UI. soft_delete_task_step is SECURITY INVOKER
-- like the other RPCs. The one thing RLS cannot allow an owner (seeing a soft-deleted
-- step to restore it) goes through a definer in schema stepsync with its own ownership
-- check.

create or replace function public.soft_delete_task_step(p_step_id uuid)
returns public.task_steps
language plpgsql
security invoker
set search_path = ''
as $$
declare
    step public.task_steps;
begin
    select s.* into step
    from public.task_steps as s
    where s.id = p_step_id and s.deleted_at is null;
    if not found then
        raise exception 'step % not found', p_step_id using errcode = 'P0002';
    end if;
    perform from public.agent_tasks as t where t.id = step.task_id for update;
    perform pg_catalog.set_config('stepsync.force_soft_delete', 'on', true);
    delete from public.task_steps as s where s.id = p_step_id;
    perform pg_catalog.set_config('stepsync.force_soft_delete', 'off', true);
    step.deleted_at := now();
    step.deleted_by := auth.uid();
    return step;
end
$$;

comment on function public.soft_delete_task_step(uuid) is
'Soft-deletes a live step (the following steps move up); returns the deleted row. '
'A task keeps at least one live step.';

revoke all on function public.soft_delete_task_step(uuid) from public, anon;
grant execute on function public.soft_delete_task_step(uuid) to authenticated, service_role;

create or replace function stepsync.restore_task_step(p_step_id uuid)
returns public.task_steps
language plpgsql
security definer
set search_path = ''
as $$
declare
    step public.task_steps;
    task_owner uuid;
    live_count integer;
    target integer;
    api_caller boolean := coalesce(nullif(current_setting('role', true), 'none'), '')
    in ('anon', 'authenticated')
    or coalesce(auth.role(), '') in ('anon', 'authenticated');
begin
    -- Ownership first, then the lock: waiting on another user's task would tell that
    -- the id exists.
    select s.* into step from public.task_steps as s where s.id = p_step_id;
    select t.user_id into task_owner
    from public.agent_tasks as t
    where t.id = step.task_id;
    if step.id is null or (api_caller and task_owner is distinct from auth.uid()) then
        raise exception 'step % not found', p_step_id using errcode = 'P0002';
    end if;
    perform from public.agent_tasks as t where t.id = step.task_id for update;
    select s.* into step from public.task_steps as s where s.id = p_step_id;
    if step.deleted_at is null then
        raise exception 'step % is not deleted', p_step_id using errcode = '22023';
    end if;
    perform stepsync.close_task_step_gaps(array[step.task_id]);
    select count(*) into live_count
    from public.task_steps as s
    where s.task_id = step.task_id and s.deleted_at is null;
    if live_count >= 50 then
        raise exception 'task % already has 50 steps: step % cannot be restored',
            step.task_id, p_step_id
            using errcode = '23514';
    end if;
    target := least(step.step_order, live_count + 1);
    update public.task_steps as s
    set step_order = s.step_order + 1
    where s.task_id = step.task_id and s.deleted_at is null and s.step_order >= target;
    update public.task_steps as s
    set deleted_at = null, deleted_by = null, step_order = target
    where s.id = p_step_id
    returning s.* into step;
    return step;
end
$$;

revoke all on function stepsync.restore_task_step(uuid) from public, anon;
grant execute on function stepsync.restore_task_step(uuid) to authenticated, service_role;

comment on function stepsync.restore_task_step(uuid) is
'Definer behind public.restore_task_step: owners cannot see soft-deleted rows through RLS. '
'Checks that an API caller owns the step''s task; the service may restore any step.';

create or replace function public.restore_task_step(p_step_id uuid)
returns public.task_steps
language sql
security invoker
set search_path = ''
as $$
    select * from stepsync.restore_task_step(p_step_id)
$$;

comment on function public.restore_task_step(uuid) is
'Brings a soft-deleted step back at its old position (or last), moving the following '
'steps down; refused when the task already has 50 steps. Returns the restored step.';

revoke all on function public.restore_task_step(uuid) from public, anon;
grant execute on function public.restore_task_step(uuid) to authenticated, service_role;

-- Feature flags for the gradual rollout of multi-step workflows.
--
-- A flag is on for a user when it is globally enabled, the user is not on its deny-list,
-- and the user is on its allow-list or a stable hash of the user id falls under its
-- rollout percentage (the same users stay in as the percentage grows). The deny-list lets
-- an operator hold individual users back without lowering the percentage for everyone.

create table if not exists stepsync.feature_flags (
    name text primary key check (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    enabled boolean not null default false,
    rollout_percent integer not null default 0 check (rollout_percent between 0 and 100),
    allow_list uuid[] not null default '{}',
    deny_list uuid[] not null default '{}',
    description text,
    updated_at timestamptz not null default now()
);

alter table stepsync.feature_flags enable row level security;
revoke all on stepsync.feature_flags from public, anon, authenticated;
grant all on stepsync.feature_flags to service_role;

create policy "Service role manages flags" on stepsync.feature_flags
for all to service_role using (true) with check (true);

insert into stepsync.feature_flags (name, enabled, rollout_percent, description)
values (
    'multi_step_workflows',
    true,
    100,
    'Run tasks as multi-step workflows (start_task_run and the sync service).'
)
on conflict (name) do nothing;

comment on table stepsync.feature_flags is
'Rollout switches: global on/off, a stable percentage of users, and an allow-list.';
comment on column stepsync.feature_flags.enabled is
'Global switch: off means the flag is off for everyone, allow-list included.';
comment on column stepsync.feature_flags.rollout_percent is
'Share of users (by a stable hash of their id) for whom the flag is on.';
comment on column stepsync.feature_flags.allow_list is
'Users for whom the flag is on regardless of the percentage.';
comment on column stepsync.feature_flags.deny_list is
'Users for whom the flag is off whatever the percentage or allow-list says.';

create or replace function stepsync.flag_enabled_for(p_flag text, p_user_id uuid)
returns boolean
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
    flag stepsync.feature_flags;
begin
    -- API users may ask about themselves only; the service (service_role or a direct
    -- database session without JWT claims) about anyone.
    if auth.role() in ('anon', 'authenticated') and p_user_id is distinct from auth.uid() then
        raise exception 'not allowed to read flags of another user'
            using errcode = '42501';
    end if;
    select * into flag from stepsync.feature_flags as f where f.name = p_flag;
    if not found or not flag.enabled or p_user_id = any(flag.deny_list) then
        return false;
    end if;
    return p_user_id = any(flag.allow_list)
        or (abs(hashtextextended(p_flag || ':' || p_user_id::text, 0)) % 100)
        < flag.rollout_percent;
end
$$;

revoke all on function stepsync.flag_enabled_for(text, uuid) from public;
grant execute on function stepsync.flag_enabled_for(text, uuid)
to authenticated, service_role;

comment on function stepsync.flag_enabled_for(text, uuid) is
'Whether flag p_flag is on for p_user_id: globally enabled, user not on the deny-list, and '
'on the allow-list or within the rollout percentage (stable hash). Callers may ask about '
'themselves only, the service role about anyone.';

-- Changing a rollout flag: functions for the service role instead of UPDATE statements.
--
-- `stepsync flags` (and any operator script) changes a flag through these four
-- functions. Each checks its input and names what is wrong (an unknown flag, a
-- percentage outside 0-100, a missing user id) instead of updating nothing or failing on
-- a check constraint, keeps the allow- and deny-lists from contradicting each other, stamps
-- updated_at, and returns the flag as it now is. They run with the caller's rights and
-- only the service role may execute them, as only it may write stepsync.feature_flags.

create or replace function stepsync.feature_flag_for_update(p_name text)
returns stepsync.feature_flags
language plpgsql
security invoker
set search_path = ''
as $$
declare
    flag stepsync.feature_flags;
    known text;
begin
    select * into flag from stepsync.feature_flags as f where f.name = p_name for update;
    if not found then
        select coalesce(string_agg(f.name, ', ' order by f.name), 'none')
            into known from stepsync.feature_flags as f;
        raise exception 'no flag named %', coalesce(quote_literal(p_name), 'null')
            using errcode = 'P0002', hint = 'known flags: ' || known;
    end if;
    return flag;
end
$$;

comment on function stepsync.feature_flag_for_update(text) is
'The flag named p_name, locked until the end of the transaction, or an error naming the '
'known flags: the check every flag change starts with, so a typo changes nothing.';

create or replace function stepsync.flag_user_ids(p_user_ids uuid[])
returns uuid[]
language plpgsql
immutable
security invoker
set search_path = ''
as $$
begin
    if coalesce(cardinality(p_user_ids), 0) = 0 then
        raise exception 'no user ids given' using errcode = '22023';
    end if;
    if array_position(p_user_ids, null) is not null then
        raise exception 'a user id is null' using errcode = '22023';
    end if;
    return p_user_ids;
end
$$;

comment on function stepsync.flag_user_ids(uuid[]) is
'p_user_ids, refused when empty or holding a null: a list edit with nobody in it is '
'a mistake in the caller, not a request to change nothing.';

create or replace function stepsync.set_feature_flag(
    p_name text,
    p_enabled boolean default null,
    p_rollout_percent integer default null
)
returns stepsync.feature_flags
language plpgsql
security invoker
set search_path = ''
as $$
declare
    flag stepsync.feature_flags := stepsync.feature_flag_for_update(p_name);
begin
    if p_rollout_percent not between 0 and 100 then
        raise exception 'rollout percent must be between 0 and 100, got %', p_rollout_percent
            using errcode = '22023';
    end if;
    update stepsync.feature_flags as f
    set
        enabled = coalesce(p_enabled, f.enabled),
        rollout_percent = coalesce(p_rollout_percent, f.rollout_percent),
        updated_at = now()
    where f.name = flag.name
    returning * into flag;
    return flag;
end
$$;

comment on function stepsync.set_feature_flag(text, boolean, integer) is
'Switch flag p_name on or off and/or set its rollout percentage (0-100); a null leaves '
'that part as it is. Returns the flag as it now is.';

create or replace function stepsync.allow_flag_users(p_name text, p_user_ids uuid[])
returns stepsync.feature_flags
language plpgsql
security invoker
set search_path = ''
as $$
declare
    flag stepsync.feature_flags := stepsync.feature_flag_for_update(p_name);
    users uuid[] := stepsync.flag_user_ids(p_user_ids);
begin
    update stepsync.feature_flags as f
    set
        allow_list = array(
            select distinct u.id from unnest(f.allow_list || users) as u (id) order by u.id
        ),
        deny_list = array(
            select d.id from unnest(f.deny_list) as d (id) where d.id <> all(users)
        ),
        updated_at = now()
    where f.name = flag.name
    returning * into flag;
    return flag;
end
$$;

comment on function stepsync.allow_flag_users(text, uuid[]) is
'Put the users on flag p_name''s allow-list and take them off its deny-list, so the two '
'lists never contradict each other. Idempotent. Returns the flag as it now is.';

create or replace function stepsync.deny_flag_users(p_name text, p_user_ids uuid[])
returns stepsync.feature_flags
language plpgsql
security invoker
set search_path = ''
as $$
declare
    flag stepsync.feature_flags := stepsync.feature_flag_for_update(p_name);
    users uuid[] := stepsync.flag_user_ids(p_user_ids);
begin
    update stepsync.feature_flags as f
    set
        deny_list = array(
            select distinct u.id from unnest(f.deny_list || users) as u (id) order by u.id
        ),
        allow_list = array(
            select a.id from unnest(f.allow_list) as a (id) where a.id <> all(users)
        ),
        updated_at = now()
    where f.name = flag.name
    returning * into flag;
    return flag;
end
$$;

comment on function stepsync.deny_flag_users(text, uuid[]) is
'Put the users on flag p_name''s deny-list (it wins over the allow-list and the '
'percentage) and take them off its allow-list. Idempotent. Returns the flag as it now is.';

create or replace function stepsync.remove_flag_users(
    p_name text, p_list text, p_user_ids uuid[]
)
returns stepsync.feature_flags
language plpgsql
security invoker
set search_path = ''
as $$
declare
    flag stepsync.feature_flags := stepsync.feature_flag_for_update(p_name);
    users uuid[] := stepsync.flag_user_ids(p_user_ids);
begin
    if p_list is null or p_list not in ('allow', 'deny') then
        raise exception 'p_list must be ''allow'' or ''deny'', got %',
            coalesce(quote_literal(p_list), 'null')
            using errcode = '22023';
    end if;
    update stepsync.feature_flags as f
    set
        allow_list = case
            when p_list = 'allow'
                then array(
                    select a.id from unnest(f.allow_list) as a (id) where a.id <> all(users)
                )
            else f.allow_list
        end,
        deny_list = case
            when p_list = 'deny'
                then array(
                    select d.id from unnest(f.deny_list) as d (id) where d.id <> all(users)
                )
            else f.deny_list
        end,
        updated_at = now()
    where f.name = flag.name
    returning * into flag;
    return flag;
end
$$;

comment on function stepsync.remove_flag_users(text, text, uuid[]) is
'Take the users off flag p_name''s allow-list (p_list = ''allow'') or deny-list '
'(''deny''); they then follow the percentage again. Users not on it are ignored. Returns '
'the flag as it now is.';

revoke all on function stepsync.feature_flag_for_update(text) from public, anon, authenticated;
revoke all on function stepsync.flag_user_ids(uuid[]) from public, anon, authenticated;
revoke all on function stepsync.set_feature_flag(text, boolean, integer)
from public, anon, authenticated;
revoke all on function stepsync.allow_flag_users(text, uuid[])
from public, anon, authenticated;
revoke all on function stepsync.deny_flag_users(text, uuid[])
from public, anon, authenticated;
revoke all on function stepsync.remove_flag_users(text, text, uuid[])
from public, anon, authenticated;

grant execute on function stepsync.feature_flag_for_update(text) to service_role;
grant execute on function stepsync.flag_user_ids(uuid[]) to service_role;
grant execute on function stepsync.set_feature_flag(text, boolean, integer) to service_role;
grant execute on function stepsync.allow_flag_users(text, uuid[]) to service_role;
grant execute on function stepsync.deny_flag_users(text, uuid[]) to service_role;
grant execute on function stepsync.remove_flag_users(text, text, uuid[]) to service_role;

-- What multi_step_workflows gates. Starting a run (start_task_run, and so the schedules
-- and events that start runs) checks it for the task's owner; runs already started finish
-- whatever the flag says later, since each step belongs to a run the user was allowed to
-- start. Saving a second live step is refused to API users outside the rollout, so a task
-- they cannot run as a workflow never becomes one. The UI asks
-- public.multi_step_workflows_enabled() whether to offer the step editor at all.

create or replace function public.multi_step_workflows_enabled()
returns boolean
language sql
stable
security invoker
set search_path = ''
as $$
    select coalesce(stepsync.flag_enabled_for('multi_step_workflows', auth.uid()), false)
$$;

comment on function public.multi_step_workflows_enabled() is
'Whether multi-step workflows are on for the signed-in user: the UI shows the step '
'editor and starts multi-step runs only then. The service role, which is no user, gets '
'false.';

revoke all on function public.multi_step_workflows_enabled() from public, anon;
grant execute on function public.multi_step_workflows_enabled() to authenticated, service_role;

create or replace function stepsync.refuse_multi_step_outside_rollout()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    -- The service and operators manage definitions for everyone (a backfill, a support
    -- fix); the rule is about what a user may build through the API.
    if new.deleted_at is not null or stepsync.caller_is_service() then
        return null;
    end if;
    if (
        select count(*) from public.task_steps as s
        where s.task_id = new.task_id and s.deleted_at is null
    ) > 1
    and not stepsync.flag_enabled_for(
        'multi_step_workflows',
        (select t.user_id from public.agent_tasks as t where t.id = new.task_id)
    ) then
        raise exception 'task % can have only one step: multi-step workflows are not enabled '
        'for its owner', new.task_id
            using errcode = '55000',
            hint = 'public.multi_step_workflows_enabled() says whether to offer the step '
            'editor.';
    end if;
    return null;
end
$$;

comment on function stepsync.refuse_multi_step_outside_rollout() is
'Constraint trigger: at commit, an API user outside the multi_step_workflows rollout has '
'not left a task with more than one live step (insert or restore); else the whole '
'transaction is refused.';

revoke all on function stepsync.refuse_multi_step_outside_rollout() from public;

-- Checked at commit, on the task as the transaction leaves it: replacing a task's one
-- step (insert the new one, then delete the old) passes through two live steps.
create constraint trigger task_steps_rollout
after insert or update of deleted_at on public.task_steps
deferrable initially deferred
for each row execute function stepsync.refuse_multi_step_outside_rollout();

comment on trigger task_steps_rollout on public.task_steps is
'Outside the multi_step_workflows rollout, a task keeps at most one live step.';

-- Runs: agent_task_executions becomes a workflow run; task_step_executions holds one row
-- per step of a run, with a snapshot of the step definition taken when the run starts.
--
-- Writes to both tables go through the run engine functions (start_task_run, claim_steps,
-- complete_step, ...). API users only read their own rows.
--
-- The engine's hot path reads only the rows it works on, whatever the statistics say. The
-- service starts before the work arrives, so its first calls of each engine function are
-- planned, and the plans kept for the connection's life, while these tables are nearly
-- empty; a join planned then stays a loop over whole tables once they hold thousands of
-- queued steps and millions of finished ones. So every hot statement is keyed by
-- construction: the rows it changes are named by primary key (`id = any(array)`), by the
-- claim or lease index, or by (run_id, step_order); any other row it needs comes from a
-- scalar or LATERAL ... LIMIT subquery keyed by a column of the row at hand, which the
-- planner cannot turn into a scan of a whole table. `enable_seqscan = off` on the hot
-- functions keeps a tiny table's sequential scan out of a plan that outlives the tiny
-- table. tests/test_hot_path_plans.py holds every hot statement to this.

-- How a finished run turned out, beyond the legacy status the app reads: a run whose
-- failed steps all said `continue` is `completed` there, and `partial` here.
create type public.task_run_outcome as enum ('succeeded', 'partial', 'failed', 'cancelled');

comment on type public.task_run_outcome is
'How a finished run turned out: succeeded (every step completed or was skipped by its '
'skip_if), partial (completed, but steps marked continue failed), failed, cancelled.';

-- Where a stopped run's compensation stands (see 0175_compensation.sql).
create type public.run_compensation_status as enum (
    'running', 'completed', 'failed', 'cancelled'
);

comment on type public.run_compensation_status is
'Compensation of a stopped run: running, completed (every compensation step completed), '
'failed (some failed for good), cancelled (the run was cancelled while compensating).';

-- A step execution runs a step of the workflow, or undoes one (compensation).
create type public.step_execution_kind as enum ('step', 'compensation');

comment on type public.step_execution_kind is
'step: a step of the workflow; compensation: the compensate_instructions of a completed '
'step, run after its run stopped.';

-- Run rows: owner (for RLS without a join), step progress and cancellation, outcome,
-- compensation, and the run a resumed run continues.
alter table public.agent_task_executions
add column if not exists user_id uuid references auth.users (id) on delete cascade,
add column if not exists step_count integer not null default 0,
add column if not exists steps_completed integer not null default 0,
add column if not exists steps_failed integer not null default 0,
add column if not exists steps_skipped integer not null default 0,
add column if not exists cancelled_at timestamptz,
add column if not exists cancelled_by uuid,
add column if not exists outcome public.task_run_outcome,
add column if not exists compensation public.run_compensation_status,
add column if not exists resumed_from_run_id uuid
references public.agent_task_executions (id) on delete set null;

update public.agent_task_executions as r
set user_id = t.user_id
from public.agent_tasks as t
where r.task_id = t.id and r.user_id is null;

comment on column public.agent_task_executions.user_id is
'Owner of the run (the task owner), filled from the task on insert.';
comment on column public.agent_task_executions.step_count is
'Number of steps snapshotted for this run (0 for runs made before multi-step).';
comment on column public.agent_task_executions.steps_completed is
'Steps of this run that completed.';
comment on column public.agent_task_executions.steps_failed is
'Steps of this run that failed for good (after their last attempt).';
comment on column public.agent_task_executions.steps_skipped is
'Steps of this run that were skipped (skip_if, or after a stopping failure).';
comment on column public.agent_task_executions.cancelled_at is
'When the run was cancelled (cancel_task_run).';
comment on column public.agent_task_executions.cancelled_by is
'Who cancelled the run (auth.uid() of the caller; null for the service).';
comment on column public.agent_task_executions.outcome is
'How the run turned out, set when it ends (null before): succeeded, partial (status '
'completed, but steps marked continue failed: steps_failed > 0), failed, cancelled. '
'Also in metadata.outcome.';
comment on column public.agent_task_executions.compensation is
'Compensation of the run after it stopped: null (none was needed), running, completed, '
'failed or cancelled. Also in metadata.compensation once the run ends.';
comment on column public.agent_task_executions.resumed_from_run_id is
'The run this run resumes (resume_task_run): the steps before its first executed step '
'reuse that run''s recorded outcomes. Null for a run started afresh.';

create or replace function stepsync.fill_run_owner()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    -- Legacy writers (the task-executor Edge Function) do not know the column.
    if new.user_id is null then
        select t.user_id into new.user_id
        from public.agent_tasks as t
        where t.id = new.task_id;
    end if;
    return new;
end
$$;

comment on function stepsync.fill_run_owner() is
'Trigger: a run row without user_id gets its task''s owner.';

create or replace trigger agent_task_executions_fill_owner
before insert on public.agent_task_executions
for each row execute function stepsync.fill_run_owner();

comment on trigger agent_task_executions_fill_owner on public.agent_task_executions is
'Keeps user_id filled for writers that predate the column.';

create index if not exists agent_task_executions_user_id_idx
on public.agent_task_executions (user_id);
create index if not exists agent_task_executions_task_created_idx
on public.agent_task_executions (task_id, created_at desc);
-- The open-run quotas (start_task_run) count a user's open runs without reading their
-- history. An open run is never cancelled, so `cancelled_at is null` changes nothing in
-- what the index holds; it keeps the index out of the engine's statements that look runs
-- up by id and status (status = 'running' alone does not imply this predicate), which a
-- planner without statistics would otherwise send through every open run. For the same
-- reason the status is not an index column (PostgreSQL 18 skip-scans a leading user_id).
create index if not exists agent_task_executions_open_by_user_idx
on public.agent_task_executions (user_id)
where status in ('pending', 'running') and cancelled_at is null;

comment on index public.agent_task_executions_user_id_idx is
'Serves the cascade from auth.users and listings of a user''s runs.';
comment on index public.agent_task_executions_open_by_user_idx is
'Open runs of a user: the max_active_runs_per_user and max_active_runs_per_task quotas.';
comment on index public.agent_task_executions_task_created_idx is
'Latest run of a task (preview, definition snapshot).';

create index if not exists agent_task_executions_resumed_from_idx
on public.agent_task_executions (resumed_from_run_id)
where resumed_from_run_id is not null;

comment on index public.agent_task_executions_resumed_from_idx is
'The resumes of a run; serves on delete set null when a run is removed.';

-- Fencing tokens: every claim takes a new one, so a stale holder can be told apart.
create sequence if not exists stepsync.lease_token_seq as bigint;
revoke all on sequence stepsync.lease_token_seq from public;
grant usage on sequence stepsync.lease_token_seq to service_role;

comment on sequence stepsync.lease_token_seq is
'Monotonic fencing tokens handed out by claim_steps.';

create table if not exists public.task_step_executions (
    id uuid primary key default gen_random_uuid(),
    run_id uuid not null references public.agent_task_executions (id) on delete cascade,
    -- Copied from the run (which cascades from the task and the user) so that RLS and
    -- the audit need no join; no foreign keys of their own, so a step transition
    -- maintains as few indexes as possible.
    task_id uuid not null,
    user_id uuid not null,
    step_id uuid,
    kind public.step_execution_kind not null default 'step',
    -- Snapshot of the definition at run start. Compensations follow the steps.
    step_order integer not null check (step_order between 1 and 100),
    step_name text not null,
    instructions text not null,
    agent_id uuid not null references public.agents (id) on delete cascade,
    include_previous_context boolean not null,
    context_mode public.step_context_mode not null,
    context_paths jsonpath[] not null default '{}',
    context_template text,
    context_data jsonb not null default '{}'::jsonb,
    skip_if jsonpath,
    on_failure public.step_failure_action not null,
    max_attempts integer not null check (max_attempts between 1 and 20),
    max_lost_leases integer not null default 3 check (max_lost_leases between 0 and 20),
    retry_backoff_seconds integer not null check (retry_backoff_seconds >= 0),
    retry_backoff_max_seconds integer not null check (retry_backoff_max_seconds >= 0),
    timeout_seconds integer not null check (timeout_seconds > 0),
    compensate_instructions text,
    compensates_step_order integer,
    reused_from uuid,
    -- Execution state.
    status public.task_step_status not null default 'pending',
    attempt integer not null default 0 check (attempt >= 0),
    lost_leases integer not null default 0 check (lost_leases >= 0),
    run_after timestamptz,
    fair_at timestamptz,
    queued_at timestamptz,
    lease_owner text,
    lease_expires_at timestamptz,
    lease_token bigint,
    input_context jsonb,
    output jsonb,
    error_message text,
    last_error_at timestamptz,
    skip_reason text,
    started_at timestamptz,
    completed_at timestamptz,
    duration_ms integer,
    idempotency_key text generated always as (
        run_id::text || ':' || step_order::text
    ) stored,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint task_step_executions_run_order_unique unique (run_id, step_order),
    constraint task_step_executions_queued_has_run_after check (
        status <> 'queued' or (run_after is not null and fair_at is not null)
    ),
    constraint task_step_executions_running_has_lease check (
        status <> 'running'
        or (lease_owner is not null and lease_expires_at is not null and lease_token is not null)
    ),
    constraint task_step_executions_kind_shape check (
        (kind = 'step' and step_order <= 50 and compensates_step_order is null)
        or (kind = 'compensation' and compensates_step_order between 1 and 50)
    )
);

-- The claim query: queued steps in their fair order (fair_at: each user's queued steps
-- spaced apart, so users take turns), the due ones taken as the walk meets them.
create index if not exists task_step_executions_claim_idx
on public.task_step_executions (fair_at, id)
where status = 'queued';
-- Where a user's next queued step goes: after the last one they already have queued.
create index if not exists task_step_executions_user_queue_idx
on public.task_step_executions (user_id, fair_at)
where status = 'queued';
-- The reaper: running steps by lease expiry.
create index if not exists task_step_executions_lease_idx
on public.task_step_executions (lease_expires_at)
where status = 'running';

alter table public.task_step_executions enable row level security;

create policy "Owners read their step runs" on public.task_step_executions
for select to authenticated
using (user_id = (select auth.uid()));

create policy "Service role manages step runs" on public.task_step_executions
for all to service_role
using (true) with check (true);

comment on policy "Owners read their step runs" on public.task_step_executions is
'Owners read the step rows of their own runs.';
comment on policy "Service role manages step runs" on public.task_step_executions is
'The service claims, completes and fails steps.';

revoke all on public.task_step_executions from anon;
revoke insert, update, delete, truncate, references, trigger
on public.task_step_executions from public, authenticated;

comment on table public.task_step_executions is
'One row per step of a run: the step definition as it was at run start, and the '
'execution state (status, attempts, lease, input context, result, timings).';
comment on column public.task_step_executions.id is
'Step execution id (claims, leases, notifications).';
comment on column public.task_step_executions.run_id is 'The run (agent_task_executions).';
comment on column public.task_step_executions.task_id is
'The task the run belongs to (copied from the run).';
comment on column public.task_step_executions.user_id is
'Owner of the run (copied from the run; RLS).';
comment on column public.task_step_executions.step_id is
'The task_steps row this was snapshotted from (a plain reference: the step may since '
'have been purged); null for a task run from its legacy instructions.';
comment on column public.task_step_executions.kind is
'step (a step of the workflow, step_order 1..50) or compensation (undoes the step at '
'compensates_step_order; placed after the steps, newest step first).';
comment on column public.task_step_executions.step_order is
'1-based position in the run: the steps, then any compensations.';
comment on column public.task_step_executions.compensate_instructions is
'Snapshot of task_steps.compensate_instructions: what a compensation of this step runs.';
comment on column public.task_step_executions.compensates_step_order is
'For a compensation: the step_order of the completed step it undoes.';
comment on column public.task_step_executions.reused_from is
'For a step of a resumed run that was not executed again: the step execution of the '
'earlier run whose recorded outcome (status, output, timings) it carries. A plain '
'reference (the earlier run may be gone).';
comment on column public.task_step_executions.step_name is 'Snapshot of task_steps.step_name.';
comment on column public.task_step_executions.instructions is
'Snapshot of task_steps.instructions.';
comment on column public.task_step_executions.agent_id is
'Agent that runs the step: the step override, else the task''s agent.';
comment on column public.task_step_executions.include_previous_context is
'Snapshot of task_steps.include_previous_context.';
comment on column public.task_step_executions.context_mode is
'Snapshot of task_steps.context_mode.';
comment on column public.task_step_executions.context_paths is
'Snapshot of task_steps.context_paths.';
comment on column public.task_step_executions.context_template is
'Snapshot of task_steps.context_template.';
comment on column public.task_step_executions.context_data is
'Snapshot of task_steps.context_data.';
comment on column public.task_step_executions.skip_if is 'Snapshot of task_steps.skip_if.';
comment on column public.task_step_executions.on_failure is
'Snapshot of task_steps.on_failure.';
comment on column public.task_step_executions.max_attempts is
'Snapshot of task_steps.max_attempts.';
comment on column public.task_step_executions.max_lost_leases is
'Snapshot of task_steps.max_lost_leases.';
comment on column public.task_step_executions.retry_backoff_seconds is
'Snapshot of task_steps.retry_backoff_seconds.';
comment on column public.task_step_executions.retry_backoff_max_seconds is
'Snapshot of task_steps.retry_backoff_max_seconds.';
comment on column public.task_step_executions.timeout_seconds is
'Snapshot of task_steps.timeout_seconds.';
comment on column public.task_step_executions.status is
'pending → queued → running → completed | failed | skipped | cancelled.';
comment on column public.task_step_executions.attempt is
'Attempts started so far (a claim counts one; a graceful release or a lost lease gives it '
'back).';
comment on column public.task_step_executions.lost_leases is
'How often the step''s lease lapsed without a result (its worker died or lost the '
'database); reaped and queued again without using an attempt, up to max_lost_leases.';
comment on column public.task_step_executions.run_after is
'A queued step is claimable from this time on (retry backoff).';
comment on column public.task_step_executions.fair_at is
'Place of a queued step in the claim order: when it was queued, or, when its user '
'already had steps queued, user_step_spacing_ms after the last of them (never before '
'run_after). Users with many queued steps take turns with the others.';
comment on column public.task_step_executions.queued_at is
'When the step last became queued.';
comment on column public.task_step_executions.lease_owner is
'Worker holding the lease of the running attempt.';
comment on column public.task_step_executions.lease_expires_at is
'When the lease lapses unless heartbeated; the reaper then re-queues or fails the step.';
comment on column public.task_step_executions.lease_token is
'Fencing token of the latest claim; complete/fail only take effect with it.';
comment on column public.task_step_executions.input_context is
'Context the step received at its latest claim (build_step_context).';
comment on column public.task_step_executions.output is 'Result of the step (JSON).';
comment on column public.task_step_executions.error_message is
'Error of the latest failed attempt.';
comment on column public.task_step_executions.last_error_at is
'When the latest attempt failed; run_after - last_error_at is the retry delay.';
comment on column public.task_step_executions.skip_reason is 'Why the step was skipped.';
comment on column public.task_step_executions.started_at is
'When the latest attempt started.';
comment on column public.task_step_executions.completed_at is
'When the step reached a final status.';
comment on column public.task_step_executions.duration_ms is
'completed_at - started_at of the final attempt, in milliseconds.';
comment on column public.task_step_executions.idempotency_key is
'Same for every attempt of this step of this run: executors pass it on.';
comment on column public.task_step_executions.created_at is 'When the run snapshotted the step.';
comment on column public.task_step_executions.updated_at is 'When the row last changed.';
comment on index public.task_step_executions_pkey is 'Step execution by id.';
comment on index public.task_step_executions_run_order_unique is
'Steps of a run in order; serves the cascade from runs.';
comment on constraint task_step_executions_run_order_unique
on public.task_step_executions is 'A run has one row per position.';
comment on constraint task_step_executions_queued_has_run_after
on public.task_step_executions is
'A queued step always says when it is due and where it stands in the claim order.';
comment on constraint task_step_executions_running_has_lease
on public.task_step_executions is 'A running step always has a lease and a fencing token.';
comment on constraint task_step_executions_kind_shape
on public.task_step_executions is
'Steps take positions 1..50; a compensation names the step it undoes.';
comment on index public.task_step_executions_claim_idx is
'claim_steps: queued steps in their fair order (fair_at, id).';
comment on index public.task_step_executions_user_queue_idx is
'The last queued step of a user (stepsync.fair_at), and queue_depth.';
comment on index public.task_step_executions_lease_idx is
'reap_expired_leases: running steps by lease expiry.';

create type stepsync.leased_step as (
    step_execution_id uuid,
    run_id uuid,
    lease_token bigint,
    task_id uuid,
    user_id uuid,
    agent_id uuid,
    step_order integer,
    step_name text,
    instructions text,
    context jsonb,
    attempt integer,
    timeout_seconds integer,
    idempotency_key text,
    conversation_id uuid,
    trigger_data jsonb
);

comment on type stepsync.leased_step is
'A step leased to a worker: what to run (instructions, built context, agent, timeout), '
'the lease that proves it is the worker''s (lease_token) and the idempotency key that '
'stays the same across its attempts. Returned by claim_steps, lease_steps and the '
'hand-off of complete_steps.';

revoke all on type stepsync.leased_step from public;
grant usage on type stepsync.leased_step to service_role;

-- Who may act on a task's runs: its owner (an API caller whose auth.uid() owns the task)
-- or the service (service_role, or a direct database session that is not an API role).
--
-- The public RPCs are security invoker and hand over to security-definer functions in
-- schema stepsync, which call these checks first. Inside a security-definer function
-- current_user is the function owner, but the `role` setting still names the role the
-- caller switched to (PostgREST does `set local role authenticated`), and API callers
-- cannot change it to a role they are not a member of.

create or replace function stepsync.caller_is_service()
returns boolean
language sql
stable
set search_path = ''
as $$
    select case
        when current_setting('role') in ('anon', 'authenticated', 'authenticator') then false
        when current_setting('role') <> 'none' then true
        else session_user::text not in ('anon', 'authenticated', 'authenticator')
    end
$$;

comment on function stepsync.caller_is_service() is
'True for service_role and direct (non-API) database sessions; false for anon, '
'authenticated and authenticator, even inside a security-definer function.';

create or replace function stepsync.authorized_task(p_task_id uuid)
returns public.agent_tasks
language plpgsql
stable
set search_path = ''
as $$
declare
    task public.agent_tasks;
begin
    select t.* into task from public.agent_tasks as t where t.id = p_task_id;
    -- Someone else's task is reported exactly like a missing one.
    if not found
        or (not stepsync.caller_is_service() and task.user_id is distinct from auth.uid()) then
        raise exception 'task % not found', p_task_id
            using errcode = 'P0002',
            hint = 'Check the task id; only the task''s owner and the service may use it.';
    end if;
    return task;
end
$$;

comment on function stepsync.authorized_task(uuid) is
'The task row, if the caller is its owner or the service; otherwise "task not found" '
'(P0002).';

revoke all on function stepsync.caller_is_service() from public;
revoke all on function stepsync.authorized_task(uuid) from public;
-- authenticated too: invoker triggers that treat API writes differently ask it.
grant execute on function stepsync.caller_is_service() to authenticated, service_role;
grant execute on function stepsync.authorized_task(uuid) to service_role;

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
--
-- What one user writes must not cost others (0015_limits.sql):
-- - the input is at most context_chars (64 KB) of JSON, whatever the step's mode: the
--   parts a user writes have limits, and the values that can be large (trigger data,
--   outputs, errors, selections, the rendered template) share what the rest leaves;
-- - redaction recurses only into values that may hold a secret-looking key, at most
--   twice json_levels deep (deeper data fails its step with a clear error, never the
--   stack), and finds secret-shaped values in one pass over the text;
-- - templates are rendered and selections made in one pass, each path evaluated once;
-- - stepsync.step_input turns any error of one step's build into {"context_error"}, so
--   the lease fails that step alone.

create or replace function stepsync.fold_lookalikes(p_text text)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
    -- Compatibility forms to plain letters (full-width, ligatures, mathematical letters:
    -- NFKC), invisible characters removed (soft hyphen, zero-width and format characters),
    -- and the Cyrillic and Greek letters that look Latin made Latin.
    select translate(
        regexp_replace(
            case
                when p_text ~ '[^\x01-\x7f]' and pg_catalog.getdatabaseencoding() = 'UTF8'
                    then normalize(p_text, nfkc)
                else p_text
            end,
            '[\u00ad\u180e\u200b-\u200f\u2060-\u2064\ufeff]', '', 'g'
        ),
        'АВЕЅІЈКМНОРСТХУаеіјорсхуѕԁһӏԛԝΑΒΕΖΗΙΚΜΝΟΡΤΥΧαορικτυν',
        'ABESIJKMHOPCTXYaeijopcxysdhlqwABEZHIKMNOPTYXaopiktuv'
    )
$$;

comment on function stepsync.fold_lookalikes(text) is
'A text with look-alike characters folded to plain Latin letters (NFKC, Cyrillic and '
'Greek homoglyphs) and invisible characters removed: what secret detection reads.';

revoke all on function stepsync.fold_lookalikes(text) from public;
grant execute on function stepsync.fold_lookalikes(text) to service_role;

create or replace function stepsync.is_secret_key(p_key text)
returns boolean
language sql
immutable
parallel safe
set search_path = ''
as $$
    -- Look-alikes folded, camelCase and kebab-case turned to snake_case, so apiKey,
    -- api-key, API_KEY and ＡＰＩ＿ＫＥＹ all match; read once as written and once with
    -- digits and symbols read as letters (passw0rd, p@ss, s3cret). The words must stand
    -- alone (total_tokens, tokenizer and author are not secrets); a number may follow.
    with folded as (
        select
            stepsync.fold_lookalikes(p_key) as plain,
            translate(stepsync.fold_lookalikes(p_key), '@$013457', 'asoieast') as leet
    ),

    snake as (
        select lower(regexp_replace(
            regexp_replace(f.plain, '([a-z0-9])([A-Z])', '\1_\2', 'g'), '[^A-Za-z0-9]+', '_', 'g'
        )) as plain,
        lower(regexp_replace(
            regexp_replace(f.leet, '([a-z0-9])([A-Z])', '\1_\2', 'g'), '[^A-Za-z0-9]+', '_', 'g'
        )) as leet
        from folded as f
    )

    select
        s.plain ~ w.pattern or s.leet ~ w.pattern
    from snake as s
    cross join (
        select
            '(^|_)(passwords?|passwd|passphrase|passcode|pass_?word|pwd|secrets?|'
            || 'client_?secret|[a-z]*token|(api|access|secret|private|signing|encryption|'
            || 'master|ssh|session|client|license|account)_?keys?|apikeys?|auth|'
            || 'authorization|credentials?|creds|cookies?|session_?id|bearer|signature|'
            || 'jwt|otp|totp|dsn|connection_?string|conn_?str|database_?url|db_?url)'
            || '(_|[0-9]|$)' as pattern
    ) as w
$$;

comment on function stepsync.is_secret_key(text) is
'Whether a JSON key looks like it holds a secret (password, pwd, secret(s), token, '
'api_key, auth, jwt, credentials, cookie, session id, dsn, ...), after folding case, '
'look-alike letters and digits read as letters. Best effort.';

revoke all on function stepsync.is_secret_key(text) from public;
grant execute on function stepsync.is_secret_key(text) to service_role;

create or replace function stepsync.redact_secret_text(p_text text)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    redacted text;
begin
    -- One search for the shapes' common parts spares the replacements in most texts.
    if p_text is null or p_text !~* (
        'eyj|sk-|sk_|rk_|gh[pousr]_|github_pat_|glpat-|xox[abprs]-|akia|aiza|sbp_|'
        || 'private key|bearer|basic|://[^/@"]*@'
    ) then
        return p_text;
    end if;
    -- Each shape is made of letters, digits and -_.~+/= only and may not follow a
    -- backslash or a letter, so in JSON text a match lies inside one string, never across
    -- an escape or a quote, and replacing it keeps the text valid JSON.
    redacted := regexp_replace(
        p_text,
        '(?<![A-Za-z0-9_\\-])(eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*'
        || '|sk-(proj-|live-|test-|ant-)?[A-Za-z0-9_-]{20,}|[sr]k_(live|test)_[A-Za-z0-9]{16,}'
        || '|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|glpat-[A-Za-z0-9_-]{20,}'
        || '|xox[abprs]-[A-Za-z0-9-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35,}'
        || '|sbp_[0-9a-f]{40}|-----BEGIN [A-Z ]*PRIVATE KEY-----[^"]*-----END [A-Z ]*PRIVATE '
        || 'KEY-----)',
        '[redacted]',
        'g'
    );
    redacted := regexp_replace(
        redacted,
        '(?<![A-Za-z0-9_\\])(bearer|basic)[ ]+[A-Za-z0-9._~+/-]{8,}=*',
        '\1 [redacted]',
        'gi'
    );
    -- Credentials in a URL: scheme://user:password@host.
    return regexp_replace(
        redacted,
        '([a-z][a-z0-9+.-]*://[^/:@ "\\]+:)[^/@ "\\]+@',
        '\1[redacted]@',
        'gi'
    );
end
$$;

comment on function stepsync.redact_secret_text(text) is
'Replaces secret-shaped values in a (JSON) text with [redacted]: JWTs, Bearer/Basic '
'credentials, API keys of common shapes (OpenAI, Anthropic, Stripe, GitHub, GitLab, Slack, '
'AWS, Google, Supabase), PEM private keys, passwords in URLs. Best effort; linear.';

revoke all on function stepsync.redact_secret_text(text) from public;
grant execute on function stepsync.redact_secret_text(text) to service_role;

create or replace function stepsync.redact_secret_values(p_value jsonb)
returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    original text;
    redacted text;
begin
    if p_value is null then
        return null;
    end if;
    original := p_value::text;
    redacted := stepsync.redact_secret_text(original);
    if redacted = original then
        return p_value;
    end if;
    return redacted::jsonb;
end
$$;

comment on function stepsync.redact_secret_values(jsonb) is
'A JSON value with the secret-shaped values inside its strings replaced by [redacted] '
'(redact_secret_text).';

revoke all on function stepsync.redact_secret_values(jsonb) from public;
grant execute on function stepsync.redact_secret_values(jsonb) to service_role;

create or replace function stepsync.redact_secret_keys(
    p_value jsonb, p_level integer, p_searched boolean default false
)
returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    searched text;
begin
    if p_value is null or jsonb_typeof(p_value) not in ('object', 'array') then
        return p_value;
    end if;
    -- Bounded recursion: values are at most json_levels deep where they enter, and one
    -- deeper than this (written before the limits) fails with a clear error instead of
    -- exhausting the stack.
    if p_level > 2 * stepsync.input_limit('json_levels') then
        raise exception 'JSON nests deeper than % levels: it cannot be checked for secrets',
            2 * stepsync.input_limit('json_levels')
            using errcode = '54001';
    end if;
    -- Every key is_secret_key matches holds one of these (in any case, digits and symbols
    -- read as letters), or a letter outside ASCII that may fold into one; most values hold
    -- neither, and one search of their text spares the walk.
    if not p_searched then
        searched := p_value::text;
        if searched !~* (
            'p[a@4][s$5][s$5]|pwd|[s$5][e3]cr[e3][t7]|[t7][o0]k[e3]n|k[e3]y|[a@4]u[t7]h|'
            || 'cr[e3]d|c[o0][o0]k[i1][e3]|[s$5][e3][s$5][s$5][i1][o0]n|b[e3][a@4]r[e3]r|'
            || '[s$5][i1]gn|jw[t7]|[o0][t7]p|d[s$5]n|c[o0]nn|'
            || 'd[a@4][t7][a@4]b[a@4][s$5][e3].?url|db.?url'
        )
            and searched !~ '[^\x01-\x7f]' then
            return p_value;
        end if;
    end if;
    if jsonb_typeof(p_value) = 'object' then
        return coalesce(
            (
                select jsonb_object_agg(
                    e.key,
                    case
                        when stepsync.is_secret_key(e.key) then '"[redacted]"'::jsonb
                        when jsonb_typeof(e.value) in ('object', 'array')
                            then stepsync.redact_secret_keys(e.value, p_level + 1)
                        else e.value
                    end
                )
                from jsonb_each(p_value) as e
            ),
            '{}'::jsonb
        );
    end if;
    return coalesce(
        (
            select jsonb_agg(
                case
                    when jsonb_typeof(e.value) in ('object', 'array')
                        then stepsync.redact_secret_keys(e.value, p_level + 1)
                    else e.value
                end
                order by e.position
            )
            from jsonb_array_elements(p_value) with ordinality as e (value, position)
        ),
        '[]'::jsonb
    );
end
$$;

comment on function stepsync.redact_secret_keys(jsonb, integer, boolean) is
'Replaces the value of every secret-looking key (is_secret_key), at any depth up to twice '
'json_levels, with "[redacted]"; p_searched skips the first text search.';

revoke all on function stepsync.redact_secret_keys(jsonb, integer, boolean) from public;
grant execute on function stepsync.redact_secret_keys(jsonb, integer, boolean) to service_role;

create or replace function stepsync.redact_secrets(p_value jsonb)
returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    original text;
    redacted text;
    value jsonb := p_value;
begin
    if p_value is null then
        return null;
    end if;
    -- One conversion to text serves both kinds (redact_secret_values, then the search
    -- that opens redact_secret_keys).
    original := p_value::text;
    redacted := stepsync.redact_secret_text(original);
    if redacted <> original then
        value := redacted::jsonb;
    end if;
    if jsonb_typeof(value) not in ('object', 'array')
        or (
            redacted !~* (
                'p[a@4][s$5][s$5]|pwd|[s$5][e3]cr[e3][t7]|[t7][o0]k[e3]n|k[e3]y|[a@4]u[t7]h|'
                || 'cr[e3]d|c[o0][o0]k[i1][e3]|[s$5][e3][s$5][s$5][i1][o0]n|b[e3][a@4]r[e3]r|'
                || '[s$5][i1]gn|jw[t7]|[o0][t7]p|d[s$5]n|c[o0]nn|'
                || 'd[a@4][t7][a@4]b[a@4][s$5][e3].?url|db.?url'
            )
            and redacted !~ '[^\x01-\x7f]'
        ) then
        return value;
    end if;
    return stepsync.redact_secret_keys(value, 0, true);
end
$$;

comment on function stepsync.redact_secrets(jsonb) is
'Best-effort redaction: secret-shaped values (redact_secret_values) and the values of '
'secret-looking keys at any depth (redact_secret_keys) become "[redacted]".';

revoke all on function stepsync.redact_secrets(jsonb) from public;
grant execute on function stepsync.redact_secrets(jsonb) to service_role;

create or replace function stepsync.redact_fragment(p_text text)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    redacted text := stepsync.redact_secret_text(p_text);
    secret text;
    quoted text;
    container_at integer;
begin
    -- The start of a JSON text, cut: what redact_secrets does to a value, done to its
    -- text. A private key whose end was cut off goes too.
    redacted := regexp_replace(redacted, '-----BEGIN [A-Z ]*PRIVATE KEY-----[^"]*$', '[redacted]');
    for secret in
        select distinct m.found[1]
        from regexp_matches(redacted, '"((?:[^"\\]|\\.)*)": ', 'g') as m (found)
        where stepsync.is_secret_key(m.found[1])
    loop
        quoted := '"' || regexp_replace(secret, '([][\\^$.*+?(){}|-])', '\\\1', 'g') || '": ';
        -- A secret key's scalar value, whole or cut off by the end of the text.
        redacted := regexp_replace(
            redacted,
            '(' || quoted || ')("(?:[^"\\]|\\.)*"?|-?[0-9][0-9.eE+-]*|true|false|null)',
            '\1"[redacted]"',
            'g'
        );
        -- A secret key's object or array: nothing after it is kept (its end cannot be
        -- told from text without parsing it).
        container_at := regexp_instr(redacted, quoted || '[[{]');
        if container_at > 0 then
            redacted := left(redacted, container_at - 1) || '"' || secret || '": "[redacted]"';
        end if;
    end loop;
    return redacted;
end
$$;

comment on function stepsync.redact_fragment(text) is
'Redaction of the start of a JSON text (a value cut to fit a context): secret shapes, the '
'scalar values of secret-looking keys, and everything from a secret-looking key''s '
'object or array on. Linear in the text.';

revoke all on function stepsync.redact_fragment(text) from public;
grant execute on function stepsync.redact_fragment(text) to service_role;

create or replace function stepsync.cut_json_text(
    p_whole text, p_max_chars integer, p_redact boolean
)
returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    kept integer := greatest(p_max_chars - 40, 0);
    fragment text;
    cut jsonb;
    over integer;
begin
    -- The cut becomes a JSON string, whose quotes and escapes lengthen it (and the
    -- redaction may): shorten the kept part until the string's JSON text fits.
    for attempt in 1 .. 10 loop
        fragment := left(p_whole, kept);
        if p_redact then
            fragment := stepsync.redact_fragment(fragment);
        end if;
        cut := to_jsonb(
            fragment
            || format(
                '…[truncated %s bytes]',
                octet_length(p_whole) - octet_length(left(p_whole, kept))
            )
        );
        over := length(cut::text) - p_max_chars;
        exit when over <= 0 or kept = 0;
        kept := greatest(kept - over, 0);
    end loop;
    return cut;
end
$$;

comment on function stepsync.cut_json_text(text, integer, boolean) is
'The start of a JSON text as a string "…[truncated N bytes]" of at most p_max_chars '
'characters of JSON text (p_max_chars of 64 or more), redacted (redact_fragment) when '
'p_redact.';

revoke all on function stepsync.cut_json_text(text, integer, boolean) from public;
grant execute on function stepsync.cut_json_text(text, integer, boolean) to service_role;

create or replace function stepsync.truncate_json(p_value jsonb, p_max_chars integer)
returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    whole text;
begin
    if p_value is null then
        return null;
    end if;
    whole := p_value::text;
    if length(whole) <= p_max_chars then
        return p_value;
    end if;
    return stepsync.cut_json_text(whole, p_max_chars, false);
end
$$;

comment on function stepsync.truncate_json(jsonb, integer) is
'A value whose JSON text is longer than p_max_chars becomes a string: its first '
'characters and a marker "…[truncated N bytes]", at most p_max_chars characters of JSON '
'text in all (p_max_chars of 64 or more).';

revoke all on function stepsync.truncate_json(jsonb, integer) from public;
grant execute on function stepsync.truncate_json(jsonb, integer) to service_role;

create or replace function stepsync.fit_value(p_value jsonb, p_max_chars integer)
returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    whole text;
    redacted jsonb;
begin
    if p_value is null then
        return null;
    end if;
    -- What a step is shown, redacted and cut to its share: a value that fits is
    -- redacted whole; a larger one is cut first and only what is kept is redacted, so
    -- the work never grows with the run's data beyond reading it once.
    whole := p_value::text;
    if length(whole) <= p_max_chars then
        redacted := stepsync.redact_secrets(p_value);
        if length(redacted::text) <= p_max_chars then
            return redacted;
        end if;
        return stepsync.cut_json_text(redacted::text, p_max_chars, false);
    end if;
    return stepsync.cut_json_text(whole, p_max_chars, true);
end
$$;

comment on function stepsync.fit_value(jsonb, integer) is
'A value as a step is shown it: redacted, and cut to at most p_max_chars characters of '
'JSON text (see truncate_json) with only the kept part redacted.';

revoke all on function stepsync.fit_value(jsonb, integer) from public;
grant execute on function stepsync.fit_value(jsonb, integer) to service_role;

create or replace function stepsync.jsonpath_names_secret(p_path jsonpath)
returns boolean
language sql
immutable
parallel safe
set search_path = ''
as $$
    -- A member a path names (."key"), anywhere in it, filters included.
    select exists (
        select
        from regexp_matches(p_path::text, '\."((?:[^"\\]|\\.)*)"', 'g') as m (found)
        where stepsync.is_secret_key(m.found[1])
    )
$$;

comment on function stepsync.jsonpath_names_secret(jsonpath) is
'Whether a path names a secret-looking key: what it selects is then shown as "[redacted]" '
'(paths are evaluated before redaction; the subset has no .* to reach a key unnamed).';

revoke all on function stepsync.jsonpath_names_secret(jsonpath) from public;
grant execute on function stepsync.jsonpath_names_secret(jsonpath) to service_role;

create or replace function stepsync.fit_text(p_text text, p_max_chars integer)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    kept integer := least(char_length(p_text), p_max_chars);
    over integer;
begin
    for attempt in 1 .. 10 loop
        over := length(to_jsonb(left(p_text, kept))::text) - p_max_chars;
        exit when over <= 0 or kept = 0;
        kept := greatest(kept - over, 0);
    end loop;
    return left(p_text, kept);
end
$$;

comment on function stepsync.fit_text(text, integer) is
'The longest start of p_text whose JSON string text is at most p_max_chars characters.';

revoke all on function stepsync.fit_text(text, integer) from public;
grant execute on function stepsync.fit_text(text, integer) to service_role;

create or replace function stepsync.share_budget(
    p_sizes integer[], p_budget integer, p_floor integer default 64
)
returns integer
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    remaining bigint := p_budget;
    sharing integer := coalesce(cardinality(p_sizes), 0);
    value_size integer;
begin
    -- Water-filling: values smaller than an equal share keep their size and leave the
    -- rest to the larger ones, which are all cut to the same level.
    for value_size in select s.size from unnest(p_sizes) as s (size) order by s.size loop
        if value_size <= remaining / sharing then
            remaining := remaining - value_size;
            sharing := sharing - 1;
        else
            return greatest(p_floor, (remaining / sharing)::integer);
        end if;
    end loop;
    return greatest(p_floor, p_budget);
end
$$;

comment on function stepsync.share_budget(integer[], integer, integer) is
'The size to cut values of sizes p_sizes to so that together they take at most p_budget '
'(at least p_floor each): the small ones keep their size, the large share the rest.';

revoke all on function stepsync.share_budget(integer[], integer, integer) from public;
grant execute on function stepsync.share_budget(integer[], integer, integer) to service_role;

create or replace view stepsync.run_context_heads
with (security_invoker = true) as
select
    r.id as run_id,
    jsonb_build_object(
        'task', jsonb_build_object(
            'id', r.task_id,
            -- The task's name as the run started, else looked up by key; a legacy task's
            -- name has no limit, its context's does.
            'name', left(
                coalesce(
                    r.metadata ->> 'task_name',
                    (
                        select t.name from public.agent_tasks as t
                        where t.id = r.task_id
                    )
                ),
                200
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
language plpgsql
immutable
set search_path = ''
as $$
declare
    items jsonb;
begin
    -- A predicate (`$.previous.status == "failed"`) skips when true; a path or filter
    -- (`$.steps[0].output ? (@.done)`) skips when it selects anything other than a single
    -- false or null. Evaluation errors, and an evaluation the statement timeout cut
    -- short, count as "do not skip": one step's skip_if never fails the statement that
    -- moves a batch of runs on.
    if p_skip_if is null then
        return false;
    end if;
    items := jsonb_path_query_array(p_context, p_skip_if, '{}'::jsonb, true);
    return jsonb_array_length(items) > 0 and items not in ('[false]'::jsonb, '[null]'::jsonb);
exception
    when query_canceled then
        if sqlerrm like '%statement timeout%' then
            return false;
        end if;
        raise;
    when others then
        return false;
end
$$;

comment on function stepsync.should_skip(jsonb, jsonpath) is
'Whether skip_if holds over a step''s context (see context_before); errors and a timeout '
'count as "do not skip".';

revoke all on function stepsync.should_skip(jsonb, jsonpath) from public;
grant execute on function stepsync.should_skip(jsonb, jsonpath) to service_role;

create or replace function stepsync.render_placeholder(p_expression text, p_context jsonb)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    path jsonpath := stepsync.placeholder_path(p_expression);
    items jsonb;
begin
    if path is null then
        return format('[invalid placeholder: %s]', p_expression);
    end if;
    -- Held to the checked subset again, for a template written before the rule.
    if stepsync.jsonpath_problem(path, stepsync.input_limit('jsonpath_chars')) is not null then
        return format('[refused placeholder: %s]', stepsync.excerpt(p_expression, 60));
    end if;
    items := jsonb_path_query_array(p_context, path, '{}'::jsonb, true);
    return case
        when jsonb_array_length(items) = 0 then format('[missing: %s]', p_expression)
        when jsonb_array_length(items) > 1 then items::text
        when jsonb_typeof(items -> 0) = 'string' then items ->> 0
        else (items -> 0)::text
    end;
end
$$;

comment on function stepsync.render_placeholder(text, jsonb) is
'One {{expr}} of a template, rendered: strings as they are, other values as JSON, several '
'as a JSON array; "[missing: expr]", "[invalid placeholder: expr]" or "[refused '
'placeholder: expr]" (outside the jsonpath subset).';

revoke all on function stepsync.render_placeholder(text, jsonb) from public;
grant execute on function stepsync.render_placeholder(text, jsonb) to service_role;

create or replace function stepsync.render_template(p_template text, p_context jsonb)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
    -- Grammar: {{ expr }} where expr is a jsonpath over the context without its leading
    -- "$." (steps[0].output.title, previous.output, task.name, context_data.key); a
    -- leading "$" is accepted too. One pass over the template (template_placeholders),
    -- each placeholder evaluated once, the pieces joined once: linear in the template.
    select coalesce(
        string_agg(
            t.literal_before || case
                when t.expression is null then ''
                else stepsync.render_placeholder(t.expression, p_context)
            end,
            '' order by t.placeholder
        ),
        ''
    )
    from stepsync.template_placeholders(p_template) as t
$$;

comment on function stepsync.render_template(text, jsonb) is
'Substitutes {{expr}} placeholders (jsonpath without "$.") with values from p_context; '
'unknown paths become "[missing: expr]", malformed ones "[invalid placeholder: expr]".';

revoke all on function stepsync.render_template(text, jsonb) from public;
grant execute on function stepsync.render_template(text, jsonb) to service_role;

create or replace function stepsync.assemble_step_context(
    p_mode text, p_base jsonb, p_parts jsonb, p_shared jsonb
)
returns jsonb
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    earlier_count integer := case when p_mode = 'full' then jsonb_array_length(p_parts) end;
begin
    -- p_shared holds the values that share the size budget, in this order: the trigger
    -- data, then per mode: previous (output, error), full (every output, then every
    -- error), selective (every selection), custom (the rendered text). p_parts holds the
    -- rest of the mode's part: the previous step's or every step's other fields, or the
    -- selection keys.
    return p_base
        || jsonb_build_object(
            'run', (p_base -> 'run') || jsonb_build_object('trigger_data', p_shared -> 0)
        )
        || case p_mode
            when 'none' then '{}'::jsonb
            when 'metadata' then jsonb_build_object('steps', p_parts)
            when 'previous' then jsonb_build_object(
                'previous', case
                    when jsonb_typeof(p_parts) = 'object' then p_parts || jsonb_build_object(
                        'output', p_shared -> 1, 'error', p_shared -> 2
                    )
                    else 'null'::jsonb
                end
            )
            when 'full' then jsonb_build_object(
                'steps', coalesce(
                    (
                        select jsonb_agg(
                            e.entry || jsonb_build_object(
                                'output', p_shared -> e.position::integer,
                                'error', p_shared -> (e.position::integer + earlier_count)
                            )
                            order by e.position
                        )
                        from jsonb_array_elements(p_parts) with ordinality as e (entry, position)
                    ),
                    '[]'::jsonb
                )
            )
            when 'selective' then jsonb_build_object(
                'selected', coalesce(
                    (
                        select jsonb_object_agg(k.key, p_shared -> k.position::integer)
                        from jsonb_array_elements_text(p_parts) with ordinality as k (key, position)
                    ),
                    '{}'::jsonb
                )
            )
            else jsonb_build_object('rendered', p_shared -> 1)
        end;
end
$$;

comment on function stepsync.assemble_step_context(text, jsonb, jsonb, jsonb) is
'Puts a step''s input together from its fixed part and the values that share the size '
'budget (see build_step_context); called once with nulls to measure, once to build.';

revoke all on function stepsync.assemble_step_context(text, jsonb, jsonb, jsonb) from public;
grant execute on function stepsync.assemble_step_context(text, jsonb, jsonb, jsonb)
to service_role;

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
    mode text := case
        when p_include_previous_context then p_context_mode::text else 'none'
    end;
    task jsonb := p_run_context -> 'task';
    run jsonb := p_run_context -> 'run';
    context_data jsonb;
    base jsonb;
    parts jsonb;
    shared jsonb;
    sizes integer[];
    nulls jsonb;
    fixed_size integer;
    level integer;
    fitted jsonb;
    built jsonb;
    visible jsonb;
    shown jsonb;
    template_level integer;
begin
    -- The task name is the one fixed part a user writes without a limit (legacy tasks).
    if char_length(task ->> 'name') > stepsync.input_limit('task_name_chars') then
        task := task || jsonb_build_object(
            'name', left(task ->> 'name', stepsync.input_limit('task_name_chars'))
        );
    end if;
    context_data := coalesce(p_context_data, '{}'::jsonb);
    -- Within its limit the static part takes a quarter of the budget at most; one
    -- written before the limits fails the step instead of crowding out the rest.
    if length(context_data::text) > p_max_bytes / 4 then
        raise exception 'context_data is % characters of JSON, more than the % it may take',
            length(context_data::text), p_max_bytes / 4
            using errcode = '54000';
    end if;
    base := jsonb_build_object(
        'mode', mode,
        'task', task,
        'run', run - 'trigger_data',
        'step', jsonb_build_object('order', p_step_order),
        'context_data', context_data
    );

    -- What the mode shows, split into small fixed parts (redacted here) and the values
    -- that can be large (trigger data, outputs, errors, selections, the rendered
    -- template): those share what the fixed parts leave of p_max_bytes, and each is
    -- redacted as it is cut to its share (fit_value), so redaction never reads more than
    -- the step is shown.
    case mode
        when 'none' then
            shared := jsonb_build_array(run -> 'trigger_data');
        when 'metadata' then
            parts := coalesce(
                (
                    select jsonb_agg(
                        jsonb_build_object(
                            'order', e.step -> 'order',
                            'name', e.step -> 'name',
                            'status', e.step -> 'status',
                            'started_at', e.step -> 'started_at',
                            'completed_at', e.step -> 'completed_at',
                            'duration_ms', e.step -> 'duration_ms',
                            'attempts', e.step -> 'attempts'
                        )
                        order by e.position
                    )
                    from jsonb_array_elements(earlier) with ordinality as e (step, position)
                ),
                '[]'::jsonb
            );
            shared := jsonb_build_array(run -> 'trigger_data');
        when 'previous' then
            parts := case
                when earlier -> -1 is null then 'null'::jsonb
                else jsonb_build_object(
                    'order', earlier #> '{-1,order}',
                    'name', earlier #> '{-1,name}',
                    'status', earlier #> '{-1,status}'
                )
            end;
            shared := jsonb_build_array(
                run -> 'trigger_data', earlier #> '{-1,output}', earlier #> '{-1,error}'
            );
        when 'full' then
            select
                coalesce(
                    jsonb_agg(
                        jsonb_build_object(
                            'order', e.step -> 'order',
                            'name', e.step -> 'name',
                            'status', e.step -> 'status'
                        )
                        order by e.position
                    ),
                    '[]'::jsonb
                ),
                jsonb_build_array(run -> 'trigger_data')
                || coalesce(jsonb_agg(e.step -> 'output' order by e.position), '[]'::jsonb)
                || coalesce(jsonb_agg(e.step -> 'error' order by e.position), '[]'::jsonb)
            into parts, shared
            from jsonb_array_elements(earlier) with ordinality as e (step, position);
        when 'selective' then
            -- Each path is evaluated once over the whole context as it is (the subset
            -- keeps that linear): no result is null, one result is the value, several are
            -- an array. A path that names a secret-looking key selects "[redacted]"; what
            -- the others select is redacted as it is fitted.
            visible := stepsync.context_before(p_run_context, p_step_order)
                || jsonb_build_object('context_data', context_data);
            select
                coalesce(jsonb_agg(p.path::text order by p.position), '[]'::jsonb),
                jsonb_build_array(run -> 'trigger_data') || coalesce(
                    jsonb_agg(
                        case
                            when stepsync.jsonpath_names_secret(p.path) then '"[redacted]"'::jsonb
                            when jsonb_array_length(p.items) = 0 then 'null'::jsonb
                            when jsonb_array_length(p.items) = 1 then p.items -> 0
                            else p.items
                        end
                        order by p.position
                    ),
                    '[]'::jsonb
                )
            into parts, shared
            from (
                select
                    c.path,
                    c.position,
                    jsonb_path_query_array(visible, c.path, '{}'::jsonb, true) as items
                from unnest(coalesce(p_context_paths, '{}'::jsonpath[]))
                    with ordinality as c (path, position)
            ) as p;
        else
            -- custom: the template sees the task, the run, context_data and every earlier
            -- step, each output and error fitted to an equal share (at least 256
            -- characters), all redacted.
            template_level := greatest(
                256, p_max_bytes / greatest(1, jsonb_array_length(earlier) + 1)
            );
            shown := coalesce(
                (
                    select jsonb_agg(
                        stepsync.redact_secrets(e.step - 'output' - 'error')
                        || jsonb_build_object(
                            'output', stepsync.fit_value(e.step -> 'output', template_level),
                            'error', stepsync.fit_value(e.step -> 'error', template_level)
                        )
                        order by e.position
                    )
                    from jsonb_array_elements(earlier) with ordinality as e (step, position)
                ),
                '[]'::jsonb
            );
            shared := jsonb_build_array(
                run -> 'trigger_data',
                to_jsonb(stepsync.render_template(
                    p_context_template,
                    jsonb_build_object(
                        'task', stepsync.redact_secrets(task),
                        'run', stepsync.redact_secrets(run),
                        'steps', shown,
                        'previous', shown -> -1,
                        'context_data', stepsync.redact_secrets(context_data)
                    )
                ))
            );
    end case;

    -- A small run context (its stored size, six times which its JSON text cannot
    -- exceed, well within the budget) needs nothing cut: the input is built once and
    -- redacted in one go (no key of its own structure looks secret, so that is the
    -- redaction of each part), unless selections repeat it past the budget.
    if (pg_catalog.pg_column_size(p_run_context) + pg_catalog.pg_column_size(context_data)) * 6
        + 4096 <= p_max_bytes then
        built := stepsync.redact_secrets(
            stepsync.assemble_step_context(mode, base, parts, shared)
        );
        if length(built::text) <= p_max_bytes then
            return built;
        end if;
    end if;
    -- Otherwise the fixed parts are redacted here, and each shared value as it is cut.
    base := stepsync.redact_secrets(base);
    parts := stepsync.redact_secrets(parts);

    -- Measure the fixed parts with every shared value null (4 characters each), share
    -- what is left, then build.
    select
        array_agg(length(s.value::text) order by s.position),
        jsonb_agg('null'::jsonb)
    into sizes, nulls
    from jsonb_array_elements(shared) with ordinality as s (value, position);
    fixed_size := length(stepsync.assemble_step_context(mode, base, parts, nulls)::text)
        - 4 * cardinality(sizes);
    level := stepsync.share_budget(sizes, p_max_bytes - fixed_size);
    select jsonb_agg(
        case
            -- The rendered template comes from redacted values: it is only cut.
            when mode = 'custom' and s.position = 2 then case
                when length(s.value::text) <= level then s.value
                else to_jsonb(stepsync.fit_text(s.value #>> '{}', level))
            end
            else stepsync.fit_value(s.value, level)
        end
        order by s.position
    )
    into fitted
    from jsonb_array_elements(shared) with ordinality as s (value, position);
    built := stepsync.assemble_step_context(mode, base, parts, fitted);
    if length(built::text) > p_max_bytes then
        raise exception 'the input context is % characters of JSON, more than the limit of %',
            length(built::text), p_max_bytes
            using errcode = '54000';
    end if;
    return built;
end
$$;

comment on function stepsync.build_step_context(
    jsonb, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb, integer
) is
'The input context of step p_step_order given its run context and definition: mode, task, '
'run, step, context_data, plus steps (full, metadata), previous, selected (selective) or '
'rendered (custom). Secrets redacted; at most p_max_bytes characters of JSON: the trigger '
'data, outputs, errors, selections and rendered text share what the rest leaves.';

revoke all on function stepsync.build_step_context(
    jsonb, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb, integer
) from public;
grant execute on function stepsync.build_step_context(
    jsonb, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb, integer
) to service_role;

create or replace function stepsync.step_input(
    p_run_context jsonb,
    p_step_order integer,
    p_include_previous_context boolean,
    p_context_mode public.step_context_mode,
    p_context_paths jsonpath[],
    p_context_template text,
    p_context_data jsonb
)
returns jsonb
language plpgsql
volatile
set search_path = ''
as $$
begin
    return stepsync.build_step_context(
        p_run_context, p_step_order, p_include_previous_context, p_context_mode,
        p_context_paths, p_context_template, p_context_data,
        stepsync.input_limit('context_chars')
    );
exception
    -- A build the statement timeout cut short fails this step only: the timeout has
    -- fired, and the statement goes on with the other steps. A cancel asked for by a
    -- client or an operator is not caught.
    when query_canceled then
        if sqlerrm like '%statement timeout%' then
            return jsonb_build_object(
                'context_error', 'building it took longer than the statement timeout'
            );
        end if;
        raise;
    when others then
        return jsonb_build_object('context_error', stepsync.excerpt(sqlerrm, 500));
end
$$;

comment on function stepsync.step_input(
    jsonb, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb
) is
'build_step_context at the context_chars limit, or {"context_error": why} when it cannot '
'be built (the caller fails that step alone): one bad step never fails a batch.';

revoke all on function stepsync.step_input(
    jsonb, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb
) from public;
grant execute on function stepsync.step_input(
    jsonb, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb
) to service_role;

create or replace function stepsync.run_step_input(
    p_run_id uuid,
    p_step_order integer,
    p_include_previous_context boolean,
    p_context_mode public.step_context_mode,
    p_context_paths jsonpath[],
    p_context_template text,
    p_context_data jsonb
)
returns jsonb
language plpgsql
volatile
set search_path = ''
as $$
declare
    run_context jsonb;
begin
    -- The run's context is read here, inside the guard: with large outputs, reading it
    -- is part of what may take long. The head by the run's key, the earlier steps by
    -- (run_id, step_order), through the views of the run context (planned under
    -- lease_steps' enable_seqscan = off, its only caller).
    select h.head || jsonb_build_object(
        'steps', coalesce(
            (
                select jsonb_agg(e.entry order by e.step_order)
                from stepsync.run_context_entries as e
                where e.run_id = p_run_id and e.step_order < p_step_order
            ),
            '[]'::jsonb
        )
    )
    into run_context
    from stepsync.run_context_heads as h
    where h.run_id = p_run_id;
    return stepsync.build_step_context(
        run_context, p_step_order, p_include_previous_context, p_context_mode,
        p_context_paths, p_context_template, p_context_data,
        stepsync.input_limit('context_chars')
    );
exception
    when query_canceled then
        if sqlerrm like '%statement timeout%' then
            return jsonb_build_object(
                'context_error', 'building it took longer than the statement timeout'
            );
        end if;
        raise;
    when others then
        return jsonb_build_object('context_error', stepsync.excerpt(sqlerrm, 500));
end
$$;

comment on function stepsync.run_step_input(
    uuid, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb
) is
'The input of step p_step_order of run p_run_id (its run context read and built by '
'build_step_context, at the context_chars limit), or {"context_error": why} when it cannot '
'be built in time or at all: what lease_steps stores, failing that step alone.';

revoke all on function stepsync.run_step_input(
    uuid, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb
) from public;
grant execute on function stepsync.run_step_input(
    uuid, integer, boolean, public.step_context_mode, jsonpath[], text, jsonb
) to service_role;

-- Run progress: how a run moves forward between steps, the bookkeeping every step
-- transition does (run counters), and what a finished run leaves behind (the task's
-- counters, the definition's latest-run snapshot).
--
-- Lock order, everywhere: the run row first (for no key update), then its step rows.
-- cancel, complete, fail and the reaper all follow it, so they cannot deadlock.
--
-- A run moves on in one place, advance_runs, for any number of runs at once: starting a
-- run, completing steps (complete_steps hands it every run its batch moved) and a failed
-- step that says `continue` all call it.
--
-- A finished run leaves three writes behind: the run row, the task's counters and the
-- definitions' latest-run snapshot (task_steps), the last two audited. The snapshot is
-- written when the run ends, not at every step transition: every statement on task_steps
-- runs its checks and is audited. finish_runs makes each of the three writes one
-- statement for all the runs it is given (complete_steps hands it every run its batch
-- ended), with one audit statement each; every changed row still gets its own audit row.
-- finish_run is finish_runs for one run, so both follow one code path.
--
-- A run's legacy status (what the app's UI reads) keeps its five values; how the run
-- turned out is in its outcome: a completed run whose failed steps all said `continue`
-- is `partial`, not `succeeded`. A run that stopped with compensations to run stays
-- running until they are over (0175_compensation.sql); advance_runs then ends it failed
-- (or cancelled, when a cancel asked for them) with its compensation outcome.

create or replace function stepsync.run_outcome(
    p_status public.task_execution_status_enum, p_steps_failed integer
)
returns public.task_run_outcome
language sql
immutable
set search_path = ''
as $$
    select case p_status
        when 'completed' then
            case when p_steps_failed > 0 then 'partial' else 'succeeded' end
        when 'failed' then 'failed'
        when 'cancelled' then 'cancelled'
    end::public.task_run_outcome
$$;

comment on function stepsync.run_outcome(public.task_execution_status_enum, integer) is
'The outcome of a run ending with p_status after p_steps_failed of its steps failed: '
'partial when it completed all the same, else its status (null while it goes on).';

revoke all on function stepsync.run_outcome(public.task_execution_status_enum, integer)
from public;
grant execute on function stepsync.run_outcome(public.task_execution_status_enum, integer)
to service_role;

create or replace function stepsync.finish_runs(
    p_run_ids uuid[],
    p_status public.task_execution_status_enum,
    p_error text default null
)
returns void
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    finishing uuid[];
    latest uuid[];
begin
    -- Lock order: runs in id order, then tasks in id order, then definitions (the same
    -- order as one run at a time, so batches and single calls wait instead of
    -- deadlocking). Runs already over are left alone.
    select array_agg(open_run.id) into finishing
    from (
        select r.id
        from public.agent_task_executions as r
        where r.id = any(p_run_ids) and r.status in ('pending', 'running')
        order by r.id
        for no key update
    ) as open_run;
    if finishing is null then
        return;
    end if;

    -- A run's output is the output of its last completed step (text, as the app shows
    -- it: a JSON string verbatim, anything else as JSON); its outcome and compensation
    -- go into metadata too, for readers that know only the legacy columns.
    update public.agent_task_executions as r
    set
        status = p_status,
        outcome = stepsync.run_outcome(p_status, r.steps_failed),
        metadata = coalesce(r.metadata, '{}'::jsonb) || jsonb_strip_nulls(
            jsonb_build_object(
                'outcome', stepsync.run_outcome(p_status, r.steps_failed),
                'compensation', r.compensation
            )
        ),
        completed_at = now(),
        duration_ms = (extract(epoch from now() - coalesce(r.started_at, r.created_at)) * 1000)::integer,
        output = (
            select
                case
                    when jsonb_typeof(s.output) = 'string' then s.output #>> '{}'
                    else s.output::text
                end
            from public.task_step_executions as s
            where s.run_id = r.id and s.status = 'completed' and s.kind = 'step'
            order by s.step_order desc
            limit 1
        ),
        error_message = coalesce(p_error, r.error_message),
        updated_at = now()
    where r.id = any(finishing);

    -- The tasks' counters, as the legacy executor kept them. Cancelled runs are not
    -- executions that succeeded or failed, so they count nowhere.
    if p_status in ('completed', 'failed') then
        with per_task as materialized (
            select run.task_id, count(*)::integer as runs
            from unnest(finishing) as finished (id)
            cross join lateral (
                select r.task_id from public.agent_task_executions as r
                where r.id = finished.id
                limit 1
            ) as run
            group by run.task_id
        ),

        locked as (
            select t.id
            from public.agent_tasks as t
            where t.id = any(array(select p.task_id from per_task as p))
            order by t.id
            for no key update
        )

        update public.agent_tasks as t
        set
            total_executions = t.total_executions + per_task.runs,
            successful_executions
            = t.successful_executions + per_task.runs * (p_status = 'completed')::integer,
            failed_executions
            = t.failed_executions + per_task.runs * (p_status = 'failed')::integer,
            last_run_at = now(),
            updated_at = now()
        from per_task
        where
            t.id = any(array(select l.id from locked as l))
            and t.id = per_task.task_id;
    end if;

    -- The definitions keep their task's latest run's final status and result for the UI
    -- (live progress is on task_step_executions). An older run finishing late does not
    -- overwrite a newer one's; a row already holding exactly this is not rewritten.
    select array_agg(finished.id) into latest
    from unnest(finishing) as finished (id)
    cross join lateral (
        select r.task_id, r.created_at from public.agent_task_executions as r
        where r.id = finished.id
        limit 1
    ) as run
    where not exists (
        select from public.agent_task_executions as newer
        where newer.task_id = run.task_id and newer.created_at > run.created_at
    );

    with snapshot as materialized (
        select
            s.step_id,
            s.status,
            jsonb_build_object(
                'run_id', s.run_id,
                'step_execution_id', s.id,
                'status', s.status,
                'attempt', s.attempt,
                'output', s.output,
                'error', s.error_message,
                'started_at', s.started_at,
                'completed_at', s.completed_at,
                'duration_ms', s.duration_ms
            ) as result
        from public.task_step_executions as s
        where
            s.run_id = any(latest)
            and s.step_id is not null
            and s.kind = 'step'
            and s.status in ('completed', 'failed', 'skipped', 'cancelled')
    )

    update public.task_steps as d
    set
        status = snapshot.status,
        execution_result = snapshot.result
    from snapshot
    where
        d.id = any(array(select snapshot.step_id from snapshot))
        and d.id = snapshot.step_id
        and (d.status, d.execution_result)
        is distinct from (snapshot.status, snapshot.result);
end
$$;

comment on function stepsync.finish_runs(uuid[], public.task_execution_status_enum, text) is
'Ends the given pending/running runs with p_status, one statement per write for all of '
'them: each run''s outcome (partial when completed with failed steps), output from its '
'last completed step and its timings, the tasks'' '
'execution counters (completed and failed runs only) and, for runs no newer run of their '
'task exists for, the definitions'' latest-run snapshot (task_steps.status, '
'execution_result). Runs already over are left alone.';

revoke all on function stepsync.finish_runs(uuid[], public.task_execution_status_enum, text)
from public, anon, authenticated;
grant execute on function stepsync.finish_runs(uuid[], public.task_execution_status_enum, text)
to service_role;

create or replace function stepsync.finish_run(
    p_run_id uuid,
    p_status public.task_execution_status_enum,
    p_error text default null
)
returns void
language sql
volatile
set search_path = ''
as $$
    select stepsync.finish_runs(array[p_run_id], p_status, p_error)
$$;

comment on function stepsync.finish_run(uuid, public.task_execution_status_enum, text) is
'Ends a pending/running run with p_status (finish_runs for one run): output from its last '
'completed step, timings, the task''s execution counters (completed and failed runs only) '
'and, unless a newer run of the task exists, the definitions'' latest-run snapshot.';

revoke all on function stepsync.finish_run(
    uuid, public.task_execution_status_enum, text
) from public;
grant execute on function stepsync.finish_run(
    uuid, public.task_execution_status_enum, text
) to service_role;

create or replace function stepsync.advance_runs(
    p_run_ids uuid[],
    p_worker text default null,
    p_lease_seconds integer default null
)
returns setof stepsync.leased_step
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    moving uuid[];
    skipping uuid[];
    plain uuid[];
    handing_off uuid[];
    queueing uuid[] := '{}';
    ended uuid[] := '{}';
    ready_now uuid[];
    ended_now uuid[];
    ended_plainly uuid[];
    ended_compensated uuid[];
    ended_cancelled uuid[];
    head_user uuid;
    head_fair_at timestamptz;
    unfair uuid[];
begin
    -- Lock order: runs in id order, then their steps.
    select array_agg(open_run.id) into moving
    from (
        select r.id
        from public.agent_task_executions as r
        where r.id = any(p_run_ids) and r.status = 'running'
        order by r.id
        for no key update
    ) as open_run;

    -- Steps run one at a time, in order, so a run's first unfinished step says it all:
    -- queued or running means one is in flight (nothing to do), pending is the next one,
    -- none means the run is over. A pending step whose skip_if holds is skipped and the
    -- run looks again: each round settles every run or skips one step of it.
    while moving is not null loop
        select
            array_agg(upcoming.run_id) filter (where upcoming.id is null),
            array_agg(upcoming.id) filter (
                where upcoming.status = 'pending' and not upcoming.skips
            ),
            array_agg(upcoming.id) filter (where upcoming.skips),
            array_agg(upcoming.id) filter (
                where upcoming.status = 'pending' and upcoming.skip_if is null
            )
        into ended_now, ready_now, skipping, plain
        from (
            select
                run.run_id,
                next_step.id,
                next_step.status,
                next_step.skip_if,
                coalesce(
                    next_step.status = 'pending'
                    and next_step.skip_if is not null
                    and stepsync.should_skip(
                        stepsync.context_before(
                            stepsync.run_context(run.run_id), next_step.step_order
                        ),
                        next_step.skip_if
                    ),
                    false
                ) as skips
            from unnest(moving) as run (run_id)
            left join lateral (
                select s.id, s.status, s.skip_if, s.step_order
                from public.task_step_executions as s
                where s.run_id = run.run_id and s.status in ('pending', 'queued', 'running')
                order by s.step_order
                limit 1
            ) as next_step on true
        ) as upcoming;

        ended := ended || coalesce(ended_now, '{}');
        -- Only a plainly due next step (no skip_if to weigh, found on the first look) is
        -- handed to p_worker; any step reached through a skip is queued for all workers.
        if handing_off is null then
            handing_off := coalesce(plain, '{}');
            queueing := queueing || array(
                select ready.id from unnest(ready_now) as ready (id)
                where ready.id <> all(handing_off)
            );
        else
            queueing := queueing || coalesce(ready_now, '{}');
        end if;
        exit when skipping is null;
        update public.task_step_executions as s
        set
            status = 'skipped',
            skip_reason = format('skip_if matched: %s', s.skip_if),
            completed_at = now(),
            updated_at = now()
        where s.id = any(skipping);
        select array_agg(s.run_id) into moving
        from public.task_step_executions as s
        where s.id = any(skipping);
    end loop;

    if cardinality(ended) > 0 then
        -- A run that was compensating ends failed, or cancelled when a cancel asked for
        -- the compensation, with the compensation's outcome; any other run completed.
        select
            array_agg(run.id) filter (where run.compensation is null),
            array_agg(run.id) filter (
                where run.compensation is not null and run.cancelled_at is null
            ),
            array_agg(run.id) filter (
                where run.compensation is not null and run.cancelled_at is not null
            )
        into ended_plainly, ended_compensated, ended_cancelled
        from unnest(ended) as finished (id)
        cross join lateral (
            select r.id, r.compensation, r.cancelled_at
            from public.agent_task_executions as r
            where r.id = finished.id
            limit 1
        ) as run;
        if ended_compensated is not null or ended_cancelled is not null then
            update public.agent_task_executions as r
            set compensation = case
                when exists (
                    select from public.task_step_executions as s
                    where s.run_id = r.id and s.kind = 'compensation' and s.status = 'failed'
                ) then 'failed'
                else 'completed'
            end::public.run_compensation_status
            where r.id = any(coalesce(ended_compensated, '{}') || ended_cancelled);
            perform stepsync.finish_runs(ended_compensated, 'failed');
            perform stepsync.finish_runs(ended_cancelled, 'cancelled');
        end if;
        perform stepsync.finish_runs(ended_plainly, 'completed');
    end if;
    -- Fairness: a hand-off jumps the queue, so it is made only when the queue would give
    -- the step to this user now anyway: nothing is due, the first due step is the same
    -- user's, or this step's place (after the user's last queued step) comes before it.
    -- Otherwise it is queued, and the worker's free slot claims in the fair order.
    if p_worker is not null and cardinality(handing_off) > 0 then
        select s.user_id, s.fair_at into head_user, head_fair_at
        from public.task_step_executions as s
        where s.status = 'queued' and s.run_after <= now()
        order by s.fair_at, s.id
        limit 1;
        if found then
            select
                coalesce(array_agg(offered.id) filter (where offered.fair), '{}'),
                coalesce(array_agg(offered.id) filter (where not offered.fair), '{}')
            into handing_off, unfair
            from (
                select
                    given.id,
                    step.user_id = head_user or greatest(
                        now(),
                        (
                            select last_queued.fair_at + (
                                select make_interval(secs => setting.value / 1000.0)
                                from stepsync.settings as setting
                                where setting.name = 'user_step_spacing_ms'
                            )
                            from public.task_step_executions as last_queued
                            where last_queued.user_id = step.user_id
                                and last_queued.status = 'queued'
                            order by last_queued.fair_at desc
                            limit 1
                        )
                    ) <= head_fair_at as fair
                from unnest(handing_off) as given (id)
                cross join lateral (
                    select s.user_id from public.task_step_executions as s
                    where s.id = given.id
                    limit 1
                ) as step
            ) as offered;
            queueing := queueing || unfair;
        end if;
    else
        queueing := queueing || coalesce(handing_off, '{}');
        handing_off := '{}';
    end if;
    -- Only with steps to queue: most calls hand every step off or end the run. Each
    -- user's queued steps are spaced apart in the claim order (fair_at), after the last
    -- one the user already has queued: a user with hundreds queued takes turns with one
    -- who has a single step.
    if cardinality(queueing) > 0 then
        update public.task_step_executions as s
        set
            status = 'queued',
            run_after = now(),
            fair_at = greatest(
                now(),
                (
                    -- The setting is read once per statement, and only when a user has
                    -- steps queued already.
                    select last_queued.fair_at + (
                        select make_interval(secs => setting.value / 1000.0)
                        from stepsync.settings as setting
                        where setting.name = 'user_step_spacing_ms'
                    )
                    from public.task_step_executions as last_queued
                    where last_queued.user_id = s.user_id and last_queued.status = 'queued'
                    order by last_queued.fair_at desc
                    limit 1
                )
            ),
            queued_at = now(),
            updated_at = now()
        where s.id = any(queueing);
    end if;
    if p_worker is not null and cardinality(handing_off) > 0 then
        return query
        select * from stepsync.lease_steps(handing_off, p_worker, p_lease_seconds);
    end if;
end
$$;

comment on function stepsync.advance_runs(uuid[], text, integer) is
'Moves the given running runs forward, set-based: each run''s next pending step is '
'queued (in its user''s fair place, fair_at), or with p_worker, when it is plainly due (no '
'skip_if) and no other user''s step is waiting ahead of it, leased to that worker for '
'p_lease_seconds (returned: the hand-off); steps whose skip_if holds are skipped on the '
'way; a run with no step left is completed, or when it was compensating, failed (or '
'cancelled) with its compensation outcome. A run with a step in flight is left alone. '
'Service only.';

revoke all on function stepsync.advance_runs(uuid[], text, integer)
from public, anon, authenticated;
grant execute on function stepsync.advance_runs(uuid[], text, integer) to service_role;

create or replace function stepsync.on_step_status_change()
returns trigger
language plpgsql
set enable_seqscan = off
set search_path = ''
as $$
begin
    -- Run counters follow final step statuses (cancelled steps are not counted). The run
    -- row is already locked by whoever moves the step (lock order: run, then steps).
    update public.agent_task_executions as r
    set
        steps_completed = r.steps_completed + (new.status = 'completed')::integer,
        steps_failed = r.steps_failed + (new.status = 'failed')::integer,
        steps_skipped = r.steps_skipped + (new.status = 'skipped')::integer,
        updated_at = now()
    where r.id = new.run_id;
    return null;
end
$$;

comment on function stepsync.on_step_status_change() is
'Trigger: after a step execution reaches a counted final status (completed, failed, '
'skipped), add it to its run''s step counters. Compensations are not counted there.';

revoke all on function stepsync.on_step_status_change() from public;
grant execute on function stepsync.on_step_status_change() to service_role;

create or replace trigger task_step_executions_status_change
after update of status on public.task_step_executions
for each row
when (
    old.status is distinct from new.status
    and new.status in ('completed', 'failed', 'skipped')
    and new.kind = 'step'
)
execute function stepsync.on_step_status_change();

comment on trigger task_step_executions_status_change on public.task_step_executions is
'Keeps the run''s step counters in step with final step statuses.';

-- start_task_run: snapshot a task's steps into a new run and make its first step ready.
--
-- stepsync.open_run makes the run and its snapshot; start_task_run and resume_task_run
-- (0185_resume.sql) both open their runs through it, so a resumed run is checked and
-- snapshotted exactly like a new one.
--
-- What a run is given is held to the limits (0015_limits.sql): trigger data has a size
-- and a depth, the task's agent must be its owner's (as a step override must), and an
-- API caller has a quota of open runs per user and per task (stepsync.settings), so one
-- user cannot queue hundreds of runs ahead of everyone. The service (schedules, events it
-- starts itself) is not held to the quotas.

create or replace function stepsync.step_definitions(p_task_id uuid)
returns table (
    step_id uuid,
    step_order integer,
    step_name text,
    instructions text,
    agent_id uuid,
    include_previous_context boolean,
    context_mode public.step_context_mode,
    context_paths jsonpath[],
    context_template text,
    context_data jsonb,
    skip_if jsonpath,
    on_failure public.step_failure_action,
    max_attempts integer,
    retry_backoff_seconds integer,
    retry_backoff_max_seconds integer,
    timeout_seconds integer,
    max_lost_leases integer,
    compensate_instructions text
)
language sql
stable
set search_path = ''
as $$
    select
        s.id, s.step_order, s.step_name, s.instructions, coalesce(s.agent_id, t.agent_id),
        s.include_previous_context, s.context_mode, s.context_paths, s.context_template,
        s.context_data, s.skip_if, s.on_failure, s.max_attempts, s.retry_backoff_seconds,
        s.retry_backoff_max_seconds, s.timeout_seconds, s.max_lost_leases,
        s.compensate_instructions
    from public.task_steps as s
    inner join public.agent_tasks as t on s.task_id = t.id
    where s.task_id = p_task_id and s.deleted_at is null
    union all
    -- A task without live steps is a one-step workflow made of its instructions.
    select
        null, 1, coalesce(nullif(left(btrim(t.name), 200), ''), 'Step 1'), t.instructions,
        t.agent_id, false, 'previous', '{}', null, '{}'::jsonb, null, 'stop', 1, 5, 600, 300, 3,
        null
    from public.agent_tasks as t
    where t.id = p_task_id
        and not exists (
            select from public.task_steps as s
            where s.task_id = p_task_id and s.deleted_at is null
        )
    order by 2
$$;

comment on function stepsync.step_definitions(uuid) is
'The steps a run of the task would snapshot, in order: its live steps (agent defaulting to '
'the task''s), or for a task without steps one step made of its legacy instructions.';

revoke all on function stepsync.step_definitions(uuid) from public;
grant execute on function stepsync.step_definitions(uuid) to service_role;

create or replace function stepsync.check_run_quota(p_task public.agent_tasks)
returns void
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    per_user integer := stepsync.setting('max_active_runs_per_user');
    per_task integer := stepsync.setting('max_active_runs_per_task');
    open_runs integer;
begin
    -- One start at a time per user (transaction lock: fine behind a transaction pooler),
    -- so two starts cannot both see room for one more run.
    perform pg_catalog.pg_advisory_xact_lock(
        pg_catalog.hashtextextended('stepsync.start_task_run:' || p_task.user_id::text, 0)
    );
    if per_task > 0 then
        -- Among the owner's open runs (agent_task_executions_open_by_user_idx): no task
        -- index of its own on the hot table for it.
        select count(*) into open_runs
        from (
            select from public.agent_task_executions as r
            where
                r.user_id = p_task.user_id
                and r.status in ('pending', 'running')
                and r.cancelled_at is null
                and r.task_id = p_task.id
            limit per_task
        ) as open_run;
        if open_runs >= per_task then
            raise exception 'task % already has % open runs, the most allowed at once',
                p_task.id, open_runs
                using
                    errcode = '53400',
                    hint = 'Wait for a run to finish or cancel one (max_active_runs_per_task).';
        end if;
    end if;
    if per_user > 0 then
        select count(*) into open_runs
        from (
            select from public.agent_task_executions as r
            where
                r.user_id = p_task.user_id
                and r.status in ('pending', 'running')
                and r.cancelled_at is null
            limit per_user
        ) as open_run;
        if open_runs >= per_user then
            raise exception 'the owner of task % already has % open runs, the most allowed '
            'at once', p_task.id, open_runs
                using
                    errcode = '53400',
                    hint = 'Wait for a run to finish or cancel one (max_active_runs_per_user).';
        end if;
    end if;
end
$$;

comment on function stepsync.check_run_quota(public.agent_tasks) is
'Refuses (SQLSTATE 53400) a new run of the task when the task or its owner already has '
'max_active_runs_per_task or max_active_runs_per_user open runs (stepsync.settings; 0 = '
'no limit). Serialised per user with a transaction advisory lock.';

revoke all on function stepsync.check_run_quota(public.agent_tasks) from public;
grant execute on function stepsync.check_run_quota(public.agent_tasks) to service_role;

create or replace function stepsync.open_run(
    p_task public.agent_tasks,
    p_trigger_type text,
    p_trigger_data jsonb,
    p_resumed_from_run_id uuid default null
)
returns uuid
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    task public.agent_tasks := p_task;
    live_steps integer;
    problems jsonb;
    new_run_id uuid;
begin
    -- The task's own agent runs every step without an override: it must be its owner's,
    -- as an override must.
    if not exists (
        select from public.agents as a
        where a.id = task.agent_id and a.user_id = task.user_id
    ) then
        raise exception 'task % runs with agent %, which does not belong to the task''s owner',
            task.id, task.agent_id
            using errcode = '22023',
            hint = 'Give the task one of its owner''s agents (agent_tasks.agent_id).';
    end if;

    if not stepsync.caller_is_service() then
        perform stepsync.check_run_quota(task);
    end if;

    if not stepsync.flag_enabled_for('multi_step_workflows', task.user_id) then
        raise exception 'multi-step workflows are not enabled for the owner of task %', task.id
            using errcode = '55000',
            hint = 'The feature flag multi_step_workflows is off for this user.';
    end if;

    -- Hold the live steps still until the run has its snapshot, so that what was
    -- validated is what runs (an edit committed in between would otherwise slip in).
    perform
    from public.task_steps as s
    where s.task_id = task.id and s.deleted_at is null
    for share;
    get diagnostics live_steps = row_count;

    -- A task without steps runs its legacy instructions as one step; a task with steps
    -- must pass the same validation the editor shows.
    if live_steps > 0 then
        problems := public.validate_task_steps(task.id);
        if jsonb_array_length(problems) > 0 then
            raise exception 'task % has invalid steps: %',
                task.id,
                (
                    select string_agg(
                        coalesce('step ' || (p.problem ->> 'step_order') || ': ', '')
                        || (p.problem ->> 'message'),
                        '; '
                    )
                    from jsonb_array_elements(problems) as p (problem)
                )
                using errcode = '22023',
                detail = problems::text,
                hint = 'Fix the steps (see validate_task_steps) and start the run again.';
        end if;
    elsif coalesce(btrim(task.instructions), '') = '' then
        raise exception 'task % has no steps and no instructions', task.id
            using errcode = '22023';
    end if;

    insert into public.agent_task_executions (
        task_id, agent_id, user_id, status, trigger_type, trigger_data, instructions_used,
        started_at, conversation_id, step_count, metadata, resumed_from_run_id
    )
    values (
        task.id,
        task.agent_id,
        task.user_id,
        'running',
        p_trigger_type,
        coalesce(p_trigger_data, '{}'::jsonb),
        '',
        now(),
        task.conversation_id,
        greatest(live_steps, 1),
        jsonb_build_object(
            'engine', 'stepsync',
            'task_name', left(task.name, stepsync.input_limit('task_name_chars'))
        )
        || case
            when p_resumed_from_run_id is null then '{}'::jsonb
            else jsonb_build_object('resumed_from_run_id', p_resumed_from_run_id)
        end,
        p_resumed_from_run_id
    )
    returning id into new_run_id;

    insert into public.task_step_executions (
        run_id, task_id, user_id, step_id, step_order, step_name, instructions, agent_id,
        include_previous_context, context_mode, context_paths, context_template,
        context_data, skip_if, on_failure, max_attempts, retry_backoff_seconds,
        retry_backoff_max_seconds, timeout_seconds, max_lost_leases, compensate_instructions
    )
    select
        new_run_id, task.id, task.user_id, d.step_id, d.step_order, d.step_name,
        d.instructions, d.agent_id, d.include_previous_context, d.context_mode,
        d.context_paths, d.context_template, d.context_data, d.skip_if, d.on_failure,
        d.max_attempts, d.retry_backoff_seconds, d.retry_backoff_max_seconds,
        d.timeout_seconds, d.max_lost_leases, d.compensate_instructions
    from stepsync.step_definitions(task.id) as d;

    -- What the run was asked to do, in the legacy column the app shows: a summary of at
    -- most one step's instructions in size (the steps' own rows hold them in full).
    update public.agent_task_executions as r
    set instructions_used = (
        select left(
            case
                when count(*) = 1 then min(s.instructions)
                else string_agg(
                    format(E'Step %s: %s\n%s', s.step_order, s.step_name, s.instructions),
                    E'\n\n' order by s.step_order
                )
            end,
            stepsync.input_limit('instructions_bytes')
        )
        from public.task_step_executions as s
        where s.run_id = r.id
    )
    where r.id = new_run_id;
    return new_run_id;
end
$$;

comment on function stepsync.open_run(public.agent_tasks, text, jsonb, uuid) is
'Opens a run of p_task: checks the multi_step_workflows flag and validate_task_steps, '
'inserts the run (linked to p_resumed_from_run_id, if given) and snapshots the live steps '
'(or the legacy instructions as one step), all pending. Moving it on is the caller''s '
'(advance_runs). The caller has checked who may run the task.';

revoke all on function stepsync.open_run(public.agent_tasks, text, jsonb, uuid) from public;
grant execute on function stepsync.open_run(public.agent_tasks, text, jsonb, uuid)
to service_role;

create or replace function stepsync.start_task_run(
    p_task_id uuid,
    p_trigger_type text default 'manual',
    p_trigger_data jsonb default '{}'::jsonb
)
returns uuid
language plpgsql
volatile
security definer
set enable_seqscan = off
set search_path = ''
as $$
declare
    problem text;
    new_run_id uuid;
begin
    if p_trigger_type is null or p_trigger_type not in ('manual', 'scheduled', 'event') then
        raise exception 'trigger type must be manual, scheduled or event, not %',
            coalesce(quote_literal(p_trigger_type), 'null')
            using errcode = '22023';
    end if;
    if p_trigger_data is not null and jsonb_typeof(p_trigger_data) <> 'object' then
        raise exception 'trigger data must be a JSON object, not %', jsonb_typeof(p_trigger_data)
            using errcode = '22023';
    end if;
    problem := stepsync.json_problem(p_trigger_data, stepsync.input_limit('trigger_data_bytes'));
    if problem is not null then
        raise exception 'trigger data %', problem using errcode = '22023';
    end if;

    new_run_id := stepsync.open_run(
        stepsync.authorized_task(p_task_id), p_trigger_type, p_trigger_data
    );
    perform from stepsync.advance_runs(array[new_run_id]);
    return new_run_id;
end
$$;

comment on function stepsync.start_task_run(uuid, text, jsonb) is
'Starts a run of a task for its owner or the service: checks the trigger data''s limits, '
'the task''s agent, the open-run quotas (API callers), the multi_step_workflows flag and '
'validate_task_steps, snapshots the live steps (or the legacy instructions as one step) '
'and makes step 1 ready. Use public.start_task_run.';

revoke all on function stepsync.start_task_run(uuid, text, jsonb) from public;
grant execute on function stepsync.start_task_run(uuid, text, jsonb)
to authenticated, service_role;

create or replace function public.start_task_run(
    p_task_id uuid,
    p_trigger_type text default 'manual',
    p_trigger_data jsonb default '{}'::jsonb
)
returns uuid
language sql
volatile
security invoker
set search_path = ''
as $$
    select stepsync.start_task_run(p_task_id, p_trigger_type, p_trigger_data)
$$;

comment on function public.start_task_run(uuid, text, jsonb) is
'Starts a run of the task and returns its id (agent_task_executions.id). For the task''s '
'owner and the service. Refuses when the multi_step_workflows flag is off for the owner, '
'the steps are invalid (the error names the problems), the trigger data breaks its limits, '
'the task''s agent is not its owner''s, or the owner already has as many open runs as the '
'quotas allow (SQLSTATE 53400).';

revoke all on function public.start_task_run(uuid, text, jsonb) from public, anon;
grant execute on function public.start_task_run(uuid, text, jsonb)
to authenticated, service_role;

-- Leasing steps to workers and holding the leases (service only).
--
-- A lease (owner, expiry) comes with a new fencing token from stepsync.lease_token_seq.
-- Completing and failing a step only act with the current token, so a worker whose lease
-- expired and was re-claimed cannot overwrite the newer attempt.
--
-- stepsync.lease_steps is the one place a step is taken: running, one more attempt, the
-- lease and a new token, and the input context built from the run (through the views of
-- 0130_run_context.sql, keyed by the step's run). A worker gets a step two ways:
-- claim_steps picks due queued steps with FOR UPDATE SKIP LOCKED and leases them;
-- advance_runs, called by complete_steps, leases a run's next step to the worker that
-- completed the one before, without queueing it first. All three return the one record
-- type of a leased step, stepsync.leased_step.
--
-- One step never fails a lease of several: a step whose context cannot be built
-- (stepsync.run_step_input says why) fails alone, for good, with that reason, and the others
-- are leased. The claim takes due steps in their fair order (fair_at: each user's queued
-- steps spaced apart), so a user with many queued steps takes turns with the others.

create or replace function stepsync.lease_steps(
    p_step_execution_ids uuid[],
    p_worker text,
    p_lease_seconds integer
)
returns setof stepsync.leased_step
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    leased_steps stepsync.leased_step[];
    broken_ids uuid[];
    broken record;
begin
    if coalesce(btrim(p_worker), '') = '' then
        raise exception 'worker name must not be blank' using errcode = '22023';
    end if;
    if p_lease_seconds is null or p_lease_seconds not between 1 and 86400 then
        raise exception 'lease must be between 1 and 86400 seconds, not %', p_lease_seconds
            using errcode = '22023';
    end if;

    -- The caller holds the steps: row locks from its claim, or the run lock under which
    -- a pending step cannot change. Only waiting steps (pending, queued) are leased. The
    -- context a step sees is read from its own run's rows (run_step_input: the head by
    -- the run's key, the earlier steps by (run_id, step_order)), inside a guard that
    -- turns any failure of that step's build into its own failure.
    with leased as (
        update public.task_step_executions as s
        set
            status = 'running',
            attempt = s.attempt + 1,
            lease_owner = p_worker,
            lease_expires_at = now() + make_interval(secs => p_lease_seconds),
            lease_token = nextval('stepsync.lease_token_seq'),
            run_after = coalesce(s.run_after, now()),
            queued_at = coalesce(s.queued_at, now()),
            started_at = now(),
            input_context = stepsync.run_step_input(
                s.run_id,
                s.step_order,
                s.include_previous_context,
                s.context_mode,
                s.context_paths,
                s.context_template,
                s.context_data
            ),
            updated_at = now()
        where s.id = any(p_step_execution_ids) and s.status in ('pending', 'queued')
        returning s.*
    )

    select
        array_agg(
            row(
                l.id,
                l.run_id,
                l.lease_token,
                l.task_id,
                l.user_id,
                l.agent_id,
                l.step_order,
                l.step_name,
                l.instructions,
                l.input_context,
                l.attempt,
                l.timeout_seconds,
                l.idempotency_key,
                run.conversation_id,
                run.trigger_data
            )::stepsync.leased_step
            order by l.fair_at, l.id
        ) filter (where not l.input_context ? 'context_error'),
        array_agg(l.id) filter (where l.input_context ? 'context_error')
    into leased_steps, broken_ids
    from leased as l
    cross join lateral (
        select r.conversation_id, r.trigger_data
        from public.agent_task_executions as r
        where r.id = l.run_id
        limit 1
    ) as run;

    return query select * from unnest(leased_steps);

    -- The steps whose context could not be built fail, alone and for good (building it
    -- again would fail again). Failing one moves its run on, which locks the run: the
    -- hand-off holds it already, a claim (which holds only the step) takes it only if it
    -- is free, and otherwise hands the step back to be taken again shortly, so that it
    -- never waits on a lock in the wrong order (run, then step).
    if broken_ids is null then
        return;
    end if;
    for broken in
        select s.id, s.lease_token, s.run_id, s.input_context ->> 'context_error' as reason
        from public.task_step_executions as s
        where s.id = any(broken_ids)
    loop
        perform from public.agent_task_executions as r
        where r.id = broken.run_id
        for no key update skip locked;
        if found then
            perform stepsync.record_step_failure(
                broken.id,
                broken.lease_token,
                format('the step''s input context could not be built: %s', broken.reason),
                false,
                false
            );
        else
            update public.task_step_executions as s
            set
                status = 'queued',
                attempt = greatest(s.attempt - 1, 0),
                run_after = now() + interval '1 second',
                fair_at = coalesce(s.fair_at, now()),
                lease_owner = null,
                lease_expires_at = null,
                input_context = null,
                updated_at = now()
            where s.id = broken.id;
        end if;
    end loop;
end
$$;

comment on function stepsync.lease_steps(uuid[], text, integer) is
'Leases the given waiting steps (pending or queued) to p_worker for p_lease_seconds: '
'running, attempt + 1, a new fencing token, the input context built and stored. A step '
'whose context cannot be built fails instead (its error says why) and is not returned. '
'The caller must hold the steps (row locks or the run lock). Service only.';

revoke all on function stepsync.lease_steps(uuid[], text, integer)
from public, anon, authenticated;
grant execute on function stepsync.lease_steps(uuid[], text, integer) to service_role;

create or replace function stepsync.claim_steps(
    p_worker text,
    p_batch integer,
    p_lease_seconds integer
)
returns setof stepsync.leased_step
language plpgsql
volatile
-- Only the claim index's ordered walk is left to the planner: no sequential scan, no
-- bitmap scan that would read and sort every due step.
set enable_seqscan = off
set enable_bitmapscan = off
set search_path = ''
as $$
declare
    picked uuid[];
begin
    -- lease_steps checks the worker and the lease.
    if p_batch is null or p_batch not between 1 and 1000 then
        raise exception 'batch size must be between 1 and 1000, not %', p_batch
            using errcode = '22023';
    end if;

    -- Due queued steps in their fair order (fair_at, id), skipping rows another worker
    -- holds and steps not yet due (a retry's backoff; its fair_at is never before its
    -- run_after, so few are passed over). A run stops having queued steps when it ends;
    -- the run's status is still checked, by key, for each step taken.
    select array_agg(due.id) into picked
    from (
        select s.id
        from public.task_step_executions as s
        where
            s.status = 'queued'
            and s.run_after <= now()
            and (
                select r.status from public.agent_task_executions as r where r.id = s.run_id
            ) = 'running'
        order by s.fair_at, s.id
        limit p_batch
        for update skip locked
    ) as due;

    return query
    select * from stepsync.lease_steps(picked, p_worker, p_lease_seconds);
end
$$;

comment on function stepsync.claim_steps(text, integer, integer) is
'Claims up to p_batch due queued steps of running runs for worker p_worker in their fair '
'order (fair_at; FOR UPDATE SKIP LOCKED): leases them for p_lease_seconds with a new '
'fencing token, counts an attempt and stores the built context in input_context; a step '
'whose context cannot be built fails instead. Service only.';

revoke all on function stepsync.claim_steps(text, integer, integer)
from public, anon, authenticated;
grant execute on function stepsync.claim_steps(text, integer, integer) to service_role;

create or replace function stepsync.lease_keys(p_step_execution_ids uuid[], p_lease_tokens bigint[])
returns text[]
language sql
immutable
set search_path = ''
as $$
    select array(
        select held.id::text || ':' || held.token::text
        from unnest(p_step_execution_ids, p_lease_tokens) with ordinality as held (id, token, position)
        order by held.position
    )
$$;

comment on function stepsync.lease_keys(uuid[], bigint[]) is
'The leases given as parallel arrays of step ids and tokens, as one array of '
'''<id>:<token>'' keys in the same order. Functions that take leases in bulk compare '
'each step row''s own key with it: a filter on the rows found by id, never a join that '
'a plan made on small tables could turn into a scan of all steps.';

revoke all on function stepsync.lease_keys(uuid[], bigint[]) from public, anon, authenticated;
grant execute on function stepsync.lease_keys(uuid[], bigint[]) to service_role;

create or replace function stepsync.heartbeat_steps(
    p_worker text,
    p_step_execution_ids uuid[],
    p_lease_tokens bigint[],
    p_lease_seconds integer
)
returns setof uuid
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    held text[] := stepsync.lease_keys(p_step_execution_ids, p_lease_tokens);
begin
    if cardinality(p_step_execution_ids) is distinct from cardinality(p_lease_tokens) then
        raise exception 'step ids and lease tokens must be arrays of the same length'
            using errcode = '22023';
    end if;
    if p_lease_seconds is null or p_lease_seconds not between 1 and 86400 then
        raise exception 'lease must be between 1 and 86400 seconds, not %', p_lease_seconds
            using errcode = '22023';
    end if;

    return query
    update public.task_step_executions as s
    set
        lease_expires_at = now() + make_interval(secs => p_lease_seconds),
        updated_at = now()
    where
        s.id = any(p_step_execution_ids)
        and s.id::text || ':' || s.lease_token::text = any(held)
        and s.lease_owner = p_worker
        and s.status = 'running'
    returning s.id;
end
$$;

comment on function stepsync.heartbeat_steps(text, uuid[], bigint[], integer) is
'Extends the leases p_worker still holds (matching id and token, still running) by '
'p_lease_seconds from now; returns the ids whose lease is still held. Service only.';

revoke all on function stepsync.heartbeat_steps(text, uuid[], bigint[], integer)
from public, anon, authenticated;
grant execute on function stepsync.heartbeat_steps(text, uuid[], bigint[], integer)
to service_role;

create or replace function stepsync.release_steps(
    p_worker text,
    p_step_execution_ids uuid[],
    p_lease_tokens bigint[]
)
returns integer
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    held text[] := stepsync.lease_keys(p_step_execution_ids, p_lease_tokens);
    released integer;
begin
    if cardinality(p_step_execution_ids) is distinct from cardinality(p_lease_tokens) then
        raise exception 'step ids and lease tokens must be arrays of the same length'
            using errcode = '22023';
    end if;

    -- Handing a step back is not a failed attempt: the attempt is given back too.
    update public.task_step_executions as s
    set
        status = 'queued',
        attempt = greatest(s.attempt - 1, 0),
        run_after = now(),
        fair_at = coalesce(s.fair_at, now()),
        queued_at = now(),
        lease_owner = null,
        lease_expires_at = null,
        updated_at = now()
    where
        s.id = any(p_step_execution_ids)
        and s.id::text || ':' || s.lease_token::text = any(held)
        and s.lease_owner = p_worker
        and s.status = 'running';
    get diagnostics released = row_count;
    return released;
end
$$;

comment on function stepsync.release_steps(text, uuid[], bigint[]) is
'Graceful shutdown: hands the given running steps of p_worker back to the queue, due now, '
'without using up an attempt. Returns how many were released. Service only.';

revoke all on function stepsync.release_steps(text, uuid[], bigint[])
from public, anon, authenticated;
grant execute on function stepsync.release_steps(text, uuid[], bigint[]) to service_role;

create or replace function stepsync.queue_depth()
returns bigint
language sql
stable
set search_path = ''
as $$
    select count(*)
    from public.task_step_executions as s
    inner join public.agent_task_executions as r on s.run_id = r.id
    where s.status = 'queued' and s.run_after <= now() and r.status = 'running'
$$;

comment on function stepsync.queue_depth() is
'Number of steps queued and due (what claim_steps could take now). Service only.';

revoke all on function stepsync.queue_depth() from public, anon, authenticated;
grant execute on function stepsync.queue_depth() to service_role;

-- Completing and failing a step attempt (service only), fenced by the lease token.
--
-- Both lock the run row before the step row (the lock order of every run transition),
-- and both move the run on in the same transaction: the next step is queued or handed
-- off, or the run completes or fails.
--
-- A worker running many steps at once finishes several of them within a millisecond or
-- two. complete_steps records all of them in one transaction: one round trip and one
-- commit instead of one each, and one set-based UPDATE of the step rows. Each step is
-- still fenced by its own lease token, and each run still moves on in the same
-- transaction that completes its step. complete_step is complete_steps for one step, so
-- both follow one code path.
--
-- An output over the limits (output_bytes, json_levels: 0015_limits.sql) is not recorded:
-- its step fails for good with the reason, alone, and the rest of the batch completes.
--
-- Hand-off: the worker that completed step N has a free slot and is the one most likely
-- to want step N + 1. With p_worker given, a next step that is plainly due (pending, no
-- skip_if) is leased to that worker at once (advance_runs) instead of being queued,
-- announced and claimed: one step update fewer, no notification, no claim round trip,
-- and the step starts as soon as the completion commits.

create or replace function stepsync.complete_steps(
    p_step_execution_ids uuid[],
    p_lease_tokens bigint[],
    p_outputs jsonb[],
    p_worker text default null,
    p_lease_seconds integer default null
)
returns table (
    step_execution_id uuid,
    completed boolean,
    next_step stepsync.leased_step,
    refused text
)
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    held text[] := stepsync.lease_keys(p_step_execution_ids, p_lease_tokens);
    completed_keys text[];
    completed_runs uuid[];
    handed_off stepsync.leased_step[];
    refused_positions integer[];
    refused_reasons text[];
    refused_keys text[];
    failed_positions integer[] := '{}';
    i integer;
begin
    if cardinality(p_step_execution_ids) is distinct from cardinality(p_lease_tokens)
        or cardinality(p_step_execution_ids) is distinct from cardinality(p_outputs) then
        raise exception 'step ids, lease tokens and outputs must be arrays of the same length'
            using errcode = '22023';
    end if;

    -- Outputs the limits refuse, by their position in the arrays.
    select array_agg(checked.position), array_agg(checked.problem)
    into refused_positions, refused_reasons
    from (
        select
            given.position::integer as position,
            stepsync.json_problem(given.output, stepsync.input_limit('output_bytes')) as problem
        from unnest(p_outputs) with ordinality as given (output, position)
    ) as checked
    where checked.problem is not null;
    refused_keys := array(
        select held[refused.position] from unnest(refused_positions) as refused (position)
    );

    -- Lock order: the runs first (in id order, so that two batches sharing runs wait
    -- instead of deadlocking), then their steps. Stale tokens take no lock. A step's
    -- output is at the position of its lease in the arrays.
    perform from public.agent_task_executions as r
    where r.id = any(array(
        select s.run_id
        from public.task_step_executions as s
        where
            s.id = any(p_step_execution_ids)
            and s.status = 'running'
            and s.id::text || ':' || s.lease_token::text = any(held)
    ))
    order by r.id
    for no key update;

    with done as (
        update public.task_step_executions as s
        set
            status = 'completed',
            output = coalesce(
                p_outputs[array_position(held, s.id::text || ':' || s.lease_token::text)],
                'null'::jsonb
            ),
            error_message = null,
            completed_at = now(),
            duration_ms = (extract(epoch from now() - s.started_at) * 1000)::integer,
            lease_owner = null,
            lease_expires_at = null,
            updated_at = now()
        where
            s.id = any(p_step_execution_ids)
            and s.status = 'running'
            and s.id::text || ':' || s.lease_token::text = any(held)
            and s.id::text || ':' || s.lease_token::text <> all(refused_keys)
        returning s.id::text || ':' || s.lease_token::text as lease_key, s.run_id
    )

    select array_agg(done.lease_key), array_agg(distinct done.run_id)
    into completed_keys, completed_runs
    from done;

    -- Each refused output fails its step (its run is locked already): not retried, the
    -- same output would be refused again.
    for i in 1 .. coalesce(cardinality(refused_positions), 0) loop
        if stepsync.record_step_failure(
            p_step_execution_ids[refused_positions[i]],
            p_lease_tokens[refused_positions[i]],
            format('output refused: it %s', refused_reasons[i]),
            false,
            false
        ) = 'failed' then
            failed_positions := failed_positions || refused_positions[i];
        end if;
    end loop;

    -- As statements of their own, after the UPDATE, so that they see the completed steps.
    select array_agg(handed) into handed_off
    from stepsync.advance_runs(completed_runs, p_worker, p_lease_seconds) as handed;

    return query
    select
        given.id,
        given.completed,
        (
            select handed
            from unnest(handed_off) as handed
            where
                given.completed
                and handed.run_id = (
                    select s.run_id from public.task_step_executions as s where s.id = given.id
                )
            limit 1
        ),
        case
            when given.position = any(failed_positions)
                then refused_reasons[array_position(refused_positions, given.position)]
        end
    from (
        select
            step.id,
            step.position::integer as position,
            held[step.position] = any(coalesce(completed_keys, '{}')) as completed
        from unnest(p_step_execution_ids) with ordinality as step (id, position)
    ) as given
    order by given.position;
end
$$;

comment on function stepsync.complete_steps(uuid[], bigint[], jsonb[], text, integer) is
'Completes the given running steps (each at most once), each with its output if its lease '
'token is current, and moves each affected run on in the same transaction (advance_runs). '
'With p_worker, a run''s next step is leased to p_worker for p_lease_seconds instead of '
'queued. One row per given step, in the given order: completed = false means a stale token '
'or a step no longer running (nothing changed for it), unless refused says why its output '
'broke the limits (the step failed instead); next_step is the step handed off, or null. '
'Service only.';

revoke all on function stepsync.complete_steps(uuid[], bigint[], jsonb[], text, integer)
from public, anon, authenticated;
grant execute on function stepsync.complete_steps(uuid[], bigint[], jsonb[], text, integer)
to service_role;

create or replace function stepsync.complete_step(
    p_step_execution_id uuid,
    p_lease_token bigint,
    p_output jsonb
)
returns boolean
language sql
volatile
set search_path = ''
as $$
    select c.completed
    from stepsync.complete_steps(
        array[p_step_execution_id], array[p_lease_token], array[p_output]
    ) as c
$$;

comment on function stepsync.complete_step(uuid, bigint, jsonb) is
'Completes a running step with p_output if p_lease_token is its current fencing token, and '
'queues the next step or completes the run in the same transaction. false = stale token '
'(or the step is no longer running): nothing changed. Service only; complete_steps for '
'several at once.';

revoke all on function stepsync.complete_step(uuid, bigint, jsonb)
from public, anon, authenticated;
grant execute on function stepsync.complete_step(uuid, bigint, jsonb) to service_role;

create or replace function stepsync.record_step_failure(
    p_step_execution_id uuid,
    p_lease_token bigint,
    p_error text,
    p_retryable boolean,
    p_lease_expired boolean
)
returns text
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    step public.task_step_executions;
    delay_seconds double precision;
    reason text := left(
        coalesce(nullif(btrim(p_error), ''), 'step failed'), stepsync.input_limit('error_chars')
    );
begin
    select s.* into step
    from public.task_step_executions as s
    where
        s.id = p_step_execution_id
        and s.status = 'running'
        and s.lease_token = p_lease_token;
    if not found then
        return 'stale';
    end if;
    perform from public.agent_task_executions as r
    where r.id = step.run_id
    for no key update;

    select s.* into step
    from public.task_step_executions as s
    where
        s.id = p_step_execution_id
        and s.status = 'running'
        and s.lease_token = p_lease_token
        and (not p_lease_expired or s.lease_expires_at < now())
    for update;
    if not found then
        return 'stale';
    end if;

    -- A lease that lapsed without a result is not the step's failure: its worker died or
    -- lost the database. The attempt is given back and the step is due again at once, up
    -- to max_lost_leases times; a step that keeps killing its workers then fails.
    if p_lease_expired and step.lost_leases < step.max_lost_leases then
        update public.task_step_executions as s
        set
            status = 'queued',
            attempt = greatest(s.attempt - 1, 0),
            lost_leases = s.lost_leases + 1,
            run_after = now(),
            fair_at = coalesce(s.fair_at, now()),
            queued_at = now(),
            error_message = reason,
            last_error_at = now(),
            lease_owner = null,
            lease_expires_at = null,
            updated_at = now()
        where s.id = step.id;
        return 'retrying';
    elsif p_lease_expired then
        reason := format(
            'lease lost %s times, more than max_lost_leases (%s) allows: the worker running '
            'the step stopped or lost the database each time (last: %s)',
            step.lost_leases + 1, step.max_lost_leases, reason
        );
    elsif p_retryable and step.attempt < step.max_attempts then
        -- Exponential backoff with up to 20 % added jitter, so that steps failing
        -- together do not retry together.
        delay_seconds := least(
            step.retry_backoff_max_seconds,
            step.retry_backoff_seconds * power(2, step.attempt - 1)
        ) * (1 + 0.2 * random());
        -- A retry goes to the back of its user's queue, and never before it is due.
        update public.task_step_executions as s
        set
            status = 'queued',
            run_after = now() + make_interval(secs => delay_seconds),
            fair_at = greatest(
                now() + make_interval(secs => delay_seconds),
                (
                    select last_queued.fair_at + make_interval(
                        secs => stepsync.setting('user_step_spacing_ms') / 1000.0
                    )
                    from public.task_step_executions as last_queued
                    where last_queued.user_id = s.user_id and last_queued.status = 'queued'
                    order by last_queued.fair_at desc
                    limit 1
                )
            ),
            queued_at = now(),
            error_message = reason,
            last_error_at = now(),
            lease_owner = null,
            lease_expires_at = null,
            updated_at = now()
        where s.id = step.id;
        return 'retrying';
    end if;

    update public.task_step_executions as s
    set
        status = 'failed',
        lost_leases = s.lost_leases + p_lease_expired::integer,
        error_message = reason,
        last_error_at = now(),
        completed_at = now(),
        duration_ms = (extract(epoch from now() - s.started_at) * 1000)::integer,
        lease_owner = null,
        lease_expires_at = null,
        updated_at = now()
    where s.id = step.id;

    -- A compensation always says continue: one failing does not keep the others from
    -- running.
    if step.on_failure = 'continue' then
        perform from stepsync.advance_runs(array[step.run_id]);
    else
        update public.task_step_executions as s
        set
            status = 'skipped',
            skip_reason = format('run stopped: step %s failed', step.step_order),
            completed_at = now(),
            updated_at = now()
        where s.run_id = step.run_id and s.status in ('pending', 'queued');
        reason := format('step %s (%s) failed: %s', step.step_order, step.step_name, reason);
        -- Completed steps with compensate_instructions are undone first; the run ends
        -- failed once they are over (advance_runs).
        if stepsync.start_compensation(step.run_id, reason) > 0 then
            perform from stepsync.advance_runs(array[step.run_id]);
        else
            perform stepsync.finish_runs(array[step.run_id], 'failed', reason);
        end if;
    end if;
    return 'failed';
end
$$;

comment on function stepsync.record_step_failure(uuid, bigint, text, boolean, boolean) is
'Shared by fail_step and reap_expired_leases. A lost lease (p_lease_expired: the worker '
'died, not the step) queues the step again at once and gives its attempt back, up to '
'max_lost_leases times. A failed attempt with attempts left (and p_retryable) is queued '
'again after its backoff. Otherwise the step fails and its on_failure decides: stop '
'(remaining steps skipped; the completed steps'' compensations run, then the run fails) '
'or continue.';

revoke all on function stepsync.record_step_failure(uuid, bigint, text, boolean, boolean)
from public, anon, authenticated;
grant execute on function stepsync.record_step_failure(uuid, bigint, text, boolean, boolean)
to service_role;

create or replace function stepsync.fail_step(
    p_step_execution_id uuid,
    p_lease_token bigint,
    p_error text,
    p_retryable boolean default true
)
returns text
language sql
volatile
set search_path = ''
as $$
    select stepsync.record_step_failure(
        p_step_execution_id, p_lease_token, p_error, coalesce(p_retryable, true), false
    )
$$;

comment on function stepsync.fail_step(uuid, bigint, text, boolean) is
'Records a failed attempt if p_lease_token is current: ''retrying'' (queued again after '
'least(max, base * 2^(attempt-1)) seconds plus up to 20 % jitter), ''failed'' (no attempts '
'left or not retryable; on_failure applied) or ''stale'' (nothing changed). Service only.';

revoke all on function stepsync.fail_step(uuid, bigint, text, boolean)
from public, anon, authenticated;
grant execute on function stepsync.fail_step(uuid, bigint, text, boolean) to service_role;

-- Compensation: undoing what a stopped run's completed steps did.
--
-- A step may carry compensate_instructions (snapshotted into its run like the rest of its
-- definition). When a run stops (a step fails for good with on_failure = stop, or a
-- cancel asks for it), every completed step of the run that has some gets a compensation:
-- a row of its own in task_step_executions (kind = compensation), placed after the
-- steps, the most recent step first. They are ordinary step executions to the engine:
-- queued, claimed, leased, retried and timed out with the settings of the step they undo,
-- one at a time through advance_runs, so nothing on the hot path needs to know about
-- them. A compensation says `continue`, so one failing does not keep the others from
-- running. The run stays running meanwhile, with compensation = running and its
-- error_message saying why it stopped; when the last compensation is over, advance_runs
-- ends it failed (or cancelled) with compensation = completed or failed.
--
-- A compensation's input is the run context in `full` mode (every earlier step, with
-- outputs and errors), and in its context_data under "compensation": the step it undoes
-- (order, name, output) and why the run stopped.

create or replace function stepsync.start_compensation(p_run_id uuid, p_reason text)
returns integer
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    added integer;
begin
    -- The caller holds the run row (lock order: run, then steps). The run's rows are
    -- read by (run_id, step_order).
    insert into public.task_step_executions (
        run_id, task_id, user_id, step_id, kind, step_order, compensates_step_order,
        step_name, instructions, agent_id, include_previous_context, context_mode,
        context_data, on_failure, max_attempts, max_lost_leases, retry_backoff_seconds,
        retry_backoff_max_seconds, timeout_seconds
    )
    select
        s.run_id,
        s.task_id,
        s.user_id,
        s.step_id,
        'compensation',
        last_row.step_order + row_number() over (order by s.step_order desc),
        s.step_order,
        format('Compensate: %s', s.step_name),
        s.compensate_instructions,
        s.agent_id,
        true,
        'full',
        s.context_data || jsonb_build_object(
            'compensation', jsonb_build_object(
                'step', jsonb_build_object(
                    'order', s.step_order,
                    'name', s.step_name,
                    'output', stepsync.truncate_json(s.output, 16384)
                ),
                'reason', p_reason
            )
        ),
        'continue',
        s.max_attempts,
        s.max_lost_leases,
        s.retry_backoff_seconds,
        s.retry_backoff_max_seconds,
        s.timeout_seconds
    from public.task_step_executions as s
    cross join lateral (
        select l.step_order from public.task_step_executions as l
        where l.run_id = p_run_id
        order by l.step_order desc
        limit 1
    ) as last_row
    where
        s.run_id = p_run_id
        and s.kind = 'step'
        and s.status = 'completed'
        and s.compensate_instructions is not null;
    get diagnostics added = row_count;

    if added > 0 then
        update public.agent_task_executions as r
        set
            compensation = 'running',
            error_message = p_reason,
            updated_at = now()
        where r.id = p_run_id;
    end if;
    return added;
end
$$;

comment on function stepsync.start_compensation(uuid, text) is
'For a run that stopped (p_reason: why): adds a pending compensation after the steps for '
'each completed step with compensate_instructions, newest step first, and marks the run '
'compensating. Returns how many; 0 leaves the run alone. The caller holds the run row and '
'moves the run on (advance_runs). Service only.';

revoke all on function stepsync.start_compensation(uuid, text) from public, anon, authenticated;
grant execute on function stepsync.start_compensation(uuid, text) to service_role;

-- Cancelling a run (owner or service) and reaping expired leases (service).

-- One signature each, with p_compensate defaulted: a second overload beside the
-- one-argument form would make PostgREST's call with p_run_id alone ambiguous.
create or replace function stepsync.cancel_task_run(
    p_run_id uuid, p_compensate boolean default false
)
returns boolean
language plpgsql
volatile
security definer
set enable_seqscan = off
set search_path = ''
as $$
declare
    run public.agent_task_executions;
begin
    -- Ownership first, then the lock: waiting on another user's run would tell that the
    -- id exists.
    select r.* into run
    from public.agent_task_executions as r
    where r.id = p_run_id;
    if not found
        or (not stepsync.caller_is_service() and run.user_id is distinct from auth.uid()) then
        raise exception 'run % not found', p_run_id
            using errcode = 'P0002',
            hint = 'Check the run id; only the run''s owner and the service may cancel it.';
    end if;
    select r.* into run
    from public.agent_task_executions as r
    where r.id = p_run_id
    for no key update;
    if run.status not in ('pending', 'running') then
        return false;
    end if;
    -- Asking again for the compensation under way changes nothing; a plain cancel
    -- stops it.
    if coalesce(p_compensate, false) and run.compensation = 'running' then
        return false;
    end if;

    -- A running step is cancelled too: its worker's late complete or fail no longer
    -- matches a running step and is rejected.
    update public.task_step_executions as s
    set
        status = 'cancelled',
        lease_owner = null,
        lease_expires_at = null,
        completed_at = now(),
        updated_at = now()
    where s.run_id = p_run_id and s.status in ('pending', 'queued', 'running');

    -- Compensations asked for run before the run ends cancelled (advance_runs); the run
    -- stays running meanwhile, and its cancellation is announced at once (0200_notify.sql)
    -- so that the step that was running stops.
    if coalesce(p_compensate, false)
        and stepsync.start_compensation(p_run_id, 'run cancelled') > 0 then
        update public.agent_task_executions as r
        set cancelled_at = now(), cancelled_by = auth.uid()
        where r.id = p_run_id;
        perform from stepsync.advance_runs(array[p_run_id]);
        return true;
    end if;
    update public.agent_task_executions as r
    set
        cancelled_at = now(),
        cancelled_by = auth.uid(),
        compensation = case
            when r.compensation = 'running' then 'cancelled'
            else r.compensation
        end
    where r.id = p_run_id;
    perform stepsync.finish_run(p_run_id, 'cancelled', 'cancelled');
    return true;
end
$$;

comment on function stepsync.cancel_task_run(uuid, boolean) is
'Cancels a pending or running run and its unfinished steps, for the run''s owner or the '
'service; with p_compensate, the completed steps'' compensations run first. Use '
'public.cancel_task_run.';

revoke all on function stepsync.cancel_task_run(uuid, boolean) from public;
grant execute on function stepsync.cancel_task_run(uuid, boolean) to authenticated, service_role;

create or replace function public.cancel_task_run(
    p_run_id uuid, p_compensate boolean default false
)
returns boolean
language sql
volatile
security invoker
set search_path = ''
as $$
    select stepsync.cancel_task_run(p_run_id, p_compensate)
$$;

comment on function public.cancel_task_run(uuid, boolean) is
'Cancels the run: true if it was pending or running, false if it had already ended. For '
'the run''s owner and the service; a worker''s later complete of a cancelled step is '
'rejected. With p_compensate, the completed steps that have compensate_instructions are '
'undone first (newest first): the run stays running until they are over, then ends '
'cancelled with its compensation outcome; false if its compensation was already under '
'way.';

revoke all on function public.cancel_task_run(uuid, boolean) from public, anon;
grant execute on function public.cancel_task_run(uuid, boolean) to authenticated, service_role;

create or replace function stepsync.reap_expired_leases(p_grace_seconds integer default 0)
returns integer
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    expired record;
    reaped integer := 0;
begin
    -- After the database restarts, every lease ran out while no worker could renew it.
    -- Their owners get p_grace_seconds to reconnect and report (a late result of the lease
    -- owner is accepted while the step has not been taken over) before any is reaped.
    if now() < pg_catalog.pg_postmaster_start_time() + make_interval(secs => p_grace_seconds)
        then
        return 0;
    end if;

    -- Each expired lease is a lost lease (record_step_failure): the step is due again at
    -- once without using an attempt, or fails once it lost too many. A lease renewed or
    -- re-claimed meanwhile no longer matches its token and is left alone.
    for expired in
        select s.id, s.lease_token, s.lease_owner
        from public.task_step_executions as s
        where s.status = 'running' and s.lease_expires_at < now()
        order by s.lease_expires_at
    loop
        if stepsync.record_step_failure(
            expired.id,
            expired.lease_token,
            format('lease of worker %s expired', expired.lease_owner),
            true,
            true
        ) <> 'stale' then
            reaped := reaped + 1;
        end if;
    end loop;
    return reaped;
end
$$;

comment on function stepsync.reap_expired_leases(integer) is
'Steps whose lease expired go back to the queue (due now) without using an attempt, up to '
'their max_lost_leases, else fail per on_failure. Nothing is reaped within p_grace_seconds '
'of the database''s start, so that owners can report what finished during the outage. '
'Returns how many were reaped. Service only.';

revoke all on function stepsync.reap_expired_leases(integer) from public, anon, authenticated;
grant execute on function stepsync.reap_expired_leases(integer) to service_role;

-- Resuming a finished run: a new run of the same task that does not execute again the
-- steps whose recorded outcomes it can reuse.
--
-- The new run is opened like any other (stepsync.open_run: flag, validation, a snapshot
-- of the current live definition, edited instructions included) with the old run's
-- trigger, and linked to it (resumed_from_run_id). Its steps before p_from_step then take
-- the old run's recorded outcomes (status, output, timings, input context), marked with
-- reused_from, before advance_runs moves the run on: to the steps after them, the run
-- context is exactly the one a fresh run with the same results would build, and the
-- step at p_from_step and every later one run with the current definition.
--
-- A step's outcome can be reused when it completed, or was skipped by its skip_if, and
-- was not compensated (its effects were undone). p_from_step defaults to the first step
-- that cannot, and may not go past it. Reusing outcomes only makes sense when the steps
-- before p_from_step are still the same steps in the same places: when one was removed,
-- replaced or moved, the resume is refused unless p_start_over asks for a run of every
-- step from the first (still linked to the old run).

create or replace function stepsync.resume_task_run(
    p_run_id uuid,
    p_from_step integer default null,
    p_start_over boolean default false
)
returns uuid
language plpgsql
volatile
security definer
set enable_seqscan = off
set search_path = ''
as $$
declare
    old_run public.agent_task_executions;
    first_open integer;
    first_open_status text;
    from_step integer;
    new_run_id uuid;
    new_step_count integer;
    moved text;
begin
    select r.* into old_run from public.agent_task_executions as r where r.id = p_run_id;
    if not found
        or (not stepsync.caller_is_service() and old_run.user_id is distinct from auth.uid()) then
        raise exception 'run % not found', p_run_id
            using errcode = 'P0002',
            hint = 'Check the run id; only the run''s owner and the service may resume it.';
    end if;
    if old_run.status in ('pending', 'running') then
        raise exception 'run % is still %: only a run that has ended can be resumed',
            p_run_id, old_run.status
            using errcode = '55000',
            hint = 'Wait for it to end, or cancel it first (cancel_task_run).';
    end if;
    if coalesce(p_start_over, false) and coalesce(p_from_step, 1) <> 1 then
        raise exception 'p_from_step: starting over runs every step from step 1, not from %',
            p_from_step
            using errcode = '22023';
    end if;

    -- The first step whose outcome cannot be reused (none: one past the last step), and
    -- what became of it. A step skipped because the run stopped has no outcome.
    select
        s.step_order,
        case
            when compensated.found then 'was compensated'
            when s.status = 'skipped' then 'was skipped when the run stopped'
            when s.status = 'failed' then 'failed'
            when s.status = 'cancelled' then 'was cancelled'
            else 'did not run'
        end
    into first_open, first_open_status
    from public.task_step_executions as s
    cross join lateral (
        select exists (
            select from public.task_step_executions as c
            where
                c.run_id = s.run_id
                and c.kind = 'compensation'
                and c.compensates_step_order = s.step_order
        ) as found
    ) as compensated
    where
        s.run_id = old_run.id
        and s.kind = 'step'
        and (
            compensated.found
            or s.status not in ('completed', 'skipped')
            or (
                s.status = 'skipped'
                and coalesce(s.skip_reason, '') not like 'skip\_if matched%'
            )
        )
    order by s.step_order
    limit 1;
    if not found then
        first_open := 1 + coalesce(
            (
                select max(s.step_order) from public.task_step_executions as s
                where s.run_id = old_run.id and s.kind = 'step'
            ),
            0
        );
    end if;

    from_step := case
        when coalesce(p_start_over, false) then 1
        else coalesce(p_from_step, first_open)
    end;
    if from_step < 1 then
        raise exception 'p_from_step: % is not a step number (steps count from 1)', from_step
            using errcode = '22023';
    end if;
    if from_step > first_open and first_open_status is not null then
        raise exception 'p_from_step: step % of run % %, so there is no outcome of it to reuse',
            first_open, p_run_id, first_open_status
            using errcode = '22023',
            hint = format('Resume from step %s or an earlier one.', first_open);
    end if;
    if from_step > first_open then
        raise exception 'p_from_step: run % had % steps; % is outside 1..%',
            p_run_id, first_open - 1, from_step, first_open
            using errcode = '22023';
    end if;

    new_run_id := stepsync.open_run(
        (select t from public.agent_tasks as t where t.id = old_run.task_id),
        old_run.trigger_type,
        old_run.trigger_data,
        old_run.id
    );
    new_step_count := (
        select r.step_count from public.agent_task_executions as r where r.id = new_run_id
    );
    if from_step > new_step_count then
        raise exception 'p_from_step: % is outside 1..%: task % has % steps now',
            from_step, new_step_count, old_run.task_id, new_step_count
            using errcode = '22023',
            hint = case
                when p_from_step is null
                    then 'Every step of the run completed; give p_from_step to run the last '
                    || 'ones again.'
                else 'The task has fewer steps than the run had; resume from an earlier one.'
            end;
    end if;

    -- The steps before from_step must still be the steps they were.
    select string_agg(format('step %s', o.step_order), ', ' order by o.step_order)
    into moved
    from public.task_step_executions as o
    left join public.task_step_executions as n
        on n.run_id = new_run_id and n.step_order = o.step_order
    where
        o.run_id = old_run.id
        and o.kind = 'step'
        and o.step_order < from_step
        and (o.step_id is null or n.step_id is distinct from o.step_id);
    if moved is not null then
        raise exception 'the steps of task % before step % changed after run % (%: removed, '
        'replaced or moved), so its results cannot be reused', old_run.task_id, from_step,
        p_run_id, moved
            using errcode = '55000',
            hint = 'Resume with p_start_over => true to run every step again.';
    end if;

    update public.task_step_executions as n
    set
        status = o.status,
        attempt = o.attempt,
        input_context = o.input_context,
        output = o.output,
        error_message = o.error_message,
        skip_reason = o.skip_reason,
        started_at = o.started_at,
        completed_at = o.completed_at,
        duration_ms = o.duration_ms,
        reused_from = o.id,
        updated_at = now()
    from public.task_step_executions as o
    where
        n.run_id = new_run_id
        and n.step_order < from_step
        and o.run_id = old_run.id
        and o.step_order = n.step_order;

    perform from stepsync.advance_runs(array[new_run_id]);
    return new_run_id;
end
$$;

comment on function stepsync.resume_task_run(uuid, integer, boolean) is
'Resumes an ended run for its owner or the service: a new run of the current live steps, '
'linked to it, whose steps before p_from_step (default: the first whose outcome cannot be '
'reused) carry the old run''s recorded outcomes instead of running again. Use '
'public.resume_task_run.';

revoke all on function stepsync.resume_task_run(uuid, integer, boolean) from public;
grant execute on function stepsync.resume_task_run(uuid, integer, boolean)
to authenticated, service_role;

create or replace function public.resume_task_run(
    p_run_id uuid,
    p_from_step integer default null,
    p_start_over boolean default false
)
returns uuid
language sql
volatile
security invoker
set search_path = ''
as $$
    select stepsync.resume_task_run(p_run_id, p_from_step, p_start_over)
$$;

comment on function public.resume_task_run(uuid, integer, boolean) is
'Resumes an ended (failed, cancelled or completed) run and returns the new run''s id: a '
'new run of the same task and trigger with the current live steps (edits included), '
'linked by resumed_from_run_id, that reuses the recorded outcomes of the steps before '
'p_from_step (default: the first step that did not complete) and runs the rest. Refused '
'for a run still going, a step number out of range, or when steps before p_from_step were '
'removed, replaced or moved since, unless p_start_over (run every step again). For the '
'run''s owner and the service.';

revoke all on function public.resume_task_run(uuid, integer, boolean) from public, anon;
grant execute on function public.resume_task_run(uuid, integer, boolean)
to authenticated, service_role;

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

-- Events: pg_notify in the transaction that makes the change, so the service wakes when
-- there is work instead of polling for it.
--
--   stepsync_step_ready   payload: the step execution id; a step became queued and due.
--                         A retry with a delay is not announced: pollers find it.
--   stepsync_run_changed  payload: {"run_id": ..., "status": ..., "outcome": ...,
--                         "cancelling": ...}; a run was created, changed status, or
--                         was cancelled while its compensations are still to run
--                         (status still running, cancelling true: its running step
--                         must stop now). outcome is set once the run has ended
--                         (succeeded, partial, failed, cancelled).

create or replace function stepsync.notify_step_ready()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    perform pg_notify('stepsync_step_ready', new.id::text);
    return null;
end
$$;

comment on function stepsync.notify_step_ready() is
'Trigger: announces a step that became queued and due on channel stepsync_step_ready.';

revoke all on function stepsync.notify_step_ready() from public;

create or replace trigger task_step_executions_notify_ready
after insert or update of status, run_after on public.task_step_executions
for each row
when (new.status = 'queued' and new.run_after <= now())
execute function stepsync.notify_step_ready();

comment on trigger task_step_executions_notify_ready on public.task_step_executions is
'Wakes the service when a step can be claimed now.';

create or replace function stepsync.notify_run_changed()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    perform pg_notify(
        'stepsync_run_changed',
        json_build_object(
            'run_id', new.id,
            'status', new.status,
            'outcome', new.outcome,
            'cancelling', new.status = 'running' and new.cancelled_at is not null
        )::text
    );
    return null;
end
$$;

comment on function stepsync.notify_run_changed() is
'Trigger: announces a run''s new status (and outcome) on channel stepsync_run_changed.';

revoke all on function stepsync.notify_run_changed() from public;

create or replace trigger agent_task_executions_notify_insert
after insert on public.agent_task_executions
for each row
execute function stepsync.notify_run_changed();

create or replace trigger agent_task_executions_notify_status
after update of status, cancelled_at on public.agent_task_executions
for each row
when (
    old.status is distinct from new.status
    or (
        new.status = 'running'
        and new.compensation = 'running'
        and old.cancelled_at is null
        and new.cancelled_at is not null
    )
)
execute function stepsync.notify_run_changed();

comment on trigger agent_task_executions_notify_insert on public.agent_task_executions is
'Announces a new run on stepsync_run_changed.';
comment on trigger agent_task_executions_notify_status on public.agent_task_executions is
'Announces a run''s status change, or its cancellation while compensations are still to '
'run, on stepsync_run_changed.';

-- The workflow tables join Supabase Realtime's publication, so a browser subscribed to
-- postgres_changes sees step and run status change live (Realtime applies RLS per
-- subscriber). On a database without the publication nothing happens; a publication for
-- all tables already covers them.

create or replace function stepsync.add_to_realtime_publication(p_table regclass)
returns boolean
language plpgsql
set search_path = ''
as $$
begin
    if not exists (
        select from pg_catalog.pg_publication as p where p.pubname = 'supabase_realtime'
    ) then
        return false;
    end if;
    if exists (
        select from pg_catalog.pg_publication_rel as r
        inner join pg_catalog.pg_publication as p on r.prpubid = p.oid
        where p.pubname = 'supabase_realtime' and r.prrelid = p_table
    ) or exists (
        select from pg_catalog.pg_publication as p
        where p.pubname = 'supabase_realtime' and p.puballtables
    ) then
        return true;
    end if;
    execute format('alter publication supabase_realtime add table %s', p_table);
    return true;
end
$$;

revoke all on function stepsync.add_to_realtime_publication(regclass)
from public, anon, authenticated;

comment on function stepsync.add_to_realtime_publication(regclass) is
'For migrations: adds a table to the supabase_realtime publication when that exists '
'(idempotent). Returns whether the table is now published.';

select stepsync.add_to_realtime_publication('public.task_steps');
select stepsync.add_to_realtime_publication('public.agent_task_executions');
select stepsync.add_to_realtime_publication('public.task_step_executions');

-- Backfill bookkeeping: one row per backfill run (its checkpoint and counters), the steps
-- each run created, and the tasks it had to leave without a step.
--
-- Service-only: RLS is on and only service_role has a policy; the API roles get nothing.

create table if not exists stepsync.backfill_runs (
    id uuid primary key default gen_random_uuid(),
    kind text not null default 'legacy_tasks' check (kind in ('legacy_tasks')),
    status text not null default 'running' check (
        status in ('running', 'completed', 'rolled_back')
    ),
    batch_size integer not null check (batch_size between 1 and 100000),
    last_task_id uuid,
    batches integer not null default 0,
    tasks_scanned bigint not null default 0,
    steps_created bigint not null default 0,
    already_has_steps bigint not null default 0,
    marker_with_steps bigint not null default 0,
    marker_without_steps bigint not null default 0,
    blank_instructions bigint not null default 0,
    oversized_instructions bigint not null default 0,
    long_instructions bigint not null default 0,
    unnamed bigint not null default 0,
    status_paused bigint not null default 0,
    status_completed bigint not null default 0,
    status_failed bigint not null default 0,
    status_cancelled bigint not null default 0,
    tasks_at_start bigint,
    options jsonb not null default '{}'::jsonb,
    started_by text not null default current_user,
    started_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    finished_at timestamptz,
    rolled_back_at timestamptz,
    rolled_back_steps bigint not null default 0,
    rollback_kept_steps bigint not null default 0
);

create table if not exists stepsync.backfill_step_origin (
    -- Not a foreign key: a per-row check would slow the bulk insert of every batch, and
    -- runs are never deleted (no role has delete on backfill_runs).
    backfill_run_id uuid not null,
    task_id uuid not null,
    step_id uuid not null,
    -- A run gives a task at most one step. Keyed by task so a batch (which walks tasks in
    -- id order) appends to the index instead of scattering random step ids over it.
    primary key (backfill_run_id, task_id)
);

create table if not exists stepsync.backfill_exceptions (
    backfill_run_id uuid not null references stepsync.backfill_runs (id),
    task_id uuid not null,
    category text not null check (
        category in ('blank_instructions', 'oversized_instructions', 'marker_without_steps')
    ),
    detail text not null,
    primary key (backfill_run_id, task_id)
);

alter table stepsync.backfill_runs enable row level security;
alter table stepsync.backfill_step_origin enable row level security;
alter table stepsync.backfill_exceptions enable row level security;

revoke all on stepsync.backfill_runs from public, anon, authenticated;
revoke all on stepsync.backfill_step_origin from public, anon, authenticated;
revoke all on stepsync.backfill_exceptions from public, anon, authenticated;
grant select, insert, update on stepsync.backfill_runs to service_role;
grant select, insert, update, delete on stepsync.backfill_step_origin to service_role;
grant select, insert, update, delete on stepsync.backfill_exceptions to service_role;

create policy "Service role manages backfill runs" on stepsync.backfill_runs
for all to service_role using (true) with check (true);
create policy "Service role manages backfill step origins" on stepsync.backfill_step_origin
for all to service_role using (true) with check (true);
create policy "Service role manages backfill exceptions" on stepsync.backfill_exceptions
for all to service_role using (true) with check (true);

comment on table stepsync.backfill_runs is
'One row per legacy-task backfill run: its keyset checkpoint (last_task_id), counters by '
'category, and rollback state. A run whose process died stays running and is resumed.';
comment on column stepsync.backfill_runs.status is
'running (in progress or interrupted), completed, or rolled_back.';
comment on column stepsync.backfill_runs.last_task_id is
'Checkpoint: every agent_tasks.id up to and including this one has been processed.';
comment on column stepsync.backfill_runs.batch_size is 'Tasks per batch transaction.';
comment on column stepsync.backfill_runs.batches is 'Batches committed so far.';
comment on column stepsync.backfill_runs.tasks_scanned is 'Tasks examined so far.';
comment on column stepsync.backfill_runs.steps_created is 'Steps 1 this run created.';
comment on column stepsync.backfill_runs.already_has_steps is
'Tasks skipped because they already had live steps (marker tasks excluded).';
comment on column stepsync.backfill_runs.marker_with_steps is
'Tasks with the earlier multi-step marker text whose steps are present.';
comment on column stepsync.backfill_runs.marker_without_steps is
'Tasks with the earlier multi-step marker text and no live step: cannot be restored.';
comment on column stepsync.backfill_runs.blank_instructions is
'Tasks with empty or whitespace-only instructions and no step: left without one.';
comment on column stepsync.backfill_runs.oversized_instructions is
'Tasks whose instructions exceed a step''s instructions_bytes limit and no step: left '
'without one.';
comment on column stepsync.backfill_runs.long_instructions is
'Created steps whose instructions exceed 10,000 characters (migrated all the same).';
comment on column stepsync.backfill_runs.unnamed is
'Created steps whose task had a blank name (name derived from the instructions).';
comment on column stepsync.backfill_runs.status_paused is 'Created steps of paused tasks.';
comment on column stepsync.backfill_runs.status_completed is 'Created steps of completed tasks.';
comment on column stepsync.backfill_runs.status_failed is 'Created steps of failed tasks.';
comment on column stepsync.backfill_runs.status_cancelled is 'Created steps of cancelled tasks.';
comment on column stepsync.backfill_runs.tasks_at_start is
'Number of agent_tasks rows when the run started (for progress and ETA).';
comment on column stepsync.backfill_runs.options is
'Settings the run was started with (batch size, pause, timeouts).';
comment on column stepsync.backfill_runs.started_by is 'Database role that started the run.';
comment on column stepsync.backfill_runs.started_at is 'When the run started.';
comment on column stepsync.backfill_runs.updated_at is 'When the last batch committed.';
comment on column stepsync.backfill_runs.finished_at is 'When the last batch found no more tasks.';
comment on column stepsync.backfill_runs.rolled_back_at is 'When a rollback of this run finished.';
comment on column stepsync.backfill_runs.rolled_back_steps is 'Steps removed by rollback.';
comment on column stepsync.backfill_runs.rollback_kept_steps is
'Steps rollback kept because their task has other live steps now.';
comment on column stepsync.backfill_runs.kind is 'What was backfilled (legacy_tasks).';

comment on table stepsync.backfill_step_origin is
'Which backfill run created which step: rollback removes exactly these rows'' steps.';
comment on column stepsync.backfill_step_origin.step_id is 'A task_steps.id the run created.';
comment on column stepsync.backfill_step_origin.backfill_run_id is 'The run that created it.';
comment on column stepsync.backfill_step_origin.task_id is
'The step''s task; rollback walks a run''s rows in task order.';

comment on table stepsync.backfill_exceptions is
'Tasks a backfill run could not give a step, with the reason; listed by the CLI.';
comment on column stepsync.backfill_exceptions.backfill_run_id is 'The run that found it.';
comment on column stepsync.backfill_exceptions.task_id is 'The task left without a step.';
comment on column stepsync.backfill_exceptions.category is
'blank_instructions, oversized_instructions or marker_without_steps.';
comment on column stepsync.backfill_exceptions.detail is 'Why no step could be made.';

-- Backfill of legacy single-instruction tasks into single-step workflows.
--
-- Each function call is one batch: the caller runs it in its own short transaction (with
-- lock_timeout and statement_timeout set) and commits. Batches walk agent_tasks in
-- keyset order of id; the run's checkpoint moves in the same transaction as the steps it
-- created, so a killed process loses at most the batch in flight.
--
-- The classification of a task is spelled out inline in each function (no function call
-- per row: a function with a fixed search_path cannot be inlined, and at a million rows
-- the calls would cost more than the inserts). The rules, identical everywhere:
--   blank:    no character but Unicode whitespace            (stepsync.is_blank, spelt out)
--   oversized: octet_length(instructions) > the instructions_bytes limit
--   marker:   instructions ~ '^\s*Multi-step task with [0-9]+ step'  (earlier variant)
--   long:     char_length(instructions) > 10000
--   unnamed:  btrim(name, E' \t\r\n\f\v') = ''
--   step status: completed/failed/cancelled tasks keep that status, others are pending.
--
-- Whether a task already has a live step is a lateral subquery with LIMIT 1: one probe
-- of task_steps by task_id per task of the batch. An `exists (...)` in the select list
-- may be run "hashed" instead, reading every live step once per statement; the plans are
-- cached, so once chosen (task_steps is small when a backfill starts) every later batch
-- would read all the steps created so far, and the whole backfill would grow with the
-- square of its size.

create or replace function stepsync.backfill_start_run(
    p_batch_size integer, p_options jsonb default '{}'::jsonb
)
returns uuid
language plpgsql
volatile
set search_path = ''
as $$
declare
    run_id uuid;
begin
    if p_batch_size is null or p_batch_size not between 1 and 100000 then
        raise exception 'batch size must be between 1 and 100000, got %', p_batch_size
            using errcode = '22023';
    end if;
    insert into stepsync.backfill_runs (batch_size, options, tasks_at_start)
    values (
        p_batch_size,
        coalesce(p_options, '{}'::jsonb),
        (select count(*) from public.agent_tasks)
    )
    returning id into run_id;
    return run_id;
end
$$;

comment on function stepsync.backfill_start_run(integer, jsonb) is
'Record a new legacy-task backfill run (status running, no checkpoint yet); returns its id.';

revoke all on function stepsync.backfill_start_run(integer, jsonb) from public;
grant execute on function stepsync.backfill_start_run(integer, jsonb) to service_role;

create or replace function stepsync.backfill_legacy_tasks_batch(
    p_run_id uuid, p_batch_size integer default null
)
returns table (tasks_scanned integer, steps_created integer, last_task_id uuid, done boolean)
language plpgsql
volatile
set search_path = ''
as $$
declare
    run stepsync.backfill_runs;
    ids uuid[];
    batch_limit integer;
    scanned integer;
    created integer;
begin
    -- The run row is the checkpoint; NOWAIT makes a second process on the same run fail
    -- at once instead of queueing behind the first.
    select * into run from stepsync.backfill_runs as r where r.id = p_run_id
    for update nowait;
    if not found then
        raise exception 'backfill run % does not exist', p_run_id using errcode = 'P0002';
    end if;
    if run.status <> 'running' then
        raise exception 'backfill run % is %, it cannot continue', p_run_id, run.status
            using errcode = '55000';
    end if;
    -- A resumed run may go on with a different batch size (smaller, after timeouts).
    batch_limit := coalesce(p_batch_size, run.batch_size);
    if batch_limit not between 1 and 100000 then
        raise exception 'batch size must be between 1 and 100000, got %', batch_limit
            using errcode = '22023';
    end if;

    -- Audit rows written by this transaction name the run; the compatibility triggers
    -- have nothing to add to what the batch writes itself.
    perform set_config('stepsync.audit_tag', p_run_id::text, true);
    perform set_config('stepsync.compat_sync', 'off', true);

    -- 1. Take the next tasks and hold them: a concurrent edit of their instructions waits
    -- for this batch, then the compatibility trigger sees the new step and syncs it.
    if run.last_task_id is null then
        select array_agg(locked.id order by locked.id) into ids
        from (
            select t.id from public.agent_tasks as t
            order by t.id
            limit batch_limit
            for share
        ) as locked;
    else
        select array_agg(locked.id order by locked.id) into ids
        from (
            select t.id from public.agent_tasks as t
            where t.id > run.last_task_id
            order by t.id
            limit batch_limit
            for share
        ) as locked;
    end if;
    scanned := coalesce(cardinality(ids), 0);

    -- 2. A new statement, so a new snapshot: the tasks' current text and steps.
    with batch as (
        select
            t.id,
            t.name,
            t.instructions,
            t.status,
            t.instructions !~ (
                '[^[:space:]\u0085\u00a0\u1680\u180e\u2000-\u200f\u2028\u2029\u202f\u205f'
                || '\u2060-\u2064\u3000\ufeff]'
            ) as is_blank,
            octet_length(t.instructions) > stepsync.input_limit('instructions_bytes')
                as is_oversized,
            t.instructions ~ '^\s*Multi-step task with [0-9]+ step' as is_marker,
            live.task_id is not null as has_steps
        from public.agent_tasks as t
        left join lateral (
            select s.task_id from public.task_steps as s
            where s.task_id = t.id and s.deleted_at is null
            limit 1
        ) as live on true
        where t.id = any(ids)
    ),

    eligible as (
        select b.*
        from batch as b
        where not b.has_steps and not b.is_blank and not b.is_oversized and not b.is_marker
    ),

    inserted as (
        insert into public.task_steps (task_id, step_order, step_name, instructions, status)
        select
            e.id,
            1,
            coalesce(
                nullif(left(btrim(e.name, e' \t\r\n\f\v'), 200), ''),
                nullif(
                    btrim(left(regexp_replace(
                        btrim(left(e.instructions, 400), e' \t\r\n\f\v'), '\s+', ' ', 'g'
                    ), 80)),
                    ''
                ),
                'Step 1'
            ),
            e.instructions,
            (case e.status
                when 'completed' then 'completed'
                when 'failed' then 'failed'
                when 'cancelled' then 'cancelled'
                else 'pending'
            end)::public.task_step_status
        from eligible as e
        order by e.id
        returning id, task_id
    ),

    origin as (
        insert into stepsync.backfill_step_origin (backfill_run_id, task_id, step_id)
        select p_run_id, i.task_id, i.id from inserted as i
        order by i.task_id
    ),

    exceptions as (
        insert into stepsync.backfill_exceptions (backfill_run_id, task_id, category, detail)
        select
            p_run_id,
            b.id,
            case
                when b.is_blank then 'blank_instructions'
                when b.is_oversized then 'oversized_instructions'
                else 'marker_without_steps'
            end,
            case
                when b.is_blank then 'instructions are empty or whitespace: no valid step'
                when b.is_oversized then format(
                    'instructions are %s bytes, more than a step''s limit of %s: no valid step',
                    octet_length(b.instructions), stepsync.input_limit('instructions_bytes')
                )
                else 'multi-step marker text but no live steps: the steps cannot be '
                    || 'restored from the marker'
            end
        from batch as b
        where not b.has_steps and (b.is_blank or b.is_oversized or b.is_marker)
        on conflict do nothing
    ),

    counted as (
        select
            count(*) filter (where b.has_steps and not b.is_marker) as already_has_steps,
            count(*) filter (where b.has_steps and b.is_marker) as marker_with_steps,
            count(*) filter (
                where not b.has_steps and b.is_marker and not b.is_blank and not b.is_oversized
            ) as marker_without_steps,
            count(*) filter (where not b.has_steps and b.is_blank) as blank_instructions,
            count(*) filter (
                where not b.has_steps and b.is_oversized and not b.is_blank
            ) as oversized_instructions
        from batch as b
    ),

    flagged as (
        select
            count(*) as steps_created,
            count(*) filter (where char_length(e.instructions) > 10000) as long_instructions,
            count(*) filter (where btrim(e.name, e' \t\r\n\f\v') = '') as unnamed,
            count(*) filter (where e.status = 'paused') as status_paused,
            count(*) filter (where e.status = 'completed') as status_completed,
            count(*) filter (where e.status = 'failed') as status_failed,
            count(*) filter (where e.status = 'cancelled') as status_cancelled
        from eligible as e
    )

    update stepsync.backfill_runs as r
    set
        last_task_id = coalesce(ids[cardinality(ids)], r.last_task_id),
        batches = r.batches + 1,
        tasks_scanned = r.tasks_scanned + scanned,
        steps_created = r.steps_created + f.steps_created,
        already_has_steps = r.already_has_steps + c.already_has_steps,
        marker_with_steps = r.marker_with_steps + c.marker_with_steps,
        marker_without_steps = r.marker_without_steps + c.marker_without_steps,
        blank_instructions = r.blank_instructions + c.blank_instructions,
        oversized_instructions = r.oversized_instructions + c.oversized_instructions,
        long_instructions = r.long_instructions + f.long_instructions,
        unnamed = r.unnamed + f.unnamed,
        status_paused = r.status_paused + f.status_paused,
        status_completed = r.status_completed + f.status_completed,
        status_failed = r.status_failed + f.status_failed,
        status_cancelled = r.status_cancelled + f.status_cancelled,
        updated_at = now(),
        status = case when scanned < batch_limit then 'completed' else r.status end,
        finished_at = case when scanned < batch_limit then now() end
    from counted as c, flagged as f
    where r.id = p_run_id
    returning f.steps_created into created;

    return query select
        scanned,
        created,
        coalesce(ids[cardinality(ids)], run.last_task_id),
        scanned < batch_limit;
end
$$;

comment on function stepsync.backfill_legacy_tasks_batch(uuid, integer) is
'One batch of a backfill run: the next p_batch_size tasks (default: the run''s batch '
'size) after the checkpoint get step 1 where they have no live step and their '
'instructions make a valid step; counters, exceptions and the checkpoint move in the '
'same transaction. Call once per transaction.';

revoke all on function stepsync.backfill_legacy_tasks_batch(uuid, integer) from public;
grant execute on function stepsync.backfill_legacy_tasks_batch(uuid, integer) to service_role;

create or replace function stepsync.backfill_plan_batch(
    p_after uuid, p_batch_size integer, p_samples integer default 5
)
returns table (tasks_scanned integer, last_task_id uuid, counts jsonb, samples jsonb)
language sql
stable
set search_path = ''
as $$
    with batch as (
        select
            t.id,
            t.status,
            t.instructions !~ (
                '[^[:space:]\u0085\u00a0\u1680\u180e\u2000-\u200f\u2028\u2029\u202f\u205f'
                || '\u2060-\u2064\u3000\ufeff]'
            ) as is_blank,
            octet_length(t.instructions) > stepsync.input_limit('instructions_bytes')
                as is_oversized,
            t.instructions ~ '^\s*Multi-step task with [0-9]+ step' as is_marker,
            char_length(t.instructions) > 10000 as is_long,
            btrim(t.name, e' \t\r\n\f\v') = '' as is_unnamed,
            live.task_id is not null as has_steps
        from public.agent_tasks as t
        left join lateral (
            select s.task_id from public.task_steps as s
            where s.task_id = t.id and s.deleted_at is null
            limit 1
        ) as live on true
        where p_after is null or t.id > p_after
        order by t.id
        limit p_batch_size
    ),

    categorised as (
        select
            b.*,
            case
                when b.has_steps and b.is_marker then 'marker_with_steps'
                when b.has_steps then 'already_has_steps'
                when b.is_blank then 'blank_instructions'
                when b.is_oversized then 'oversized_instructions'
                when b.is_marker then 'marker_without_steps'
                else 'to_create'
            end as category
        from batch as b
    ),

    tagged as (
        select c.id, c.category as tag from categorised as c
        union all
        select c.id, 'long_instructions' from categorised as c
        where c.category = 'to_create' and c.is_long
        union all
        select c.id, 'unnamed' from categorised as c
        where c.category = 'to_create' and c.is_unnamed
        union all
        select c.id, 'status_' || c.status from categorised as c
        where c.category = 'to_create' and c.status <> 'active'
    ),

    numbered as (
        select
            t.tag,
            t.id,
            row_number() over (partition by t.tag order by t.id) as n,
            count(*) over (partition by t.tag) as total
        from tagged as t
    )

    select
        (select count(*)::integer from batch),
        (select b.id from batch as b order by b.id desc limit 1),
        coalesce(
            (select jsonb_object_agg(n.tag, n.total) from numbered as n where n.n = 1),
            '{}'::jsonb
        ),
        coalesce(
            (
                select jsonb_object_agg(s.tag, s.ids)
                from (
                    select n.tag, jsonb_agg(n.id order by n.id) as ids
                    from numbered as n
                    where n.n <= p_samples
                    group by n.tag
                ) as s
            ),
            '{}'::jsonb
        );
$$;

comment on function stepsync.backfill_plan_batch(uuid, integer, integer) is
'Dry run of one batch: counts by category (to_create, already_has_steps, marker_with_steps, '
'marker_without_steps, blank_instructions, oversized_instructions, and among to_create '
'long_instructions, unnamed, '
'status_*) and up to p_samples task ids each, for the next p_batch_size tasks after p_after.';

revoke all on function stepsync.backfill_plan_batch(uuid, integer, integer) from public;
grant execute on function stepsync.backfill_plan_batch(uuid, integer, integer) to service_role;

create or replace function stepsync.backfill_verify_batch(
    p_after uuid, p_batch_size integer, p_max_exceptions integer default 100
)
returns table (
    tasks_scanned integer,
    last_task_id uuid,
    eligible integer,
    verified integer,
    tasks_checksum numeric,
    steps_checksum numeric,
    exceptions jsonb
)
language sql
stable
set search_path = ''
as $$
    with batch as (
        select t.id, t.instructions
        from public.agent_tasks as t
        where p_after is null or t.id > p_after
        order by t.id
        limit p_batch_size
    ),

    checked as (
        select
            b.id,
            b.instructions,
            live.live_steps,
            live.first_order,
            live.first_instructions
        from batch as b
        cross join lateral (
            select
                count(*) as live_steps,
                min(s.step_order) as first_order,
                (array_agg(s.instructions order by s.step_order, s.id))[1]
                    as first_instructions
            from public.task_steps as s
            where s.task_id = b.id and s.deleted_at is null
        ) as live
        where b.instructions ~ (
            '[^[:space:]\u0085\u00a0\u1680\u180e\u2000-\u200f\u2028\u2029\u202f\u205f'
            || '\u2060-\u2064\u3000\ufeff]'
        )
            and octet_length(b.instructions) <= stepsync.input_limit('instructions_bytes')
            and b.instructions !~ '^\s*Multi-step task with [0-9]+ step'
    ),

    judged as (
        select
            c.*,
            case
                when c.live_steps = 0 then 'no live step'
                when c.live_steps > 1 then c.live_steps || ' live steps, expected one'
                when c.first_order <> 1 then 'its only step has order ' || c.first_order
                when c.first_instructions <> c.instructions
                    then 'step 1 instructions differ from the task''s'
            end as problem
        from checked as c
    )

    select
        (select count(*)::integer from batch),
        (select b.id from batch as b order by b.id desc limit 1),
        (select count(*)::integer from judged),
        (select count(*)::integer from judged as j where j.problem is null),
        coalesce(
            (
                select sum(hashtextextended(j.id::text || ':' || j.instructions, 0)::numeric)
                from judged as j
            ),
            0
        ),
        coalesce(
            (
                select
                    sum(
                        hashtextextended(
                            j.id::text || ':' || j.first_instructions, 0
                        )::numeric
                    )
                from judged as j
                where j.live_steps = 1 and j.first_order = 1
            ),
            0
        ),
        coalesce(
            (
                select jsonb_agg(jsonb_build_object('task_id', e.id, 'problem', e.problem))
                from (
                    select j.id, j.problem from judged as j
                    where j.problem is not null
                    order by j.id
                    limit p_max_exceptions
                ) as e
            ),
            '[]'::jsonb
        );
$$;

comment on function stepsync.backfill_verify_batch(uuid, integer, integer) is
'Verify one batch of tasks after p_after: every task whose instructions make a valid step '
'(not blank, not the multi-step marker) must have exactly one live step, at order 1, with '
'the same instructions. Returns counts, checksums of the task and step texts (equal sums '
'when all match) and up to p_max_exceptions problems.';

revoke all on function stepsync.backfill_verify_batch(uuid, integer, integer) from public;
grant execute on function stepsync.backfill_verify_batch(uuid, integer, integer)
to service_role;

create or replace function stepsync.backfill_rollback_batch(
    p_run_id uuid, p_after uuid, p_batch_size integer
)
returns table (
    steps_seen integer, steps_removed integer, steps_kept integer, last_task_id uuid,
    done boolean
)
language plpgsql
volatile
set search_path = ''
as $$
declare
    run stepsync.backfill_runs;
    step_ids uuid[];
    task_ids uuid[];
    seen integer;
    removed integer;
    forgotten integer;
begin
    select * into run from stepsync.backfill_runs as r where r.id = p_run_id
    for update nowait;
    if not found then
        raise exception 'backfill run % does not exist', p_run_id using errcode = 'P0002';
    end if;
    if p_batch_size is null or p_batch_size not between 1 and 100000 then
        raise exception 'batch size must be between 1 and 100000, got %', p_batch_size
            using errcode = '22023';
    end if;
    perform set_config('stepsync.audit_tag', p_run_id::text, true);
    perform set_config('stepsync.compat_sync', 'off', true);

    select array_agg(o.step_id order by o.task_id), array_agg(o.task_id order by o.task_id)
    into step_ids, task_ids
    from (
        select o.step_id, o.task_id
        from stepsync.backfill_step_origin as o
        where o.backfill_run_id = p_run_id and (p_after is null or o.task_id > p_after)
        order by o.task_id
        limit p_batch_size
    ) as o;
    seen := coalesce(cardinality(step_ids), 0);

    -- Hold the tasks so no one adds a step beside the one about to go.
    perform from public.agent_tasks as t where t.id = any(task_ids) for share;

    -- A step goes unless its task has another live step now (the user made it a
    -- multi-step task): removing it would leave a gap at order 1.
    with doomed as (
        select s.id
        from public.task_steps as s
        where s.id = any(step_ids)
            and (
                s.deleted_at is not null
                or not exists (
                    select from public.task_steps as other
                    where other.task_id = s.task_id
                        and other.deleted_at is null
                        and other.id <> s.id
                )
            )
    ),

    deleted as (
        delete from public.task_steps as s
        using doomed as d
        where s.id = d.id
        returning s.id
    ),

    cleared as (
        -- Origin rows of removed steps, and of steps already gone some other way.
        delete from stepsync.backfill_step_origin as o
        where o.backfill_run_id = p_run_id
            and o.task_id = any(task_ids)
            and (
                o.step_id in (select d.id from deleted as d)
                or not exists (select from public.task_steps as s where s.id = o.step_id)
            )
        returning o.step_id
    )

    select (select count(*) from deleted), (select count(*) from cleared)
    into removed, forgotten;

    update stepsync.backfill_runs as r
    set
        rolled_back_steps = r.rolled_back_steps + removed,
        rollback_kept_steps = case
            when p_after is null then seen - forgotten
            else r.rollback_kept_steps + seen - forgotten
        end,
        status = case when seen < p_batch_size then 'rolled_back' else r.status end,
        rolled_back_at = case when seen < p_batch_size then now() else r.rolled_back_at end,
        updated_at = now()
    where r.id = p_run_id;

    return query select
        seen,
        removed,
        seen - forgotten,
        coalesce(task_ids[seen], p_after),
        seen < p_batch_size;
end
$$;

comment on function stepsync.backfill_rollback_batch(uuid, uuid, integer) is
'One batch of a rollback: removes the steps run p_run_id created (tasks after p_after), '
'except those whose task has other live steps now (kept and counted). Steps created by '
'users or the compatibility triggers are never touched: only backfill_step_origin rows '
'of this run are considered.';

revoke all on function stepsync.backfill_rollback_batch(uuid, uuid, integer) from public;
grant execute on function stepsync.backfill_rollback_batch(uuid, uuid, integer)
to service_role;

-- Online compatibility between the legacy single-instruction code path and task_steps,
-- while old and new code run side by side:
--   * a task inserted the legacy way (instructions only) gets step 1 at once;
--   * editing a single-step task's instructions updates its step 1, and editing the
--     step updates the task's instructions;
--   * a task with several live steps keeps a readable summary in its instructions
--     ("Multi-step task with 3 steps: 1. Fetch; 2. Summarise; 3. Send").
--
-- Recursion guard: while one side writes the other, the transaction-local setting
-- stepsync.compat_sync is 'off' and every trigger here returns at once. The backfill sets
-- it too, since it writes both sides consistently itself. Any session can set a setting,
-- so 'off' counts only where one of these writers set it: for the service (the backfill)
-- and inside a trigger (the writes these triggers make); an API user who sets it still
-- gets the rules. The flag legacy_task_compat switches all of this off (for a full
-- rollback to the legacy behaviour).
--
-- The trigger functions are SECURITY DEFINER (owner rights) because a legacy writer, an
-- API user, can neither read the flag nor always see every step; PostgreSQL refuses to
-- call a trigger function other than as a trigger, and a trigger only fires for rows the
-- writer's own statement reached through RLS. The functions they call are invokers with
-- execute revoked from everyone: they run with the trigger's rights and nobody else's.

insert into stepsync.feature_flags (name, enabled, rollout_percent, description)
values (
    'legacy_task_compat',
    true,
    100,
    'Keep legacy agent_tasks.instructions and task_steps in sync (compatibility triggers). '
    'Global on/off only.'
)
on conflict (name) do nothing;

create or replace function stepsync.legacy_compat_active()
returns boolean
language sql
stable
set search_path = ''
as $$
    select (
        coalesce(current_setting('stepsync.compat_sync', true), '') <> 'off'
        or (pg_catalog.pg_trigger_depth() <= 1 and not stepsync.caller_is_service())
    )
        and coalesce(
            (select f.enabled from stepsync.feature_flags as f
                where f.name = 'legacy_task_compat'),
            true
        );
$$;

comment on function stepsync.legacy_compat_active() is
'Whether the compatibility triggers act now: the flag legacy_task_compat is on and this '
'transaction is not already inside a compatibility write (stepsync.compat_sync = off, '
'honoured for the service and inside triggers only).';

revoke all on function stepsync.legacy_compat_active() from public;

create or replace function stepsync.create_legacy_step(p_task public.agent_tasks)
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    previous text := current_setting('stepsync.compat_sync', true);
begin
    -- Same rules as stepsync.backfill_legacy_tasks_batch (name, status).
    perform set_config('stepsync.compat_sync', 'off', true);
    insert into public.task_steps (task_id, step_order, step_name, instructions, status)
    values (
        p_task.id,
        1,
        coalesce(
            nullif(left(btrim(p_task.name, e' \t\r\n\f\v'), 200), ''),
            nullif(
                btrim(left(regexp_replace(
                    btrim(left(p_task.instructions, 400), e' \t\r\n\f\v'), '\s+', ' ', 'g'
                ), 80)),
                ''
            ),
            'Step 1'
        ),
        p_task.instructions,
        (case p_task.status
            when 'completed' then 'completed'
            when 'failed' then 'failed'
            when 'cancelled' then 'cancelled'
            else 'pending'
        end)::public.task_step_status
    );
    perform set_config('stepsync.compat_sync', coalesce(previous, ''), true);
end
$$;

comment on function stepsync.create_legacy_step(public.agent_tasks) is
'Give a legacy task its step 1 (name from the task, or derived from the instructions; '
'status from the task status), exactly as the backfill does.';

revoke all on function stepsync.create_legacy_step(public.agent_tasks) from public;

create or replace function stepsync.compat_task_inserted()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
    if not stepsync.legacy_compat_active()
        or stepsync.is_blank(new.instructions)
        or octet_length(new.instructions) > stepsync.input_limit('instructions_bytes')
        or new.instructions ~ '^\s*Multi-step task with [0-9]+ step'
        or exists (
            select from public.task_steps as s
            where s.task_id = new.id and s.deleted_at is null
        ) then
        return null;
    end if;
    perform stepsync.create_legacy_step(new);
    return null;
end
$$;

comment on function stepsync.compat_task_inserted() is
'After a legacy insert into agent_tasks: the task gets step 1 when its instructions make '
'a valid step (blank, over-long and multi-step marker texts are left to the backfill '
'report).';

revoke all on function stepsync.compat_task_inserted() from public;

create or replace function stepsync.compat_task_instructions_changed()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    live_steps integer;
    previous text := current_setting('stepsync.compat_sync', true);
begin
    if not stepsync.legacy_compat_active() then
        return null;
    end if;
    select count(*) into live_steps
    from public.task_steps as s
    where s.task_id = new.id and s.deleted_at is null;

    if live_steps = 0 then
        if not stepsync.is_blank(new.instructions)
            and octet_length(new.instructions) <= stepsync.input_limit('instructions_bytes')
            and new.instructions !~ '^\s*Multi-step task with [0-9]+ step' then
            perform stepsync.create_legacy_step(new);
        end if;
    elsif live_steps = 1 then
        if stepsync.is_blank(new.instructions) then
            raise exception 'instructions of task % cannot be blank: they are its step 1',
                new.id
                using errcode = '23514',
                hint = 'Give the task instructions, or delete its step first.';
        end if;
        if octet_length(new.instructions) > stepsync.input_limit('instructions_bytes') then
            raise exception 'instructions of task % are % bytes, more than a step''s limit '
            'of %: they are its step 1', new.id, octet_length(new.instructions),
                stepsync.input_limit('instructions_bytes')
                using errcode = '23514';
        end if;
        perform set_config('stepsync.compat_sync', 'off', true);
        update public.task_steps as s
        set instructions = new.instructions, updated_at = now()
        where s.task_id = new.id
            and s.deleted_at is null
            and s.instructions is distinct from new.instructions;
        perform set_config('stepsync.compat_sync', coalesce(previous, ''), true);
    elsif new.instructions !~ '^\s*Multi-step task with [0-9]+ step' then
        raise exception 'task % has % steps: its instructions are a summary of them',
            new.id, live_steps
            using errcode = '23514',
            hint = 'Edit the steps (save_task_steps or task_steps) instead.';
    end if;
    return null;
end
$$;

comment on function stepsync.compat_task_instructions_changed() is
'After agent_tasks.instructions changes: a single-step task''s step 1 takes the new text; '
'a task without live steps gets step 1; a multi-step task refuses free text (its '
'instructions summarise its steps).';

revoke all on function stepsync.compat_task_instructions_changed() from public;

create or replace function stepsync.sync_task_instructions(p_task_ids uuid[])
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    previous text := current_setting('stepsync.compat_sync', true);
begin
    perform set_config('stepsync.compat_sync', 'off', true);
    update public.agent_tasks as t
    set instructions = live.text, updated_at = now()
    from (
        select
            s.task_id,
            case
                when count(*) = 1 then min(s.instructions)
                else format(
                    'Multi-step task with %s steps: %s',
                    count(*),
                    string_agg(
                        format('%s. %s', s.step_order, s.step_name), '; '
                        order by s.step_order, s.id
                    )
                )
            end as text
        from public.task_steps as s
        where s.task_id = any(p_task_ids) and s.deleted_at is null
        group by s.task_id
    ) as live
    where t.id = live.task_id and t.instructions is distinct from live.text;
    perform set_config('stepsync.compat_sync', coalesce(previous, ''), true);
end
$$;

comment on function stepsync.sync_task_instructions(uuid[]) is
'Write each task''s instructions from its live steps: the text of its only step, or a '
'"Multi-step task with N steps: 1. name; …" summary. Tasks without live steps keep theirs.';

revoke all on function stepsync.sync_task_instructions(uuid[]) from public;

create or replace function stepsync.compat_steps_changed()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    task_ids uuid[];
begin
    if not stepsync.legacy_compat_active() then
        return null;
    end if;
    if tg_op = 'INSERT' then
        select array_agg(distinct n.task_id) into task_ids from new_rows as n;
    elsif tg_op = 'DELETE' then
        select array_agg(distinct o.task_id) into task_ids from old_rows as o;
    else
        -- Only changes the task's text depends on; run snapshots (status,
        -- execution_result) written by the engine do not count.
        select array_agg(distinct changed.task_id) into task_ids
        from (
            select n.task_id, o.task_id as old_task_id
            from new_rows as n
            inner join old_rows as o on n.id = o.id
            where (n.task_id, n.step_order, n.step_name, n.instructions, n.deleted_at)
                is distinct from
                (o.task_id, o.step_order, o.step_name, o.instructions, o.deleted_at)
        ) as moved,
            lateral (values (moved.task_id), (moved.old_task_id)) as changed (task_id);
    end if;
    if task_ids is not null then
        perform stepsync.sync_task_instructions(task_ids);
    end if;
    return null;
end
$$;

comment on function stepsync.compat_steps_changed() is
'After a statement changes task_steps: the affected tasks'' instructions follow their live '
'steps (one statement per change, however many rows it touched).';

revoke all on function stepsync.compat_steps_changed() from public;

create or replace trigger stepsync_compat_task_inserted
after insert on public.agent_tasks
for each row execute function stepsync.compat_task_inserted();

create or replace trigger stepsync_compat_task_instructions_changed
after update of instructions on public.agent_tasks
for each row
when (old.instructions is distinct from new.instructions)
execute function stepsync.compat_task_instructions_changed();

create or replace trigger stepsync_compat_steps_inserted
after insert on public.task_steps
referencing new table as new_rows
for each statement execute function stepsync.compat_steps_changed();

create or replace trigger stepsync_compat_steps_updated
after update on public.task_steps
referencing old table as old_rows new table as new_rows
for each statement execute function stepsync.compat_steps_changed();

create or replace trigger stepsync_compat_steps_deleted
after delete on public.task_steps
referencing old table as old_rows
for each statement execute function stepsync.compat_steps_changed();

comment on trigger stepsync_compat_task_inserted on public.agent_tasks is
'A task inserted the legacy way gets step 1.';
comment on trigger stepsync_compat_task_instructions_changed on public.agent_tasks is
'Legacy edits of instructions reach step 1 of a single-step task.';
comment on trigger stepsync_compat_steps_inserted on public.task_steps is
'New steps: the task''s instructions follow (text of step 1, or a summary).';
comment on trigger stepsync_compat_steps_updated on public.task_steps is
'Edited, reordered or soft-deleted steps: the task''s instructions follow.';
comment on trigger stepsync_compat_steps_deleted on public.task_steps is
'Deleted steps: the task''s instructions follow.';

-- Schedules: the service starts a scheduled task's runs at its fire times.
--
-- A task's next fire time is agent_tasks.next_run_at, the column the app shows and the
-- legacy task-executor reads: whoever fires a task advances it, in the transaction that
-- fires it. The cron arithmetic (a 5-field expression in the task's IANA time zone,
-- across daylight-saving changes) is done in one place, the service (sync/cron.py); the
-- rules that must hold however many workers run are here:
--
-- * claim_due_schedules locks the due tasks of users in the multi_step_workflows rollout
--   (FOR UPDATE SKIP LOCKED on the due-time index), so two workers never hold one task;
-- * fire_schedules, in the same transaction, applies the legacy rules (max_executions
--   reached or end_date passed: the task is completed; paused tasks are never due),
--   starts one run for the due fire time, records the decision in task_schedule_fires
--   (one row per task and fire time: its primary key) and moves next_run_at on.
--
-- Missed fire times (the service was down) start one run, for the latest of them; the
-- run's trigger_data says how many were missed. A fire time that comes while the task's
-- previous run is still running is skipped and recorded, not queued: a slow task does not
-- pile up runs.
--
-- Cron expressions and time zones are checked when a task is written, by whoever writes
-- it (the app through PostgREST, the legacy functions), with an error naming the field.

create or replace function stepsync.cron_field_value(p_field integer, p_text text)
returns integer
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    lows constant integer[] := array[0, 0, 1, 1, 0];
    highs constant integer[] := array[59, 23, 31, 12, 7];
    months constant text[] := array[
        'JAN', 'FEB', 'MAR', 'APR', 'MAY', 'JUN', 'JUL', 'AUG', 'SEP', 'OCT', 'NOV', 'DEC'
    ];
    days constant text[] := array['SUN', 'MON', 'TUE', 'WED', 'THU', 'FRI', 'SAT'];
    parsed integer;
begin
    if p_field = 4 and p_text = any(months) then
        return array_position(months, p_text);
    end if;
    if p_field = 5 and p_text = any(days) then
        return array_position(days, p_text) - 1;
    end if;
    if p_text !~ '^[0-9]{1,9}$' then
        return null;
    end if;
    parsed := p_text::integer;
    if parsed not between lows[p_field] and highs[p_field] then
        return null;
    end if;
    return parsed;
end
$$;

comment on function stepsync.cron_field_value(integer, text) is
'The value of one cron field item (1 minute, 2 hour, 3 day of month, 4 month, 5 day of '
'week): a number in the field''s range or, for months and days of the week, a three-letter '
'English name in capitals; null when it is neither.';

revoke all on function stepsync.cron_field_value(integer, text) from public;
grant execute on function stepsync.cron_field_value(integer, text) to service_role;

create or replace function stepsync.cron_problem(p_expression text)
returns text
language plpgsql
immutable
parallel safe
set search_path = ''
as $$
declare
    field_names constant text[] := array[
        'minute', 'hour', 'day of month', 'month', 'day of week'
    ];
    allowed constant text[] := array[
        '0-59', '0-23', '1-31', '1-12 or JAN-DEC', '0-7 or SUN-SAT (0 and 7 are Sunday)'
    ];
    highs constant integer[] := array[59, 23, 31, 12, 7];
    lows constant integer[] := array[0, 0, 1, 1, 0];
    month_days constant integer[] := array[31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    body text;
    fields text[];
    field_number integer;
    term text;
    range_text text;
    step_text text;
    low integer;
    high integer;
    step integer;
    first_day integer := 32;
    months integer[] := '{}';
begin
    if p_expression is null then
        return null;
    end if;
    -- What follows " #" is the app's own note on the schedule (the legacy executor strips
    -- it too). Names count in any case, as in cron.
    body := btrim(regexp_replace(p_expression, '\s#(\s.*)?$', ''), e' \t\r\n\f\v');
    if body = '' then
        return 'is empty';
    end if;
    fields := regexp_split_to_array(body, '\s+');
    if cardinality(fields) <> 5 then
        return format('has %s fields, not 5', cardinality(fields));
    end if;
    for field_number in 1..5 loop
        foreach term in array string_to_array(fields[field_number], ',') loop
            range_text := split_part(term, '/', 1);
            step := 1;
            if strpos(term, '/') > 0 then
                step_text := substr(term, strpos(term, '/') + 1);
                if step_text !~ '^[0-9]{1,9}$' or step_text::integer = 0 then
                    return format(
                        '%s: the step in %L must be a whole number from 1',
                        field_names[field_number], term
                    );
                end if;
                step := step_text::integer;
            end if;
            if range_text = '*' then
                low := lows[field_number];
                high := highs[field_number];
            elsif strpos(range_text, '-') > 0 then
                low := stepsync.cron_field_value(
                    field_number, upper(split_part(range_text, '-', 1))
                );
                high := stepsync.cron_field_value(
                    field_number, upper(substr(range_text, strpos(range_text, '-') + 1))
                );
                if low is null or high is null then
                    return format(
                        '%s: %L is not a range of values (%s)',
                        field_names[field_number], term, allowed[field_number]
                    );
                end if;
                if high < low then
                    return format(
                        '%s: the range %L runs backwards', field_names[field_number], term
                    );
                end if;
            else
                low := stepsync.cron_field_value(field_number, upper(range_text));
                if low is null then
                    return format(
                        '%s: %L is not a value (%s), *, a range a-b, a step */n or a list',
                        field_names[field_number], term, allowed[field_number]
                    );
                end if;
                -- A single value with a step counts on to the end of the field (5/15).
                high := case when strpos(term, '/') > 0 then highs[field_number] else low end;
            end if;
            if field_number = 3 then
                first_day := least(first_day, low);
            elsif field_number = 4 then
                months := months || array(select generate_series(low, high, step));
            end if;
        end loop;
    end loop;
    -- Cron matches a day when both day fields match if either starts with *, else when
    -- either does; with both to match, a day that no month given has never comes.
    if first_day > 29
        and (fields[3] like '*%' or fields[5] like '*%')
        and first_day > (select max(month_days[m.month]) from unnest(months) as m (month)) then
        return format(
            'day of month: day %s never comes in month(s) %s', first_day, fields[4]
        );
    end if;
    return null;
end
$$;

comment on function stepsync.cron_problem(text) is
'What is wrong with a 5-field cron expression (minute hour day-of-month month '
'day-of-week: numbers, *, ranges a-b, steps */n and a-b/n, lists, JAN-DEC and SUN-SAT; '
'a note may follow " # "), or null when it is valid or null. The service computes the fire '
'times of an expression this accepts (sync/cron.py).';

revoke all on function stepsync.cron_problem(text) from public;
grant execute on function stepsync.cron_problem(text) to service_role;

-- The time zone database's names, read once here: pg_timezone_names reads every zone file
-- (tens of milliseconds), too slow to check each task written. A zone added since (a newer
-- tzdata under a later PostgreSQL) is still found there, the slow way.
create table if not exists stepsync.time_zone_names (
    name text primary key
);

alter table stepsync.time_zone_names enable row level security;
revoke all on stepsync.time_zone_names from public, anon, authenticated;
grant select on stepsync.time_zone_names to service_role;

create policy "Service role reads time zone names" on stepsync.time_zone_names
for select to service_role
using (true);

insert into stepsync.time_zone_names (name)
select z.name from pg_catalog.pg_timezone_names as z
on conflict (name) do nothing;

comment on table stepsync.time_zone_names is
'Names of the time zone database as PostgreSQL knew them when stepsync was installed: the '
'fast path of time_zone_problem.';
comment on column stepsync.time_zone_names.name is 'An IANA time zone name, e.g. Europe/Paris.';
comment on policy "Service role reads time zone names" on stepsync.time_zone_names is
'The service may read the list (the checks run with their owner''s rights).';

create or replace function stepsync.time_zone_problem(p_zone text)
returns text
language plpgsql
stable
set search_path = ''
as $$
begin
    if exists (select from stepsync.time_zone_names as z where z.name = p_zone)
        or exists (select from pg_catalog.pg_timezone_names as z where z.name = p_zone) then
        return null;
    end if;
    return format(
        'unknown time zone %s: use an IANA name such as Europe/Paris or America/New_York',
        coalesce(quote_literal(p_zone), 'null')
    );
end
$$;

comment on function stepsync.time_zone_problem(text) is
'What is wrong with an IANA time zone name (unknown, or spelt another way: abbreviations '
'such as PST and POSIX offsets such as UTC+5 do not follow daylight-saving rules), or '
'null when it names a zone of the time zone database.';

revoke all on function stepsync.time_zone_problem(text) from public;
grant execute on function stepsync.time_zone_problem(text) to service_role;

create or replace function stepsync.check_task_schedule()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    problem text;
begin
    if tg_op = 'UPDATE'
        and new.cron_expression is not distinct from old.cron_expression
        and new.timezone is not distinct from old.timezone
        and new.task_type = old.task_type then
        return new;
    end if;
    problem := stepsync.cron_problem(new.cron_expression);
    if problem is not null then
        raise exception 'cron_expression % %', quote_literal(new.cron_expression), problem
            using errcode = '22023',
            hint = 'Five fields: minute hour day-of-month month day-of-week, e.g. '
            || '"0 9 * * 1-5" (09:00 on weekdays) or "*/15 * * * *".';
    end if;
    problem := stepsync.time_zone_problem(new.timezone);
    if problem is not null then
        raise exception 'timezone: %', problem using errcode = '22023';
    end if;
    return new;
end
$$;

comment on function stepsync.check_task_schedule() is
'Trigger: a scheduled task''s cron_expression and timezone must be valid (clear errors '
'naming the field), checked when they are written. SECURITY DEFINER so that any writer '
'(an owner through the API) can use the checks, which nobody else may call.';

revoke all on function stepsync.check_task_schedule() from public;

create or replace trigger agent_tasks_check_schedule
before insert or update of cron_expression, timezone, task_type on public.agent_tasks
for each row
when (new.task_type = 'scheduled')
execute function stepsync.check_task_schedule();

comment on trigger agent_tasks_check_schedule on public.agent_tasks is
'Refuses an invalid cron expression or time zone on a scheduled task, whoever writes it.';

-- The due tasks in due order (the service's claim, and the legacy executor's own query),
-- and the scheduled tasks that have no next run yet.
create index if not exists agent_tasks_due_idx
on public.agent_tasks (next_run_at)
where task_type = 'scheduled' and status = 'active';

create index if not exists agent_tasks_unarmed_idx
on public.agent_tasks (id)
where task_type = 'scheduled' and status = 'active' and next_run_at is null
and cron_expression is not null;

comment on index public.agent_tasks_due_idx is
'Active scheduled tasks by next fire time: claim_due_schedules walks it in due order.';
comment on index public.agent_tasks_unarmed_idx is
'Active scheduled tasks with a cron expression but no next fire time yet.';

create table if not exists public.task_schedule_fires (
    task_id uuid not null references public.agent_tasks (id) on delete cascade,
    fire_at timestamptz not null,
    -- Copied from the task for RLS without a join.
    user_id uuid not null,
    outcome text not null,
    -- A plain reference: history outlives a purged run.
    run_id uuid,
    missed_fire_times integer not null default 0,
    detail text,
    decided_at timestamptz not null default now(),
    decided_by text,
    constraint task_schedule_fires_pkey primary key (task_id, fire_at),
    constraint task_schedule_fires_outcome_check check (
        outcome in ('started', 'skipped', 'already_run', 'completed', 'refused')
    ),
    constraint task_schedule_fires_missed_check check (missed_fire_times >= 0),
    constraint task_schedule_fires_run_check check (
        (outcome in ('started', 'already_run')) = (run_id is not null)
    )
);

create index if not exists task_schedule_fires_user_id_idx
on public.task_schedule_fires (user_id);

alter table public.task_schedule_fires enable row level security;

revoke all on public.task_schedule_fires from anon;
revoke insert, update, delete, truncate, references, trigger on public.task_schedule_fires
from authenticated;
grant select on public.task_schedule_fires to authenticated;
grant all on public.task_schedule_fires to service_role;

create policy "Owners read the fire times of their tasks" on public.task_schedule_fires
for select to authenticated
using (user_id = (select auth.uid()));

create policy "Service role records fire times" on public.task_schedule_fires
for all to service_role
using (true) with check (true);

comment on table public.task_schedule_fires is
'What became of each fire time of a scheduled task: a run started, skipped because the '
'previous run was still running, already run by the legacy executor, the task completed '
'(max_executions, end_date), or the run refused (invalid steps). One row per task and '
'fire time, so no fire time runs twice.';
comment on column public.task_schedule_fires.task_id is 'The scheduled task.';
comment on column public.task_schedule_fires.fire_at is
'The fire time decided on (for a catch-up after downtime, the latest missed one).';
comment on column public.task_schedule_fires.user_id is 'Owner of the task (RLS).';
comment on column public.task_schedule_fires.outcome is
'started | skipped | already_run | completed | refused.';
comment on column public.task_schedule_fires.run_id is
'The run started for this fire time, or (already_run) the legacy executor''s run.';
comment on column public.task_schedule_fires.missed_fire_times is
'Earlier fire times that passed without a run (downtime) and that this decision covers.';
comment on column public.task_schedule_fires.detail is
'Why: the run still running, the limit reached, the error refusing the run.';
comment on column public.task_schedule_fires.decided_at is 'When the service decided.';
comment on column public.task_schedule_fires.decided_by is 'The worker that decided.';
comment on constraint task_schedule_fires_outcome_check on public.task_schedule_fires is
'The five outcomes of a fire time.';
comment on constraint task_schedule_fires_missed_check on public.task_schedule_fires is
'A count of fire times.';
comment on constraint task_schedule_fires_run_check on public.task_schedule_fires is
'A started or already run fire time names its run; no other outcome does.';
comment on index public.task_schedule_fires_user_id_idx is
'Serves the owners'' read policy and the cascade from a deleted user''s tasks.';
comment on policy "Owners read the fire times of their tasks" on public.task_schedule_fires is
'Owners see what became of their own tasks'' fire times.';
comment on policy "Service role records fire times" on public.task_schedule_fires is
'The service records every fire time it decides (it bypasses RLS; stated for clarity).';

create type stepsync.due_schedule as (
    task_id uuid,
    user_id uuid,
    cron_expression text,
    timezone text,
    next_run_at timestamptz,
    start_date timestamptz,
    end_date timestamptz
);

comment on type stepsync.due_schedule is
'A scheduled task claimed by claim_due_schedules: what the service needs to compute its '
'fire times (cron_expression in timezone, from next_run_at, within start_date).';

revoke all on type stepsync.due_schedule from public;
grant usage on type stepsync.due_schedule to service_role;

create or replace function stepsync.claim_due_schedules(p_now timestamptz, p_limit integer)
returns setof stepsync.due_schedule
language plpgsql
volatile
-- Only the due-time index's ordered walk: a plan kept from a small table never turns
-- into a scan of every task.
set enable_seqscan = off
set enable_bitmapscan = off
set search_path = ''
as $$
declare
    claimed integer;
begin
    if p_now is null then
        raise exception 'now must be given' using errcode = '22023';
    end if;
    if p_limit is null or p_limit not between 1 and 1000 then
        raise exception 'limit must be between 1 and 1000, not %', p_limit
            using errcode = '22023';
    end if;

    -- Due tasks of users in the rollout, oldest fire time first, skipping tasks another
    -- worker holds. Tasks of other users are the legacy executor's, and stay unlocked.
    return query
    select
        t.id, t.user_id, t.cron_expression, t.timezone, t.next_run_at, t.start_date,
        t.end_date
    from public.agent_tasks as t
    where
        t.task_type = 'scheduled'
        and t.status = 'active'
        and t.next_run_at <= p_now
        and stepsync.flag_enabled_for('multi_step_workflows', t.user_id)
    order by t.next_run_at
    limit p_limit
    for no key update skip locked;
    get diagnostics claimed = row_count;

    -- Then tasks that have a cron expression but no next fire time yet.
    if claimed < p_limit then
        return query
        select
            t.id, t.user_id, t.cron_expression, t.timezone, t.next_run_at, t.start_date,
            t.end_date
        from public.agent_tasks as t
        where
            t.task_type = 'scheduled'
            and t.status = 'active'
            and t.next_run_at is null
            and t.cron_expression is not null
            and stepsync.flag_enabled_for('multi_step_workflows', t.user_id)
        order by t.id
        limit p_limit - claimed
        for no key update skip locked;
    end if;
end
$$;

comment on function stepsync.claim_due_schedules(timestamptz, integer) is
'Locks (FOR NO KEY UPDATE SKIP LOCKED) and returns up to p_limit active scheduled tasks of '
'users in the multi_step_workflows rollout that are due at p_now (next_run_at <= p_now), '
'oldest first, then ones with a cron expression and no next_run_at. The caller computes '
'their fire times and calls fire_schedules in the same transaction. Service only.';

revoke all on function stepsync.claim_due_schedules(timestamptz, integer)
from public, anon, authenticated;
grant execute on function stepsync.claim_due_schedules(timestamptz, integer) to service_role;

create or replace function stepsync.fire_schedules(
    p_now timestamptz,
    p_worker text,
    p_task_ids uuid[],
    p_due_ats timestamptz[],
    p_fire_ats timestamptz[],
    p_next_run_ats timestamptz[],
    p_missed integer[],
    p_details jsonb[]
)
returns table (task_id uuid, fire_at timestamptz, outcome text, run_id uuid, detail text)
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
#variable_conflict use_column
declare
    plan record;
    task public.agent_tasks;
    latest record;
    advancing uuid[] := '{}';
    advance_to timestamptz[] := '{}';
    completing uuid[] := '{}';
    recorded_tasks uuid[] := '{}';
    recorded_times timestamptz[] := '{}';
    recorded_outcomes text[] := '{}';
    recorded_runs uuid[] := '{}';
    recorded_missed integer[] := '{}';
    recorded_details text[] := '{}';
    recorded_owners uuid[] := '{}';
begin
    if p_now is null then
        raise exception 'now must be given' using errcode = '22023';
    end if;
    if cardinality(p_task_ids) is distinct from cardinality(p_due_ats)
        or cardinality(p_task_ids) is distinct from cardinality(p_fire_ats)
        or cardinality(p_task_ids) is distinct from cardinality(p_next_run_ats)
        or cardinality(p_task_ids) is distinct from cardinality(p_missed)
        or cardinality(p_task_ids) is distinct from cardinality(p_details) then
        raise exception 'the plan arrays must all have one element per task'
            using errcode = '22023';
    end if;

    for plan in
        select p.*
        from unnest(
            p_task_ids, p_due_ats, p_fire_ats, p_next_run_ats, p_missed, p_details
        ) as p (task_id, due_at, fire_at, next_run_at, missed, details)
        order by p.task_id
    loop
        -- The caller holds the task (claim_due_schedules); a plan made for the task as
        -- it was no longer holds once it changed, and the next claim sees it anew.
        select t.* into task
        from public.agent_tasks as t
        where t.id = plan.task_id
        for no key update;
        if not found
            or task.task_type <> 'scheduled'
            or task.status <> 'active'
            or task.next_run_at is distinct from plan.due_at then
            continue;
        end if;

        task_id := task.id;
        fire_at := coalesce(plan.fire_at, plan.due_at);
        run_id := null;
        detail := null;
        outcome := null;
        if plan.due_at is not null
            and coalesce(task.max_executions, 0) > 0
            and task.total_executions >= task.max_executions then
            -- The legacy rules: a task that reached its limit or its end date is completed
            -- when it next comes due (max_executions 0 means no limit there too).
            outcome := 'completed';
            detail := format('max_executions (%s) reached', task.max_executions);
            completing := completing || task.id;
        elsif plan.due_at is not null and task.end_date < p_now then
            outcome := 'completed';
            detail := format('end_date (%s) passed', task.end_date);
            completing := completing || task.id;
        elsif plan.fire_at is null then
            -- Nothing fires now (first fire time still ahead, or before start_date).
            advancing := advancing || task.id;
            advance_to := advance_to || plan.next_run_at;
            continue;
        else
            advancing := advancing || task.id;
            advance_to := advance_to || plan.next_run_at;
            select
                r.id, r.status, r.step_count, r.trigger_type,
                coalesce(r.started_at, r.created_at) as started_at
            into latest
            from public.agent_task_executions as r
            where r.task_id = task.id
            order by r.created_at desc
            limit 1;
            if exists (
                select from public.task_schedule_fires as f
                where f.task_id = task.id and f.fire_at = plan.fire_at
            ) then
                -- Decided before (next_run_at was set back): never twice.
                continue;
            elsif latest.status in ('pending', 'running')
                -- A legacy run still "running" after 15 minutes died with its Edge
                -- Function (their wall-clock limit is a few minutes).
                and (latest.step_count > 0 or latest.started_at > p_now - interval '15 minutes') then
                outcome := 'skipped';
                detail := format('previous run %s still running', latest.id);
            elsif latest.step_count = 0
                and latest.trigger_type = 'scheduled'
                and latest.started_at >= plan.due_at then
                -- The legacy executor ran this fire time (before the owner joined the
                -- rollout, or before it saw them join).
                outcome := 'already_run';
                run_id := latest.id;
                detail := 'run by the legacy task-executor';
            else
                begin
                    run_id := stepsync.start_task_run(
                        task.id,
                        'scheduled',
                        jsonb_build_object(
                            'fire_at', plan.fire_at, 'missed_fire_times', plan.missed
                        ) || coalesce(plan.details, '{}'::jsonb)
                    );
                    outcome := 'started';
                    if plan.missed > 0 then
                        detail := format('%s earlier fire time(s) missed', plan.missed);
                    end if;
                exception
                    when invalid_parameter_value
                        or object_not_in_prerequisite_state
                        or no_data_found then
                    outcome := 'refused';
                    detail := sqlerrm;
                end;
            end if;
        end if;

        recorded_tasks := recorded_tasks || task.id;
        recorded_times := recorded_times || fire_at;
        recorded_outcomes := recorded_outcomes || outcome;
        recorded_runs := recorded_runs || run_id;
        recorded_missed := recorded_missed || coalesce(plan.missed, 0);
        recorded_details := recorded_details || detail;
        recorded_owners := recorded_owners || task.user_id;
        return next;
    end loop;

    -- One statement per write for the whole batch (each is audited per statement).
    insert into public.task_schedule_fires (
        task_id, fire_at, user_id, outcome, run_id, missed_fire_times, detail, decided_by
    )
    select d.task_id, d.fire_at, d.user_id, d.outcome, d.run_id, d.missed, d.detail, p_worker
    from unnest(
        recorded_tasks, recorded_times, recorded_owners, recorded_outcomes, recorded_runs,
        recorded_missed, recorded_details
    ) as d (task_id, fire_at, user_id, outcome, run_id, missed, detail)
    -- A fire time already decided (next_run_at set back by hand) keeps its first decision.
    on conflict (task_id, fire_at) do nothing;

    update public.agent_tasks as t
    set next_run_at = a.next_run_at, updated_at = now()
    from unnest(advancing, advance_to) as a (id, next_run_at)
    where
        t.id = any(advancing)
        and t.id = a.id
        and t.next_run_at is distinct from a.next_run_at;

    update public.agent_tasks as t
    set status = 'completed', updated_at = now()
    where t.id = any(completing);
end
$$;

comment on function stepsync.fire_schedules(
    timestamptz, text, uuid[], timestamptz[], timestamptz[], timestamptz[], integer[],
    jsonb[]
) is
'Acts on tasks claimed by claim_due_schedules in this transaction, one plan per task '
'(due_at: the next_run_at the plan was made from; fire_at: the fire time to run now, null '
'for none; next_run_at: the fire time after it; missed: earlier fire times passed without a '
'run; details: more for the run''s trigger_data). A task at its max_executions or past its '
'end_date is completed; a fire time while the previous run is still running is skipped; '
'one the legacy executor ran is not run again; otherwise one run starts (trigger_type '
'scheduled, trigger_data with fire_at and missed_fire_times). Each decision is recorded in '
'task_schedule_fires and next_run_at moves on. Returns the decisions. Service only.';

revoke all on function stepsync.fire_schedules(
    timestamptz, text, uuid[], timestamptz[], timestamptz[], timestamptz[], integer[],
    jsonb[]
) from public, anon, authenticated;
grant execute on function stepsync.fire_schedules(
    timestamptz, text, uuid[], timestamptz[], timestamptz[], timestamptz[], integer[],
    jsonb[]
) to service_role;

-- Taking over from the legacy task-executor, user by user.
--
-- For users in the multi_step_workflows rollout stepsync runs every task (schedules:
-- 0250, events: 0260, manual: start_task_run); for the others the legacy Edge Function
-- goes on as it is, still deployed and unchanged. Its scheduled pass reads the due tasks
-- (task_type scheduled, status active, next_run_at <= its now), then for each one inserts
-- a run (status running, none of stepsync's columns: step_count 0), calls the agent,
-- marks the run completed or failed and writes the task's counters and next_run_at from
-- the row it read at the start. Nothing it reads can hide a task from it (it acts as the
-- service role, which bypasses RLS, and the app shows next_run_at), so the line is drawn
-- where it starts a run:
--
-- * its insert locks the task (the lock stepsync's claim takes too, so the two wait for
--   each other) and is refused when the owner is in the rollout, or, for a scheduled run,
--   when the task is no longer due by the executor's own clock (started_at): someone fired
--   this fire time since the executor read the task. Refused, the executor moves on to
--   its next task without calling the agent or writing any counter;
-- * stepsync's scheduler does not start a fire time the legacy executor already ran
--   (fire_schedules: a legacy scheduled run started at or after it).
--
-- Counters: every finished run counts once. stepsync's runs are counted when they finish
-- (finish_runs). A legacy run is counted here when the executor marks it completed or
-- failed; the executor's own counter update that follows is a read-modify-write of values
-- read before the run, so through the service role counters only go up: its update
-- writes what is already there, and one written from an older read (another run finished
-- in between) cannot take counts away.

create or replace function stepsync.guard_legacy_run()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
    task public.agent_tasks;
begin
    select t.* into task
    from public.agent_tasks as t
    where t.id = new.task_id
    for no key update;
    if not found then
        return new;  -- the foreign key refuses it
    end if;
    if stepsync.flag_enabled_for('multi_step_workflows', task.user_id) then
        raise exception 'task % is run by stepsync: its owner is in the multi_step_workflows '
            'rollout', task.id
            using errcode = '55000',
            hint = 'Start it with start_task_run or emit_task_event; stepsync starts its '
            || 'scheduled runs itself.';
    end if;
    if new.trigger_type = 'scheduled'
        and (
            task.status <> 'active'
            or task.next_run_at is null
            or task.next_run_at > coalesce(new.started_at, now())
        ) then
        raise exception 'task % is not due (status %, next run %): its fire time was taken '
            'since it was read', task.id, task.status, task.next_run_at
            using errcode = '55000';
    end if;
    return new;
end
$$;

comment on function stepsync.guard_legacy_run() is
'Trigger: a run another executor inserts already running (the legacy task-executor) is '
'refused when the task''s owner is in the multi_step_workflows rollout, or, scheduled, '
'when the task is no longer due at the run''s started_at. Locks the task first, as the '
'scheduler''s claim does.';

revoke all on function stepsync.guard_legacy_run() from public;

create or replace trigger agent_task_executions_guard_legacy
before insert on public.agent_task_executions
for each row
when (new.step_count = 0 and new.status = 'running')
execute function stepsync.guard_legacy_run();

comment on trigger agent_task_executions_guard_legacy on public.agent_task_executions is
'Keeps the legacy executor off tasks stepsync runs and off fire times already taken.';

create or replace function stepsync.count_legacy_run()
returns trigger
language plpgsql
security definer
set enable_seqscan = off
set search_path = ''
as $$
begin
    update public.agent_tasks as t
    set
        total_executions = t.total_executions + 1,
        successful_executions
        = t.successful_executions + (new.status = 'completed')::integer,
        failed_executions = t.failed_executions + (new.status = 'failed')::integer,
        last_run_at = now(),
        updated_at = now()
    where t.id = new.task_id;
    return null;
end
$$;

comment on function stepsync.count_legacy_run() is
'Trigger: a run without steps (written by the legacy executor) that finishes adds itself '
'to its task''s execution counters, atomically.';

revoke all on function stepsync.count_legacy_run() from public;

create or replace trigger agent_task_executions_count_legacy
after update of status on public.agent_task_executions
for each row
when (
    new.step_count = 0
    and old.status in ('pending', 'running')
    and new.status in ('completed', 'failed')
)
execute function stepsync.count_legacy_run();

comment on trigger agent_task_executions_count_legacy on public.agent_task_executions is
'Counts each legacy run once, when it finishes (stepsync''s runs: finish_runs).';

create or replace function stepsync.keep_task_counters()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
    new.total_executions := greatest(new.total_executions, old.total_executions);
    new.successful_executions := greatest(new.successful_executions, old.successful_executions);
    new.failed_executions := greatest(new.failed_executions, old.failed_executions);
    new.last_run_at := greatest(new.last_run_at, old.last_run_at);
    return new;
end
$$;

comment on function stepsync.keep_task_counters() is
'Trigger: through the service role the execution counters and last_run_at only go up, so '
'the legacy executor''s counter update, computed from the row it read before its run, '
'cannot take away runs counted since.';

revoke all on function stepsync.keep_task_counters() from public;

create or replace trigger agent_tasks_keep_counters
before update of total_executions, successful_executions, failed_executions, last_run_at
on public.agent_tasks
for each row
when (
    current_setting('role') = 'service_role'
    and (
        new.total_executions < old.total_executions
        or new.successful_executions < old.successful_executions
        or new.failed_executions < old.failed_executions
        or new.last_run_at < old.last_run_at
    )
)
execute function stepsync.keep_task_counters();

comment on trigger agent_tasks_keep_counters on public.agent_tasks is
'Counters written back from an older read (the legacy executor) do not go down; owners '
'and database administrators may still set them.';

-- Events: public.emit_task_event starts a run of every active event-based task of that
-- event type whose filters match, for the owners in the multi_step_workflows rollout.
--
-- The legacy rule, kept: a task matches when every key of its
-- event_trigger_config.filters equals the event's value for that key (JSON equality; no
-- filters, or filters that are not an object, match every event of the type); a task
-- that reached max_executions is completed instead of run. Each started run has
-- trigger_type 'event' and the event data as trigger_data.
--
-- The function runs with the caller's rights: a signed-in user reaches only their own
-- tasks (the agent_tasks policies), the service role every user's. Owners outside the
-- rollout are the legacy executor's: their matching tasks are reported, not run, so the
-- app may send each event to both during the rollout and every task runs once.
--
-- An idempotency key makes a retry safe: the same key (per signed-in user, or for the
-- service role) never starts a task twice; the retry gets the first emission's outcome
-- back. Every emission is kept in public.task_events, which owners read for their own.

create index if not exists agent_tasks_event_idx
on public.agent_tasks (event_trigger_type)
where task_type = 'event_based' and status = 'active';

comment on index public.agent_tasks_event_idx is
'Active event-based tasks by event type: the tasks an event may start.';

create table if not exists public.task_events (
    id uuid primary key default gen_random_uuid(),
    -- Whose event: the signed-in emitter, null when the service emitted it for anyone.
    user_id uuid references auth.users (id) on delete cascade,
    event_type public.event_trigger_type_enum not null,
    event_data jsonb not null,
    idempotency_key text,
    results jsonb not null default '[]'::jsonb,
    emitted_at timestamptz not null default now(),
    emitted_by_role text not null default current_user,
    constraint task_events_data_is_object check (jsonb_typeof(event_data) = 'object'),
    constraint task_events_key_length check (length(idempotency_key) between 1 and 200),
    constraint task_events_results_is_array check (jsonb_typeof(results) = 'array')
);

create unique index if not exists task_events_idempotency_idx
on public.task_events (idempotency_key, user_id) nulls not distinct
where idempotency_key is not null;

create index if not exists task_events_user_id_idx on public.task_events (user_id);

alter table public.task_events enable row level security;

revoke all on public.task_events from anon;
revoke update, delete, truncate, references, trigger on public.task_events from authenticated;
grant select, insert on public.task_events to authenticated;
grant all on public.task_events to service_role;

create policy "Owners read their events" on public.task_events
for select to authenticated
using (user_id = (select auth.uid()));

create policy "Owners record their events" on public.task_events
for insert to authenticated
with check (user_id = (select auth.uid()));

create policy "Service role records events" on public.task_events
for all to service_role
using (true) with check (true);

comment on table public.task_events is
'Every event emitted through emit_task_event, with its idempotency key and what it did to '
'each matching task (results: task_id, run_id, outcome, detail).';
comment on column public.task_events.id is 'Event id.';
comment on column public.task_events.user_id is
'The signed-in user who emitted it (their tasks only); null when the service role did.';
comment on column public.task_events.event_type is 'The event type (legacy enum).';
comment on column public.task_events.event_data is
'The event''s data, given to each started run as its trigger_data.';
comment on column public.task_events.idempotency_key is
'Unique per emitter: an emission with a key already used starts nothing.';
comment on column public.task_events.results is
'Per matching task: {task_id, run_id, outcome, detail}.';
comment on column public.task_events.emitted_at is 'When it was emitted.';
comment on column public.task_events.emitted_by_role is
'Database role of the emitter (authenticated, service_role, ...).';
comment on constraint task_events_data_is_object on public.task_events is
'Event data is a JSON object (its keys are what filters compare).';
comment on constraint task_events_key_length on public.task_events is
'An idempotency key is 1 to 200 characters.';
comment on constraint task_events_results_is_array on public.task_events is
'One result per matching task.';
comment on index public.task_events_idempotency_idx is
'One emission per idempotency key and emitter (the service role''s keys share null).';
comment on index public.task_events_user_id_idx is
'Serves the owners'' read policy and the cascade from auth.users.';
comment on policy "Owners read their events" on public.task_events is
'Signed-in users see the events they emitted.';
comment on policy "Owners record their events" on public.task_events is
'emit_task_event, running with the caller''s rights, records the caller''s own events.';
comment on policy "Service role records events" on public.task_events is
'The service role emits for anyone (it bypasses RLS; stated for clarity).';

create or replace function public.emit_task_event(
    p_event_type text,
    p_event_data jsonb,
    p_idempotency_key text default null
)
returns table (task_id uuid, run_id uuid, outcome text, detail text)
language plpgsql
volatile
security invoker
set search_path = ''
as $$
#variable_conflict use_column
declare
    emitter uuid;
    known_type public.event_trigger_type_enum;
    earlier public.task_events;
    matching record;
    results jsonb := '[]'::jsonb;
begin
    if p_event_type is null
        or p_event_type not in (
            select e::text from unnest(enum_range(null::public.event_trigger_type_enum)) as e
        ) then
        raise exception 'unknown event type %', coalesce(quote_literal(p_event_type), 'null')
            using errcode = '22023',
            hint = 'Known event types: ' || array_to_string(
                enum_range(null::public.event_trigger_type_enum)::text[], ', '
            ) || '.';
    end if;
    known_type := p_event_type::public.event_trigger_type_enum;
    if p_event_data is null or jsonb_typeof(p_event_data) <> 'object' then
        raise exception 'event data must be a JSON object, not %',
            coalesce(jsonb_typeof(p_event_data), 'null')
            using errcode = '22023';
    end if;
    if p_idempotency_key is not null
        and (btrim(p_idempotency_key) = '' or length(p_idempotency_key) > 200) then
        raise exception 'idempotency key must be 1 to 200 characters and not blank'
            using errcode = '22023';
    end if;
    if current_setting('role', true) = 'authenticated' then
        emitter := auth.uid();
        if emitter is null then
            raise exception 'a signed-in user is required' using errcode = '42501';
        end if;
    end if;

    if p_idempotency_key is not null then
        -- One emission per key at a time: a concurrent retry waits here, then finds this
        -- one's row (a transaction-level lock, so poolers are fine).
        perform pg_advisory_xact_lock(
            hashtextextended(
                'stepsync.task_events:' || coalesce(emitter::text, '') || ':'
                || p_idempotency_key,
                0
            )
        );
        select e.* into earlier
        from public.task_events as e
        where e.idempotency_key = p_idempotency_key and e.user_id is not distinct from emitter;
        if found then
            if earlier.event_type <> known_type or earlier.event_data <> p_event_data then
                raise exception 'idempotency key % was already used for another event '
                    '(% at %)', quote_literal(p_idempotency_key), earlier.event_type,
                    earlier.emitted_at
                    using errcode = '22023',
                    hint = 'Use a new key for a new event.';
            end if;
            return query
            select
                (r.result ->> 'task_id')::uuid,
                (r.result ->> 'run_id')::uuid,
                'duplicate'::text,
                format(
                    'already emitted at %s (%s)', earlier.emitted_at, r.result ->> 'outcome'
                )
            from jsonb_array_elements(earlier.results) as r (result);
            return;
        end if;
    end if;

    -- The caller's rights decide which tasks exist: RLS shows a user their own.
    for matching in
        select t.id, t.user_id, t.max_executions, t.total_executions
        from public.agent_tasks as t
        where
            t.task_type = 'event_based'
            and t.status = 'active'
            and t.event_trigger_type = known_type
            and (
                jsonb_typeof(t.event_trigger_config -> 'filters') is distinct from 'object'
                or not exists (
                    select
                    from jsonb_each(t.event_trigger_config -> 'filters') as f (key, value)
                    where (p_event_data -> f.key) is distinct from f.value
                )
            )
        order by t.id
    loop
        task_id := matching.id;
        run_id := null;
        detail := null;
        if not stepsync.flag_enabled_for('multi_step_workflows', matching.user_id) then
            outcome := 'legacy';
            detail := 'owner not in the multi_step_workflows rollout: the legacy '
                || 'task-executor runs this task';
        elsif coalesce(matching.max_executions, 0) > 0
            and matching.total_executions >= matching.max_executions then
            update public.agent_tasks as t
            set status = 'completed', updated_at = now()
            where t.id = matching.id;
            outcome := 'completed';
            detail := format('max_executions (%s) reached', matching.max_executions);
        else
            begin
                run_id := stepsync.start_task_run(matching.id, 'event', p_event_data);
                outcome := 'started';
            exception
                when invalid_parameter_value
                    or object_not_in_prerequisite_state
                    or no_data_found then
                outcome := 'refused';
                detail := sqlerrm;
            end;
        end if;
        results := results || jsonb_build_object(
            'task_id', task_id, 'run_id', run_id, 'outcome', outcome, 'detail', detail
        );
        return next;
    end loop;

    insert into public.task_events (
        user_id, event_type, event_data, idempotency_key, results
    )
    values (emitter, known_type, p_event_data, p_idempotency_key, results);
end
$$;

comment on function public.emit_task_event(text, jsonb, text) is
'Emits an event: every active event-based task of type p_event_type whose filters match '
'p_event_data starts a run (trigger_type event, trigger_data = the data), for the owners '
'in the multi_step_workflows rollout; one row per matching task: started (run_id), '
'completed (max_executions reached), refused (invalid steps, detail says why), legacy '
'(owner not in the rollout: the legacy executor runs it) or duplicate (the idempotency '
'key was used before: nothing starts again). A signed-in user reaches their own tasks, '
'the service role everyone''s. Unknown types and non-object data are refused.';

revoke all on function public.emit_task_event(text, jsonb, text) from public, anon;
grant execute on function public.emit_task_event(text, jsonb, text)
to authenticated, service_role;

-- The app's chat around a step run through its chat Edge Function (the agentopia_chat
-- executor), as the legacy task-executor did it around each task run:
--
-- * the run's conversation: the task's conversation_id, else its
--   event_trigger_config.conversation_id, else one the executor derives from the run;
--   recorded on the run (agent_task_executions.conversation_id) at its first step;
-- * its conversation_sessions row exists and is touched (agent, owner, status active,
--   last_active) before and after the call, so the sidebar shows it;
-- * the step's prompt is posted to chat_messages_v2 as the owner's user message, so the
--   chat shows what the agent was asked (once per step: a retried attempt does not post
--   it again; the message carries the step execution id).
--
-- conversation_sessions and chat_messages_v2 are the app's tables, not stepsync's: a
-- database without them (the legacy baseline) skips these writes, and their columns are
-- looked up, so the app's versions of them (a title column or not) all work.

create or replace function stepsync.app_columns(p_table regclass, p_wanted text[])
returns text
language sql
stable
set search_path = ''
as $$
    select string_agg(quote_ident(a.attname), ', ' order by a.attnum)
    from pg_catalog.pg_attribute as a
    where
        a.attrelid = p_table
        and a.attnum > 0
        and not a.attisdropped
        and a.attname = any(p_wanted)
$$;

comment on function stepsync.app_columns(regclass, text[]) is
'Those of p_wanted that are columns of p_table, quoted and comma separated: what a write '
'into an app table of unknown version may name.';

revoke all on function stepsync.app_columns(regclass, text[]) from public;
grant execute on function stepsync.app_columns(regclass, text[]) to service_role;

create or replace function stepsync.touch_chat_session(
    p_conversation_id uuid,
    p_agent_id uuid,
    p_user_id uuid
)
returns boolean
language plpgsql
volatile
set search_path = ''
as $$
declare
    sessions regclass := to_regclass('public.conversation_sessions');
    touched integer;
    columns text;
begin
    if sessions is null then
        return false;
    end if;
    execute
        'update public.conversation_sessions set agent_id = $2, user_id = $3, '
        || 'status = ''active'', last_active = now() where conversation_id = $1'
        using p_conversation_id, p_agent_id, p_user_id;
    get diagnostics touched = row_count;
    if touched = 0 then
        -- A new conversation gets the legacy title; an existing one keeps its own.
        columns := stepsync.app_columns(
            sessions,
            array['conversation_id', 'agent_id', 'user_id', 'title', 'status', 'last_active']
        );
        begin
            execute format(
                'insert into public.conversation_sessions (%1$s) select %1$s '
                || 'from jsonb_populate_record(null::public.conversation_sessions, $1)',
                columns
            )
            using jsonb_build_object(
                'conversation_id', p_conversation_id,
                'agent_id', p_agent_id,
                'user_id', p_user_id,
                'title', 'New Conversation',
                'status', 'active',
                'last_active', now()
            );
        exception when unique_violation then
            -- Another run of the task made it meanwhile (conversation_id is unique in
            -- later versions of the app).
            execute
                'update public.conversation_sessions set last_active = now() '
                || 'where conversation_id = $1'
                using p_conversation_id;
        end;
    end if;
    return true;
end
$$;

comment on function stepsync.touch_chat_session(uuid, uuid, uuid) is
'Makes the app''s conversation_sessions row of a conversation exist and be active now '
'(agent, owner, last_active), as the legacy executor did before and after each chat call; '
'false when the app has no conversation_sessions table. Service only.';

revoke all on function stepsync.touch_chat_session(uuid, uuid, uuid)
from public, anon, authenticated;
grant execute on function stepsync.touch_chat_session(uuid, uuid, uuid) to service_role;

create or replace function stepsync.open_chat_turn(
    p_run_id uuid,
    p_step_execution_id uuid,
    p_agent_id uuid,
    p_derived_conversation_id uuid,
    p_session_id uuid,
    p_text text
)
returns uuid
language plpgsql
volatile
set enable_seqscan = off
set search_path = ''
as $$
declare
    run record;
    configured text;
    conversation uuid;
    messages regclass := to_regclass('public.chat_messages_v2');
    posted boolean;
begin
    select r.id, r.task_id, r.user_id, r.trigger_type, r.conversation_id, t.event_trigger_config
    into run
    from public.agent_task_executions as r
    inner join public.agent_tasks as t on r.task_id = t.id
    where r.id = p_run_id;
    if not found then
        raise exception 'run % not found', p_run_id using errcode = 'P0002';
    end if;

    configured := run.event_trigger_config ->> 'conversation_id';
    conversation := coalesce(
        run.conversation_id,
        case
            when configured ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                then configured::uuid
        end,
        p_derived_conversation_id
    );
    if run.conversation_id is null then
        update public.agent_task_executions as r
        set conversation_id = conversation, updated_at = now()
        where r.id = p_run_id;
    end if;

    -- Like the legacy executor: the session is best effort, the message is not.
    begin
        perform stepsync.touch_chat_session(conversation, p_agent_id, run.user_id);
    exception when others then
        raise warning 'conversation session % not touched: %', conversation, sqlerrm;
    end;

    if messages is null then
        return conversation;
    end if;
    execute
        'select exists (select from public.chat_messages_v2 '
        || 'where conversation_id = $1 and metadata @> $2)'
        into posted
        using conversation, jsonb_build_object('step_execution_id', p_step_execution_id);
    if not posted then
        execute format(
            'insert into public.chat_messages_v2 (%1$s) select %1$s '
            || 'from jsonb_populate_record(null::public.chat_messages_v2, $1)',
            stepsync.app_columns(
                messages,
                array[
                    'conversation_id', 'session_id', 'channel_id', 'role', 'content',
                    'sender_user_id', 'sender_agent_id', 'metadata', 'context'
                ]
            )
        )
        using jsonb_build_object(
            'conversation_id', conversation,
            'session_id', p_session_id,
            'channel_id', null,
            'role', 'user',
            'content', jsonb_build_object('type', 'text', 'text', p_text),
            'sender_user_id', run.user_id,
            'sender_agent_id', null,
            'metadata', jsonb_build_object(
                'target_agent_id', p_agent_id,
                'source', 'scheduler',
                'task_id', run.task_id,
                'trigger_type', run.trigger_type,
                'run_id', run.id,
                'step_execution_id', p_step_execution_id
            ),
            'context', jsonb_build_object(
                'agent_id', p_agent_id,
                'user_id', run.user_id,
                'conversation_id', conversation,
                'session_id', p_session_id
            )
        );
    end if;
    return conversation;
end
$$;

comment on function stepsync.open_chat_turn(uuid, uuid, uuid, uuid, uuid, text) is
'Before a step''s chat call: the run''s conversation (the task''s, its event config''s, or '
'p_derived_conversation_id), recorded on the run; its conversation_sessions row touched; '
'the prompt p_text posted to chat_messages_v2 as the owner''s message, once per step '
'whatever its attempts. App tables that do not exist are skipped. Returns the '
'conversation id. Service only.';

revoke all on function stepsync.open_chat_turn(uuid, uuid, uuid, uuid, uuid, text)
from public, anon, authenticated;
grant execute on function stepsync.open_chat_turn(uuid, uuid, uuid, uuid, uuid, text)
to service_role;
