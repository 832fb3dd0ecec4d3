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
