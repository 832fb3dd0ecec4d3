-- Supabase compatibility for plain PostgreSQL: a test and development fixture.
--
-- Adds what a Supabase project already has and our migrations rely on, each piece only
-- where it is missing, so running it against a real Supabase database changes nothing.
-- Never part of supabase/migrations.

do $bootstrap$
begin
    if not exists (select from pg_roles where rolname = 'anon') then
        create role anon nologin noinherit;
    end if;
    if not exists (select from pg_roles where rolname = 'authenticated') then
        create role authenticated nologin noinherit;
    end if;
    if not exists (select from pg_roles where rolname = 'service_role') then
        create role service_role nologin noinherit bypassrls;
    end if;
    if not exists (select from pg_roles where rolname = 'authenticator') then
        create role authenticator login noinherit;
    end if;
    if not exists (select from pg_roles where rolname = 'supabase_admin') then
        create role supabase_admin nologin;
    end if;
    if not exists (select from pg_roles where rolname = 'supabase_realtime_admin') then
        create role supabase_realtime_admin nologin noinherit;
    end if;
    grant anon, authenticated, service_role to authenticator;
    grant anon, authenticated, service_role to postgres;
end
$bootstrap$;

create schema if not exists extensions;
create schema if not exists auth;
grant usage on schema extensions to anon, authenticated, service_role;
grant usage on schema auth to anon, authenticated, service_role;

create table if not exists auth.users (
    id uuid primary key default gen_random_uuid(),
    email text unique,
    raw_user_meta_data jsonb not null default '{}'::jsonb,
    created_at timestamptz not null default now()
);

-- Same bodies as Supabase's auth schema: claims come from the request.jwt.claims GUC
-- that PostgREST sets per request (the older per-claim GUCs first).
create or replace function auth.uid() returns uuid
language sql stable
as $$
    select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
    )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
    select coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
    )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
    select coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
    )::jsonb
$$;

grant execute on function auth.uid(), auth.role(), auth.jwt()
to anon, authenticated, service_role;

-- Supabase's default grants: the API roles get table privileges in public and RLS
-- decides which rows they see. Tests must face the same defaults.
grant usage on schema public to anon, authenticated, service_role;
alter default privileges in schema public
grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public
grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public
grant execute on functions to anon, authenticated, service_role;

do $publication$
begin
    if not exists (select from pg_publication where pubname = 'supabase_realtime') then
        create publication supabase_realtime;
    end if;
end
$publication$;
