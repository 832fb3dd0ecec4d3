"""Executor output must be JSON within the database's limits: the service checks it here,
once, for every executor, so that an output the database would refuse fails its own step
(for good: the same output would be refused again) and never reaches a batch of results."""

from __future__ import annotations

import json
import math
from typing import Any

from sync.executors.base import PermanentStepError

# The database's output_bytes limit (stepsync.input_limits(); tests/test_hostile_limits.py
# holds the two equal). complete_steps refuses a larger output, and its nesting, by itself.
OUTPUT_BYTES = 65_536


def json_output(value: Any) -> Any:
    """Return ``value`` if it round-trips through JSON unchanged in kind and fits the
    output limit, else raise :class:`PermanentStepError` saying why.

    NaN/Infinity are refused too: PostgreSQL's jsonb cannot hold them.
    """
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except RecursionError:
        raise PermanentStepError("executor output nests too deep to be stored as JSON") from None
    except (TypeError, ValueError) as exc:
        raise PermanentStepError(
            f"executor output is not JSON-serialisable ({type(value).__name__}): {exc}"
        ) from None
    size = len(text.encode(errors="surrogatepass"))  # a lone surrogate is the database's to refuse
    if size > OUTPUT_BYTES:
        raise PermanentStepError(
            f"executor output is {size} bytes of JSON, more than the limit of {OUTPUT_BYTES}"
        )
    if isinstance(value, float) and not math.isfinite(value):  # pragma: no cover - dumps refuses
        raise PermanentStepError("executor output is not a finite number")
    return value
