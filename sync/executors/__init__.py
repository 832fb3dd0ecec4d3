"""Executors run one step attempt: in-process callables, HTTP, Supabase Edge Functions."""
