"""SETTINGS, .env.example and the app's environment in docker-compose.yml name the same variables.

The declarations in actors.runtime.settings (listed, in order, by SETTINGS) are the single source
of truth: a variable added to one of the three and not the others fails here, and so does a
default, description or order that drifted.
"""

from __future__ import annotations

import collections

from actors.runtime.settings import SETTINGS

from .container_files import interpolate, read_compose, read_env_example, service_environment

SETTING_NAMES = {setting.variable for setting in SETTINGS}


def _difference(names: set[str], where: str) -> str:
    missing = sorted(SETTING_NAMES - names)
    unknown = sorted(names - SETTING_NAMES)
    return f"{where}: missing {missing or 'nothing'}; not in SETTINGS {unknown or 'nothing'}"


def test_settings_name_each_variable_once() -> None:
    """SETTINGS itself lists no variable twice, so comparing name sets loses nothing."""
    counts = collections.Counter(setting.variable for setting in SETTINGS)
    assert [name for name, count in counts.items() if count > 1] == []


def test_env_example_names_every_setting_and_nothing_else() -> None:
    """.env.example sets exactly the variables of SETTINGS."""
    names = {entry.name for entry in read_env_example()}
    assert names == SETTING_NAMES, _difference(names, ".env.example")


def test_env_example_sets_each_variable_once() -> None:
    """No variable appears twice in .env.example (the later line would silently win)."""
    counts = collections.Counter(entry.name for entry in read_env_example())
    assert [name for name, count in counts.items() if count > 1] == []


def test_env_example_values_are_the_defaults() -> None:
    """Each value in .env.example is the Setting's default, character for character."""
    defaults = {setting.variable: setting.default for setting in SETTINGS}
    wrong = {
        entry.name: (entry.value, defaults[entry.name])
        for entry in read_env_example()
        if entry.name in defaults and entry.value != defaults[entry.name]
    }
    assert wrong == {}, "variable: (.env.example value, SETTINGS default)"


def test_env_example_describes_each_variable_with_its_doc() -> None:
    """The comment line right above each variable is its Setting.doc."""
    docs = {setting.variable: setting.doc for setting in SETTINGS}
    wrong = {
        entry.name: entry.comment
        for entry in read_env_example()
        if entry.name in docs and entry.comment != docs[entry.name]
    }
    assert wrong == {}, "each variable needs '# <Setting.doc>' on the line above it"


def test_env_example_lists_the_variables_in_declaration_order() -> None:
    """.env.example reads in the order the settings are declared, as --help lists them."""
    names = [entry.name for entry in read_env_example()]
    assert names == [setting.variable for setting in SETTINGS]


def test_env_example_groups_variables_under_headers() -> None:
    """Every variable sits under a '# ---- Group ----' header and there is more than one group."""
    entries = read_env_example()
    assert [entry.name for entry in entries if entry.group is None] == []
    assert len({entry.group for entry in entries}) > 1


def test_compose_app_environment_names_every_setting_and_nothing_else() -> None:
    """The app's environment in docker-compose.yml sets exactly the variables of SETTINGS."""
    names = set(service_environment(read_compose()["services"]["app"]))
    assert names == SETTING_NAMES, _difference(names, "docker-compose.yml app environment")


def test_compose_started_with_env_example_as_env_gives_the_app_its_defaults() -> None:
    """With .env a copy of .env.example, compose gives the app each SETTINGS default and the
    broker's in-network address kafka:29092 (not .env.example's host-side localhost:9092)."""
    dot_env = {entry.name: entry.value for entry in read_env_example()}
    environment = service_environment(read_compose()["services"]["app"])
    effective = {name: interpolate(value, dot_env) for name, value in environment.items()}
    assert effective["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:29092"
    defaults = {setting.variable: setting.default for setting in SETTINGS}
    wrong = {
        name: (value, defaults[name])
        for name, value in effective.items()
        if name != "KAFKA_BOOTSTRAP_SERVERS" and value != defaults[name]
    }
    assert wrong == {}, "variable: (value in the app's container, SETTINGS default)"


def test_interpolation_follows_compose() -> None:
    """The helper fills in values as compose does: `:-` on unset or empty, `-` on unset only."""
    variables = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${UNSET:-d}", variables) == "x d d"
    assert interpolate("${SET-d} ${EMPTY-d} ${UNSET-d}", variables) == "x  d"
    assert interpolate("${SET} ${UNSET}", variables) == "x "
    assert interpolate("${SET:-d}") == "d"
