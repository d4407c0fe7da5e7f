"""``python -m actors`` as a person first meets it: --help and --version."""

from __future__ import annotations

import importlib.metadata

import pytest

from actors.__main__ import main
from actors.runtime.settings import SETTINGS


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_variable_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    """--help says settings are environment variables and lists each one as NAME=default,
    followed by the start of its description."""
    text = run_main(capsys, "--help")
    assert "environment variable" in text
    lines = text.splitlines()
    for setting in SETTINGS:
        entry = f"  {setting.variable}={setting.default}"
        assert entry in lines, entry
        description = lines[lines.index(entry) + 1].strip()
        assert setting.doc.startswith(description), (setting.variable, description)


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the distribution's version."""
    text = run_main(capsys, "--version")
    assert text.strip() == f"python -m actors {importlib.metadata.version('user-activity-actors')}"
