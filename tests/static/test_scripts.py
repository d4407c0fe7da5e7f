"""The shell scripts a person runs first: shellcheck-clean, and quick on a second start."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .container_files import console_script

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(path for path in (REPO_ROOT / "scripts").iterdir() if path.is_file())

#: Stands in for the venv's python: records each call instead of running pip.
FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../calls"
"""


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_shellcheck_passes(script: Path) -> None:
    """shellcheck reports nothing for each script under scripts/, and each is executable."""
    assert os.access(script, os.X_OK)
    result = subprocess.run(
        [console_script("shellcheck"), str(script)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _checkout_with_venv(tmp_path: Path) -> Path:
    """A copy of ensure-venv, pyproject.toml and constraints.txt beside a venv whose python
    only logs calls."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(REPO_ROOT / "scripts" / "ensure-venv", tmp_path / "scripts")
    shutil.copy2(REPO_ROOT / "pyproject.toml", tmp_path)
    shutil.copy2(REPO_ROOT / "constraints.txt", tmp_path)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def _pip_calls(checkout: Path, extra: str, **environment: str) -> list[str]:
    subprocess.run(
        [checkout / "scripts" / "ensure-venv", extra],
        check=True,
        timeout=30,
        env=os.environ | environment,
    )
    calls = checkout / ".venv" / "calls"
    return calls.read_text().splitlines() if calls.exists() else []


def test_ensure_venv_installs_only_when_pyproject_or_extra_changed(tmp_path: Path) -> None:
    """pip runs on the first start, not on the second, again after pyproject.toml or
    constraints.txt changed, and once for another extra: later starts of scripts/run-local skip
    the install. Every install is constrained by constraints.txt unless UNCONSTRAINED=1."""
    checkout = _checkout_with_venv(tmp_path)
    install = (
        "-m pip install --quiet --disable-pip-version-check --constraint constraints.txt "
        "-e .[local]"
    )
    assert _pip_calls(checkout, "local") == [install]
    assert _pip_calls(checkout, "local") == [install]
    with (checkout / "pyproject.toml").open("a") as pyproject:
        pyproject.write("\n# changed\n")
    assert _pip_calls(checkout, "local") == [install] * 2
    with (checkout / "constraints.txt").open("a") as constraints:
        constraints.write("# changed\n")
    assert _pip_calls(checkout, "local") == [install] * 3
    assert _pip_calls(checkout, "dev")[-1] == install.replace("[local]", "[dev]")
    assert len(_pip_calls(checkout, "local")) == 4
    unconstrained = _pip_calls(checkout, "local", UNCONSTRAINED="1")[-1]
    assert unconstrained == "-m pip install --quiet --disable-pip-version-check -e .[local]"


@pytest.mark.parametrize("script", ["run-local", "test"])
def test_entry_scripts_set_up_through_ensure_venv(script: str) -> None:
    """run-local and test install through ensure-venv, never with a pip call of their own."""
    text = (REPO_ROOT / "scripts" / script).read_text()
    assert "./scripts/ensure-venv" in text
    assert "pip install" not in text
