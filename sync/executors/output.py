"""Executor output must be JSON: the service checks it here, once, for every executor."""

from __future__ import annotations

import json
import math
from typing import Any

from sync.executors.base import PermanentStepError


def json_output(value: Any) -> Any:
    """Return ``value`` if it round-trips through JSON unchanged in kind, else raise.

    NaN/Infinity are refused too: PostgreSQL's jsonb cannot hold them.
    """
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PermanentStepError(
            f"executor output is not JSON-serialisable ({type(value).__name__}): {exc}"
        ) from None
    if isinstance(value, float) and not math.isfinite(value):  # pragma: no cover - dumps refuses
        raise PermanentStepError("executor output is not a finite number")
    return value
