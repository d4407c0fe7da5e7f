"""Small, strict readers for the container files, shared by the static tests.

Synopsis::

    stages = read_dockerfile(ROOT / "Dockerfile")       # {"base": Stage(...), ...}
    stages["runtime"].effective(stages)                 # instructions, inherited ones first
    image_files(stages, "test")                         # {"/app/README.md": ROOT/"README.md", ...}
    compose = read_compose()                            # the parsed docker-compose.yml
    env = read_env_example()                            # [EnvEntry(name, value, comment, ...)]
    interpolate("${HTTP_PORT:-3000}")                   # "3000": defaults only, never os.environ
    interpolate("${HTTP_PORT:-3000}", {"HTTP_PORT": "1"})  # "1": as compose with that .env
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import sysconfig
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
COMPOSE_TEST = ROOT / "scripts" / "compose-test"
#: The compose-spec JSON schema (Apache-2.0, LICENSE.compose-spec beside it), copied from
#: check-jsonschema 0.39.0's vendored copy so that the check does not move with that package.
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "compose-spec.json"


# --- Dockerfile -----------------------------------------------------------------------------


@attrs.frozen
class Instruction:
    """One Dockerfile instruction, continuation lines joined; ``line`` is where it starts."""

    keyword: str
    arguments: str
    line: int


@attrs.frozen
class Stage:
    """A build stage: ``parent`` is the FROM image, or the name of an earlier stage."""

    name: str
    parent: str
    instructions: tuple[Instruction, ...]

    def effective(self, stages: dict[str, Stage]) -> list[Instruction]:
        """This stage's instructions preceded by those it inherits from earlier stages."""
        inherited = stages[self.parent].effective(stages) if self.parent in stages else []
        return [*inherited, *self.instructions]


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split ``text`` into instructions: comments dropped, ``\\`` continuations joined.

    Comment lines inside a continuation are dropped as Docker does. Parser directives and
    heredocs are not supported (the Dockerfile uses neither beyond ``# syntax``).
    """
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if not continued:
            joined = " ".join(part for part in pending if part)
            keyword, _, arguments = joined.partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
            pending = []
    if pending:
        raise ValueError(f"line {start}: continuation runs past the end of the file")
    return instructions


def split_stages(instructions: list[Instruction]) -> dict[str, Stage]:
    """Group instructions by stage, keyed by stage name (or its index when unnamed)."""
    stages: dict[str, Stage] = {}
    current: tuple[str, str] | None = None
    body: list[Instruction] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            if current is not None:
                stages[current[0]] = Stage(current[0], current[1], tuple(body))
            words = [word for word in instruction.arguments.split() if not word.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            current, body = (name, words[0]), []
        elif current is None:
            if instruction.keyword != "ARG":
                raise ValueError(f"line {instruction.line}: {instruction.keyword} before FROM")
        else:
            body.append(instruction)
    if current is not None:
        stages[current[0]] = Stage(current[0], current[1], tuple(body))
    return stages


def read_dockerfile(path: Path = DOCKERFILE) -> dict[str, Stage]:
    """The stages of the Dockerfile at ``path``, in file order."""
    return split_stages(parse_dockerfile(path.read_text()))


def last(instructions: list[Instruction], keyword: str) -> Instruction | None:
    """The last instruction with ``keyword``: the one in force for USER, CMD, HEALTHCHECK."""
    matching = [instruction for instruction in instructions if instruction.keyword == keyword]
    return matching[-1] if matching else None


def copy_sources(instruction: Instruction) -> list[str]:
    """The source paths of a COPY or ADD (flags and destination left out)."""
    words = [word for word in instruction.arguments.split() if not word.startswith("--")]
    return words[:-1]


def build_chain(stages: dict[str, Stage], target: str) -> list[Stage]:
    """The stages a build of ``target`` goes through, the first FROM of an image first."""
    chain = [stages[target]]
    while chain[0].parent in stages:
        chain.insert(0, stages[chain[0].parent])
    return chain


def image_files(
    stages: dict[str, Stage], target: str, context: Path = ROOT
) -> dict[PurePosixPath, Path]:
    """Every file the COPY and ADD lines of ``target``'s build chain take from ``context``, as
    ``{path in the image: path in the context}``, with ``.dockerignore``'s exclusions applied.

    Follows Docker's rules for local sources: a directory's contents (not the directory itself)
    go into the destination; a file goes to the destination, or into it when the destination
    ends with ``/`` or there are several sources; a relative destination is resolved against the
    WORKDIR in force. ``--from`` copies are left out (they take nothing from the context);
    wildcards and URLs raise ValueError.
    """
    patterns = read_dockerignore(context / ".dockerignore")
    workdir = PurePosixPath("/")
    files: dict[PurePosixPath, Path] = {}
    for stage in build_chain(stages, target):
        for instruction in stage.instructions:
            if instruction.keyword == "WORKDIR":
                workdir = workdir / instruction.arguments.strip()
            if instruction.keyword not in {"COPY", "ADD"} or "--from" in instruction.arguments:
                continue
            words = [word for word in instruction.arguments.split() if not word.startswith("--")]
            sources, destination = words[:-1], words[-1]
            target_path = workdir / destination
            into = destination.endswith("/") or len(sources) > 1
            for source in sources:
                if any(character in source for character in "*?[") or "://" in source:
                    raise ValueError(f"line {instruction.line}: unsupported source {source!r}")
                path = context / source
                if path.is_dir():
                    for file in sorted(path.rglob("*")):
                        relative = file.relative_to(context).as_posix()
                        if file.is_file() and not is_ignored(relative, patterns):
                            files[target_path / file.relative_to(path).as_posix()] = file
                elif path.is_file() and not is_ignored(source, patterns):
                    files[target_path / path.name if into else target_path] = path
                else:
                    raise ValueError(f"line {instruction.line}: {source!r} is not in the context")
    return files


# --- .dockerignore ----------------------------------------------------------------------------


def read_dockerignore(path: Path = DOCKERIGNORE) -> list[str]:
    """The patterns of ``.dockerignore`` in order, comments and blank lines dropped."""
    patterns = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            patterns.append(line)
    return patterns


def _pattern_matches(pattern: str, path: str) -> bool:
    pattern = pattern.strip("/")
    parts = path.strip("/").split("/")
    # A pattern that matches a directory excludes everything below it, so try every prefix.
    for end in range(1, len(parts) + 1):
        candidate = "/".join(parts[:end])
        if fnmatch.fnmatchcase(candidate, pattern):
            return True
        if pattern.startswith("**/"):
            rest = pattern[3:]
            for begin in range(end):
                if fnmatch.fnmatchcase("/".join(parts[begin:end]), rest):
                    return True
    return False


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out: the last match decides."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if _pattern_matches(pattern.removeprefix("!"), path):
            ignored = not negated
    return ignored


# --- docker-compose.yml -----------------------------------------------------------------------


def read_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """docker-compose.yml as PyYAML reads it (values are not interpolated)."""
    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict):
        raise TypeError(f"{path.name}: expected a mapping at the top level")
    return document


_INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<colon>:?)-(?P<default>[^}]*))?\}")


def interpolate(value: object, variables: Mapping[str, str] | None = None) -> str:
    """``value`` as compose fills it in from ``variables`` (its shell environment and .env),
    none by default: ``${VAR:-default}`` gives the default when VAR is unset or empty,
    ``${VAR-default}`` only when it is unset, ``${VAR}`` the empty string when unset."""
    variables = variables or {}

    def replace(match: re.Match[str]) -> str:
        value = variables.get(match.group("name"))
        default = match.group("default") or ""
        if value is None or (match.group("colon") and value == ""):
            return default
        return value

    return _INTERPOLATION.sub(replace, str(value))


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a mapping, whether written as a mapping or a list."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        return {name: value for name, _, value in pairs}
    return {name: "" if value is None else str(value) for name, value in environment.items()}


def healthcheck_command(service: dict[str, Any]) -> str:
    """The command of a service's healthcheck as one string, without ``CMD``/``CMD-SHELL``."""
    test = service["healthcheck"]["test"]
    if isinstance(test, str):
        return test
    if test and test[0] in {"CMD", "CMD-SHELL"}:
        return " ".join(str(word) for word in test[1:])
    return " ".join(str(word) for word in test)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)")
_UNIT_MS = {"h": 3_600_000.0, "m": 60_000.0, "s": 1000.0, "ms": 1.0, "us": 0.001, "ns": 1e-6}


def duration_ms(value: object) -> float:
    """A compose duration such as ``30s`` or ``1m30s`` in milliseconds."""
    text = str(value).strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a compose duration: {value!r}")
    return sum(float(number) * _UNIT_MS[unit] for number, unit in parts)


def parse_listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` as ``{NAME: (host, port)}``."""
    listeners = {}
    for item in value.split(","):
        name, separator, address = item.strip().partition("://")
        if not separator:
            raise ValueError(f"not a listener: {item!r}")
        host, _, port = address.rpartition(":")
        listeners[name] = (host, int(port))
    return listeners


def parse_published_port(entry: object) -> tuple[str, int, int]:
    """A short-syntax ``ports`` entry (defaults interpolated) as (host ip, host port, port)."""
    text = interpolate(entry).removesuffix("/tcp")
    parts = text.split(":")
    if len(parts) == 3:
        return parts[0], int(parts[1]), int(parts[2])
    if len(parts) == 2:
        return "", int(parts[0]), int(parts[1])
    raise ValueError(f"a ports entry should publish host:container, got {entry!r}")


# --- comments ---------------------------------------------------------------------------------

_COMMENT = re.compile(r"(?:^|\s)#(?P<text>.*)$")
_PATH = re.compile(r"\.?[\w-]+(?:\.[\w-]+)*(?:/[\w.-]+)*/?")
#: What a name ends with when it cites a file, beside any name holding a ``/``.
_CITED_SUFFIXES = {".md", ".yml", ".yaml", ".toml", ".txt", ".py", ".json", ".example"}


def cited_paths(text: str) -> list[str]:
    """The relative file paths cited in the ``#`` comments of ``text``: words with a ``/`` or
    a file suffix such as ``.md``. Absolute paths, URLs, image references (``a/b:tag``),
    globs, ``NAME=value`` and ``host:port`` words are left out."""
    paths = []
    for line in text.splitlines():
        comment = _COMMENT.search(line)
        if comment is None:
            continue
        for raw in comment.group("text").split():
            word = raw.strip("`'\"()[]{},;").removesuffix("'s").rstrip(".:")
            if not word or any(character in word for character in ":=$*<>|@") or word[0] == "/":
                continue
            if _PATH.fullmatch(word) and ("/" in word or Path(word).suffix in _CITED_SUFFIXES):
                paths.append(word)
    return paths


# --- .env.example -----------------------------------------------------------------------------


@attrs.frozen
class EnvEntry:
    """One ``NAME=value`` line, with the comment line right above it (``None`` if there is none)
    and the group header it falls under (``None`` before the first header)."""

    name: str
    value: str
    comment: str | None
    group: str | None
    line: int


_HEADER = re.compile(r"^# -{2,} (?P<title>.+?) -{2,}$")
_ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")


def read_env_example(path: Path = ENV_EXAMPLE) -> list[EnvEntry]:
    """Every assignment of ``.env.example``; raises ValueError on a line that is neither an
    assignment, a comment nor blank."""
    entries = []
    previous: str | None = None
    group: str | None = None
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        header = _HEADER.match(line)
        assignment = _ASSIGNMENT.match(line)
        if header:
            group = header.group("title")
        elif assignment:
            comment = previous[1:].strip() if previous and previous.startswith("#") else None
            entries.append(
                EnvEntry(
                    assignment.group("name"), assignment.group("value"), comment, group, number
                )
            )
        elif line and not line.startswith("#"):
            raise ValueError(f"{path.name}:{number}: not NAME=value nor a comment: {raw!r}")
        previous = line
    return entries


def console_script(name: str) -> str:
    """The path of a console script installed by the test extra (next to this interpreter)."""
    found = shutil.which(name, path=sysconfig.get_path("scripts")) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found
