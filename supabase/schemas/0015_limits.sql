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
