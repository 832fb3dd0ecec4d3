-- The Supabase surface the migrations rely on: roles, auth helpers, publication.
begin;
set local search_path = extensions, public;
select plan(7);

select has_role('anon');
select has_role('authenticated');
select has_role('service_role');
select ok(
    (
        select rolbypassrls from pg_roles
        where rolname = 'service_role'
    ),
    'service_role bypasses RLS'
);

select set_config(
    'request.jwt.claims',
    '{"sub": "00000000-0000-0000-0000-000000000001", "role": "authenticated"}',
    true
);
select is(
    auth.uid(),
    '00000000-0000-0000-0000-000000000001'::uuid,
    'auth.uid() reads the sub claim'
);
select is(auth.role(), 'authenticated', 'auth.role() reads the role claim');
select ok(
    exists (
        select from pg_publication
        where pubname = 'supabase_realtime'
    ),
    'the supabase_realtime publication exists'
);

select * from finish();
rollback;
