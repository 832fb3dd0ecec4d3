"""The benchmarks' executor: does nothing and says so (``python:noop_executor:run``)."""

from __future__ import annotations

from sync.executors.base import StepRequest


async def run(request: StepRequest) -> dict:
    return {"ok": True}
