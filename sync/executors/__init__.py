"""Executors run one step attempt: in-process callables, HTTP, Supabase Edge Functions.

``executor_from_setting`` turns the ``STEPSYNC_EXECUTOR`` value into an executor. Each
kind registers a factory under the scheme its setting starts with (``python:``,
``http://``); ``demo`` is a bare name.

Unset, the executor is ``demo`` only on the embedded database: the demo executor makes
its outputs up, and recording made-up outputs as completed runs in a real database would
be a silent failure. With a database URL the executor must be chosen.
"""

from __future__ import annotations

from collections.abc import Callable

from sync.executors.base import Executor
from sync.settings import Settings

ExecutorFactory = Callable[[str, Settings], Executor]


class ExecutorSettingError(ValueError):
    """STEPSYNC_EXECUTOR names an executor that cannot be built."""


def _demo(setting: str, settings: Settings) -> Executor:
    from sync.executors.demo import DemoExecutor

    return DemoExecutor()


def _python(setting: str, settings: Settings) -> Executor:
    from sync.executors.python import PythonExecutor

    return PythonExecutor.from_reference(setting.removeprefix("python:"))


def _http(setting: str, settings: Settings) -> Executor:
    from sync.executors.http import HttpExecutor

    return HttpExecutor(setting)


def _edge_function(setting: str, settings: Settings) -> Executor:
    from sync.executors.edge_function import EdgeFunctionExecutor

    return EdgeFunctionExecutor(
        *_supabase(settings),
        setting.removeprefix("edge:"),
    )


def _agentopia_chat(setting: str, settings: Settings) -> Executor:
    from sync.executors.agentopia_chat import AgentopiaChatExecutor

    return AgentopiaChatExecutor(
        *_supabase(settings),
        settings.edge_function_name,
    )


def _supabase(settings: Settings) -> tuple[str, object]:
    if not settings.supabase_url or not settings.supabase_service_role_key:
        raise ValueError(
            "Edge Function executors need STEPSYNC_SUPABASE_URL and "
            "STEPSYNC_SUPABASE_SERVICE_ROLE_KEY"
        )
    return settings.supabase_url, settings.supabase_service_role_key


# Setting prefix → factory. Longest prefix wins, so "edge:" and "http" never collide.
EXECUTORS: dict[str, ExecutorFactory] = {
    "demo": _demo,
    "python:": _python,
    "http://": _http,
    "https://": _http,
    "edge:": _edge_function,
    "agentopia_chat": _agentopia_chat,
}


def register_executor(prefix: str, factory: ExecutorFactory) -> None:
    EXECUTORS[prefix] = factory


def executor_from_setting(setting: str | None, settings: Settings) -> Executor:
    """Build the executor ``setting`` names, or raise ExecutorSettingError saying why.

    ``None`` (not configured) is the demo executor on the embedded database and an
    error with a database URL."""
    if setting is None:
        if settings.database_url:
            raise ExecutorSettingError(
                "no executor configured: set STEPSYNC_EXECUTOR or pass --executor "
                "(python:package.module:function, an http(s):// URL, edge:<function>, "
                "agentopia_chat); the demo executor makes its outputs up and runs by "
                "default only on the embedded database (--executor demo to use it here)"
            )
        setting = "demo"
    matches = [
        prefix
        for prefix in EXECUTORS
        if setting == prefix or (prefix.endswith((":", "//")) and setting.startswith(prefix))
    ]
    if not matches:
        known = ", ".join(f"{p}…" if p.endswith((":", "//")) else p for p in EXECUTORS)
        raise ExecutorSettingError(
            f"STEPSYNC_EXECUTOR: unknown executor {setting!r}; expected one of: {known}"
        )
    try:
        return EXECUTORS[max(matches, key=len)](setting, settings)
    except ExecutorSettingError:
        raise
    except ValueError as exc:
        raise ExecutorSettingError(f"STEPSYNC_EXECUTOR: {exc}") from None
