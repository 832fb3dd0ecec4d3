"""stepsync: multi-step workflows for Supabase agent tasks."""
