"""The backends the contract suite runs on: the in-memory fakes and the confluent-kafka adapters.

One suite (``test_ports.py``), two backends, as arroyo runs its backend mixins: every test takes
``backend`` (parametrized ``fake`` and ``kafka``) and ``clock`` (trio's clock for the run: a
``MockClock`` that jumps for the fakes, the real clock for Kafka). The expectations are written
once, in terms that hold in both times: "consume until N records came, within T seconds" rather
than "after exactly T seconds".

The ``kafka`` backend runs against the session's broker (Tansu unless ``KAFKA_BOOTSTRAP_SERVERS``
names one), each test on a fresh two-partition topic and group; its tests are marked
``integration``, so in CI a skip counts as a failure, like every other broker test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from support.brokers import Broker
from support.port_backends import KAFKA_TEST_TIMEOUT, Backend, FakeBackend, KafkaBackend

# --- fixtures --------------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The ``kafka`` half of the suite is an integration test: never skipped in CI, bounded."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("backend") == "kafka":
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.timeout(KAFKA_TEST_TIMEOUT))


@pytest.fixture(params=["fake", "kafka"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Each backend in turn; the ``kafka`` one needs (and starts) the session's broker."""
    if request.param == "fake":
        yield FakeBackend()
        return
    session_broker: Broker = request.getfixturevalue("broker")
    yield KafkaBackend(session_broker.bootstrap_servers)


@pytest.fixture
def clock(backend: Backend) -> trio.abc.Clock | None:
    """Virtual time that jumps for the fakes; ``None`` (trio's real clock) for Kafka."""
    return trio.testing.MockClock(autojump_threshold=0) if backend.name == "fake" else None


@pytest.fixture
def group() -> str:
    return f"contract-group-{uuid.uuid4().hex}"
