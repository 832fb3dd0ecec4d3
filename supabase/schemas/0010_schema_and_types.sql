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
