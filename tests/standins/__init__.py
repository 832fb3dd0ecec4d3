"""Stand-ins for remote Supabase services that cannot run in the test suite."""
