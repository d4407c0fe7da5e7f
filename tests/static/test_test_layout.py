"""The test tree's own floors: test modules import support code, never each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .container_files import ROOT

TESTS = ROOT / "tests"
TEST_MODULES = sorted(TESTS.rglob("test_*.py"))


def _imported_modules(tree: ast.Module) -> list[str]:
    """Every module an import statement names, relative ones with their leading dots, and
    ``from X import name`` also as ``X.name`` (``from . import test_x`` imports a module)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.append(base)
            names.extend(f"{base.rstrip('.')}.{alias.name}".lstrip(".") for alias in node.names)
    return names


def _is_test_module(name: str) -> bool:
    return any(part.startswith("test_") or part == "conftest" for part in name.split("."))


def test_the_check_sees_test_modules() -> None:
    """The glob finds the suites' modules, and the checker flags the imports it must."""
    assert len(TEST_MODULES) > 20
    flagged = _imported_modules(
        ast.parse(
            "from .test_service import make_event\nfrom .conftest import Spawn\n"
            "from . import test_outage\nimport integration.test_poison\n"
            "from support.services import Spawn\nimport json\n"
        )
    )
    assert [name for name in flagged if _is_test_module(name)] == [
        ".test_service",
        "test_service.make_event",
        ".conftest",
        "conftest.Spawn",
        "test_outage",
        "integration.test_poison",
    ]


@pytest.mark.parametrize("path", TEST_MODULES, ids=lambda path: str(path.relative_to(TESTS)))
def test_no_test_module_imports_another_or_a_conftest(path: Path) -> None:
    """Shared helpers live in support modules (tests/support, tests/fakes.py, ...): a test
    module that imports another test module or a conftest fails here."""
    tree = ast.parse(path.read_text(), filename=str(path))
    offending = [name for name in _imported_modules(tree) if _is_test_module(name)]
    assert not offending, f"{path.relative_to(ROOT)} imports {offending}"
