"""The package keeps its floors: each module imports only its own unit and lower floors, the
third-party boundaries hold, the in-memory doubles stand on the ports, and ARCHITECTURE.md's
drawing is the real tree."""

from __future__ import annotations

from pathlib import Path

from . import floors


def test_every_import_respects_the_floors() -> None:
    assert floors.violations() == []


def test_a_reversed_import_is_reported() -> None:
    # The check itself can fail: a domain value importing the supervisor breaks a floor.
    assert floors._check("actors.domain.events", "actors.domain", "actors.supervisor")
    assert floors._check("actors.store", "actors.store", "actors.consumer")
    assert floors._check("actors.kafka.ports", "actors.kafka", "actors.http.app")
    assert floors._check("actors.runtime.logs", "actors.runtime", "confluent_kafka")
    assert floors._check("actors.supervisor", "actors.supervisor", "actors.devtools")
    assert floors._check("actors.kafka.config", "actors.kafka", "actors.runtime.settings") is None


def test_every_module_stands_on_a_floor() -> None:
    names = {module.name for module in floors.modules()} - {"actors"}
    assert names
    assert [name for name in sorted(names) if floors.unit_of(name) is None] == []


def test_the_kafka_fakes_import_only_the_ports_and_below() -> None:
    fakes = Path(__file__).resolve().parents[1] / "fakes.py"
    imported = set(floors._imports(fakes))
    ours = {name for name in imported if name.startswith("actors.")}
    assert ours, "fakes.py should implement the ports it imports"
    kafka_floor = floors.floor_of("actors.kafka")
    assert kafka_floor is not None
    levels = {name: floors.floor_of(floors.unit_of(name) or "") for name in ours}
    assert {name: level for name, level in levels.items() if (level or 99) > kafka_floor} == {}
    assert not {name for name in imported if name.split(".")[0] == "confluent_kafka"}


def test_architecture_shows_the_real_tree() -> None:
    text = floors.ARCHITECTURE.read_text()
    assert floors.current_block(text) == floors.architecture_block(), (
        "ARCHITECTURE.md's floors are stale: run `.venv/bin/python -m tests.static.floors`"
    )
