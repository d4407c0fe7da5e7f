"""scripts/compose-test, run with a fake `docker` (or none) so that no engine is needed.

The fake records each call in a log, so the tests see what the script asked of Docker: nothing
when it cannot run, and `up --wait`, then pytest, then `down -v` (always) when it can.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .container_files import COMPOSE_TEST, ENV_EXAMPLE

BASH = shutil.which("bash")
pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")

FAKE_DOCKER = """#!/bin/sh
echo "docker $* KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS-unset}" >> "$CALL_LOG"
if [ "$1" = compose ] && [ "$FAKE_COMPOSE" != yes ]; then
  echo "docker: unknown command: docker compose" >&2
  exit 1
fi
if [ "$1" = info ] && [ "$FAKE_ENGINE" != yes ]; then
  echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock." >&2
  exit 1
fi
if [ "$1 $2" = "compose up" ]; then exit "${FAKE_UP_STATUS:-0}"; fi
exit 0
"""

FAKE_PYTHON = """#!/bin/sh
echo "python $* APP_URL=$APP_URL KAFKA_BOOTSTRAP_SERVERS=$KAFKA_BOOTSTRAP_SERVERS" >> "$CALL_LOG"
exit "${FAKE_PYTEST_STATUS:-0}"
"""


def _write_script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def _run(
    tmp_path: Path, path: str, env_file: str | None = None, **variables: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run a copy of the script in a checkout of its own, with ``env_file`` as its .env (none
    by default), so that a developer's own .env or .venv cannot change what it does."""
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    script = Path(shutil.copy2(COMPOSE_TEST, checkout / "scripts"))
    if env_file is not None:
        (checkout / ".env").write_text(env_file)
    log = tmp_path / "calls.log"
    log.touch()
    environment = {
        "PATH": path,
        "HOME": str(tmp_path),
        "CALL_LOG": str(log),
        "PYTHON": str(_write_script(tmp_path / "fake-python", FAKE_PYTHON)),
        **variables,
    }
    assert BASH is not None
    result = subprocess.run(
        [BASH, str(script), "-k", "smoke"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, log.read_text().splitlines()


def _fake_docker_path(tmp_path: Path) -> str:
    """PATH with the fake docker first and the system's tools after it."""
    bin_directory = tmp_path / "bin"
    bin_directory.mkdir()
    _write_script(bin_directory / "docker", FAKE_DOCKER)
    return os.pathsep.join([str(bin_directory), "/usr/bin", "/bin"])


def test_exits_2_and_explains_without_docker(tmp_path: Path) -> None:
    """With no docker command on PATH the script exits 2 and says why."""
    empty = tmp_path / "empty"
    empty.mkdir()
    result, calls = _run(tmp_path, str(empty))
    assert result.returncode == 2, result.stderr
    assert "cannot run" in result.stderr
    assert "no 'docker' command" in result.stderr
    assert calls == []


def test_exits_2_and_explains_without_compose(tmp_path: Path) -> None:
    """With a docker client that lacks `compose` the script exits 2 and says why."""
    result, calls = _run(tmp_path, _fake_docker_path(tmp_path), FAKE_COMPOSE="no")
    assert result.returncode == 2, result.stderr
    assert "'docker compose' is not available" in result.stderr
    assert [call.split()[:2] for call in calls] == [["docker", "compose"]]


def test_exits_2_and_explains_when_no_engine_answers(tmp_path: Path) -> None:
    """When `docker info` fails the script exits 2, quotes the error and starts nothing."""
    result, calls = _run(tmp_path, _fake_docker_path(tmp_path), FAKE_COMPOSE="yes")
    assert result.returncode == 2, result.stderr
    assert "no Docker engine answers" in result.stderr
    assert "Cannot connect to the Docker daemon" in result.stderr
    assert not any(" up " in call or " down " in call for call in calls), calls


def _compose_calls(calls: list[str]) -> list[str]:
    return [call for call in calls if call.startswith(("docker compose up", "docker compose down"))]


def test_runs_up_pytest_down_in_order(tmp_path: Path) -> None:
    """With an engine: up --build --wait, pytest tests/integration on the host, then down -v."""
    result, calls = _run(
        tmp_path,
        _fake_docker_path(tmp_path),
        FAKE_COMPOSE="yes",
        FAKE_ENGINE="yes",
        KAFKA_BOOTSTRAP_SERVERS="localhost:9092",
    )
    assert result.returncode == 0, result.stderr
    steps = [
        call
        for call in calls
        if call.startswith(("docker compose up", "docker compose down", "python"))
    ]
    assert len(steps) == 3, calls
    up, pytest_call, down = steps
    assert up.startswith("docker compose up -d --build --wait ")
    # The host's KAFKA_BOOTSTRAP_SERVERS must not leak into the app's compose environment.
    assert up.endswith("KAFKA_BOOTSTRAP_SERVERS=unset")
    assert pytest_call.startswith("python -m pytest tests/integration -k smoke ")
    assert "APP_URL=http://localhost:3000 " in pytest_call
    assert pytest_call.endswith("KAFKA_BOOTSTRAP_SERVERS=localhost:9092")
    assert down.startswith("docker compose down -v")


def test_takes_the_stack_down_and_reports_failure_when_tests_fail(tmp_path: Path) -> None:
    """A failing pytest still ends in `down -v`, and its exit status is the script's."""
    result, calls = _run(
        tmp_path,
        _fake_docker_path(tmp_path),
        FAKE_COMPOSE="yes",
        FAKE_ENGINE="yes",
        FAKE_PYTEST_STATUS="3",
    )
    assert result.returncode == 3
    assert _compose_calls(calls)[-1].startswith("docker compose down -v")


def test_takes_the_stack_down_when_it_does_not_become_healthy(tmp_path: Path) -> None:
    """When `up --wait` fails no test runs, the stack still goes down and the exit is 1."""
    result, calls = _run(
        tmp_path,
        _fake_docker_path(tmp_path),
        FAKE_COMPOSE="yes",
        FAKE_ENGINE="yes",
        FAKE_UP_STATUS="1",
    )
    assert result.returncode == 1
    assert not any(call.startswith("python") for call in calls)
    assert _compose_calls(calls)[-1].startswith("docker compose down -v")


def _app_url(calls: list[str]) -> str:
    (pytest_call,) = [call for call in calls if call.startswith("python")]
    return pytest_call.split("APP_URL=")[1].split()[0]


@pytest.mark.parametrize(
    ("env_file", "shell", "expected"),
    [
        ("HTTP_PORT=3456\n", {}, "http://localhost:3456"),
        ("# a comment\nexport HTTP_PORT='3456' # the app's port\n", {}, "http://localhost:3456"),
        ("HTTP_PORT=3456\n", {"HTTP_PORT": "4567"}, "http://localhost:4567"),
        ("HTTP_PORT=\n", {}, "http://localhost:3000"),
        ("LOG_LEVEL=DEBUG\n", {}, "http://localhost:3000"),
    ],
    ids=["env-file", "quoted-exported", "shell-wins", "empty", "unset"],
)
def test_targets_the_port_compose_publishes(
    tmp_path: Path, env_file: str, shell: dict[str, str], expected: str
) -> None:
    """The tests go to the HTTP_PORT compose reads: the shell's, else .env's, else 3000."""
    result, calls = _run(
        tmp_path,
        _fake_docker_path(tmp_path),
        env_file,
        FAKE_COMPOSE="yes",
        FAKE_ENGINE="yes",
        **shell,
    )
    assert result.returncode == 0, result.stderr
    assert _app_url(calls) == expected


def test_targets_the_env_example_port_when_copied_to_env(tmp_path: Path) -> None:
    """With .env a copy of .env.example the tests go to its HTTP_PORT (3000)."""
    result, calls = _run(
        tmp_path,
        _fake_docker_path(tmp_path),
        ENV_EXAMPLE.read_text(),
        FAKE_COMPOSE="yes",
        FAKE_ENGINE="yes",
    )
    assert result.returncode == 0, result.stderr
    assert _app_url(calls) == "http://localhost:3000"
