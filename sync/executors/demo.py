"""The demo executor: deterministic and offline, for trying stepsync without an agent.

It answers every step with a small structured result derived only from the step's
instructions and the context it received, so a run always produces the same outputs
and the context passing between steps is visible in them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sync.executors.base import StepRequest


class DemoExecutor:
    name = "demo"

    async def execute(self, request: StepRequest) -> Any:
        words = request.instructions.split()
        context_json = json.dumps(request.context, sort_keys=True, default=str)
        digest = hashlib.sha256(f"{request.instructions}\n{context_json}".encode()).hexdigest()[:12]
        return {
            "executor": "demo",
            "text": f"[{request.step_name}] {request.instructions.strip()}",
            "word_count": len(words),
            "context_keys": sorted(request.context),
            "context_bytes": len(context_json),
            "fingerprint": digest,
        }

    async def aclose(self) -> None:
        return None
