"""The declared dependencies are exactly what the code imports, and the runtime package
imports nothing made for the tests."""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The scripts run from their folder and import one another as top-level modules.
OWN_MODULES = {"sync", "tests"} | {path.stem for path in (ROOT / "scripts").glob("*.py")}
INSTALLED = packages_distributions()  # import name → distributions providing it


def distribution_name(requirement: str) -> str:
    """``psycopg[binary]>=3.2,<4`` → ``psycopg`` (normalised as PyPI compares names)."""
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    return re.sub(r"[-_.]+", "-", name).lower()


RUNTIME = {distribution_name(r) for r in PYPROJECT["project"]["dependencies"]}
DEV = {distribution_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]}


def imported_modules(*folders: str) -> dict[str, set[str]]:
    """Top-level third-party modules imported under ``folders`` → the files importing
    them. A module located with ``importlib.util.find_spec("name")`` counts as imported."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                elif (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "attr", None) == "find_spec"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    names = [node.args[0].value]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "__future__":
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@functools.cache
def distributions_of(module: str) -> frozenset[str]:
    return frozenset(distribution_name(d) for d in INSTALLED.get(module, []))


def test_every_third_party_module_the_runtime_imports_is_a_runtime_dependency() -> None:
    undeclared = {
        module: sorted(files)
        for module, files in imported_modules("sync").items()
        if module not in OWN_MODULES and not distributions_of(module) & RUNTIME
    }
    assert undeclared == {}


def test_every_runtime_dependency_is_imported_by_the_runtime() -> None:
    used = set().union(*(distributions_of(m) for m in imported_modules("sync")))
    assert sorted(RUNTIME - used) == []


def test_the_runtime_imports_nothing_made_for_the_tests() -> None:
    imports = imported_modules("sync")
    assert "tests" not in imports, imports.get("tests")
    for dev_only in DEV - RUNTIME:
        importing = {m: f for m, f in imports.items() if dev_only in distributions_of(m)}
        assert importing == {}, f"{dev_only} is a dev dependency"


def test_tests_and_scripts_import_only_declared_packages() -> None:
    declared = RUNTIME | DEV
    undeclared = {
        module: sorted(files)
        for module, files in imported_modules("tests", "scripts").items()
        if module not in OWN_MODULES and not distributions_of(module) & declared
    }
    assert undeclared == {}


def test_test_only_packages_are_in_the_dev_extra_only() -> None:
    assert {"pytest", "pytest-timeout", "testcontainers", "ruff", "sqlfluff"} <= DEV
    assert not RUNTIME & DEV
