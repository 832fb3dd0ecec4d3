"""Run steps with an in-process Python callable named ``package.module:function``.

The callable receives the :class:`~sync.executors.base.StepRequest` and returns the
step's output (anything JSON-serialisable). It may be a coroutine function (awaited on
the service's loop) or a plain function (run in a worker thread so it cannot block the
loop; a thread cannot be interrupted, so a timed-out plain function keeps running in
the background, but its result is discarded). Raise ``StepError`` subclasses to choose
retryable or permanent failures; any other exception is a retryable failure.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from sync.executors.base import StepError, StepRequest
from sync.executors.output import json_output


class PythonExecutor:
    name = "python"

    def __init__(self, function: Callable[[StepRequest], Any]) -> None:
        if not callable(function):
            raise ValueError(f"{function!r} is not callable")
        self.function = function
        self.reference = f"{function.__module__}:{getattr(function, '__qualname__', function)}"

    @classmethod
    def from_reference(cls, reference: str) -> PythonExecutor:
        """Import ``package.module:function``; a ValueError says what is wrong."""
        module_name, _, attribute = reference.partition(":")
        if not module_name or not attribute:
            raise ValueError(
                f"python executor needs 'python:package.module:function', got {reference!r}"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
        target: Any = module
        for part in attribute.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise ValueError(f"module {module_name!r} has no {attribute!r}") from None
        if not callable(target):
            raise ValueError(f"{reference!r} is not callable")
        return cls(target)

    async def execute(self, request: StepRequest) -> Any:
        try:
            if inspect.iscoroutinefunction(self.function):
                result = await self.function(request)
            else:
                result = await asyncio.to_thread(self.function, request)
                if inspect.isawaitable(result):
                    result = await result
        except StepError:
            raise
        except Exception as exc:
            raise StepError(f"{type(exc).__name__}: {exc}") from exc
        return json_output(result)

    async def aclose(self) -> None:
        return None
