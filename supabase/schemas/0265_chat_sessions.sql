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
