"""Run steps with an in-process Python callable named ``package.module:function``.

The callable receives the :class:`~sync.executors.base.StepRequest` and returns the
step's output (anything JSON-serialisable). It may be a coroutine function (awaited on
the service's loop) or a plain function (run in a thread of its own so it cannot block
the loop). A thread cannot be interrupted: a timed-out or cancelled plain function keeps
running in the background and its result is discarded. The thread is a daemon so that
such a function cannot hold up the process when it shuts down. Raise ``StepError``
subclasses to choose retryable or permanent failures; any other exception is a
retryable failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import threading
from collections.abc import Callable
from typing import Any

from sync.executors.base import StepError, StepRequest


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
                result = await _in_daemon_thread(self.function, request)
                if inspect.isawaitable(result):
                    result = await result
        except StepError:
            raise
        except Exception as exc:
            raise StepError(f"{type(exc).__name__}: {exc}") from exc
        return result

    async def aclose(self) -> None:
        return None


async def _in_daemon_thread(function: Callable[[StepRequest], Any], request: StepRequest) -> Any:
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():  # cancelled meanwhile (timeout, lease lost, shutdown)
            outcome()

    def run() -> None:
        try:
            result = function(request)
        except BaseException as exc:
            outcome = functools.partial(future.set_exception, exc)
        else:
            outcome = functools.partial(future.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(settle, outcome)

    threading.Thread(target=run, name=f"step-{request.step_execution_id}", daemon=True).start()
    return await future
