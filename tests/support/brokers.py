"""Brokers: the one a test session uses, and brokers of a test's own, which it may pause
(``SIGSTOP``) and continue (``SIGCONT``).

A paused broker process keeps its sockets: connections stay open and new ones are accepted by
the kernel, but nothing is answered. That is a broker *stall* (a long GC pause, a frozen VM), a
different fault from a cut network path (see ``proxy.py``): requests in flight time out on the
client while the broker may still act on them later.

Each kind of broker is one entry of :data:`BROKER_KINDS`; the ``stallable_broker`` fixture is
parametrized over them, so a new kind (Apache Kafka) is one more starter here.

Synopsis::

    broker = start_stallable("tansu", log_dir=tmp_path)
    broker.pause()       # SIGSTOP
    broker.resume()      # SIGCONT
    broker.stop()
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs

from actors.local_broker import LocalBroker, start_local_broker

__all__ = ["BROKER_KINDS", "Broker", "StallableBroker", "start_stallable"]


@attrs.frozen
class Broker:
    """A broker that answered ``list_topics()``; ``local`` is set when this session started it."""

    bootstrap_servers: str
    local: LocalBroker | None = None


@attrs.define
class StallableBroker:
    """One broker process: where to reach it, and how to pause, continue and stop it."""

    kind: str
    bootstrap_servers: str
    process: subprocess.Popen[bytes]
    _stop: Callable[[], None]
    paused: bool = False

    def pause(self) -> None:
        """Stop the process where it stands (``SIGSTOP``): nothing is answered until resume."""
        os.kill(self.process.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """Let the process run again (``SIGCONT``); harmless when it is not paused."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
        self.paused = False

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Continue (a stopped process would not act on the stop signal), then stop it."""
        self.resume()
        self._stop()


def _start_tansu(log_dir: Path) -> StallableBroker:
    """A fresh Tansu (memory storage) on a free port."""
    with (log_dir / "tansu-stallable.log").open("wb") as output:
        local = start_local_broker(output=output)
    return StallableBroker("tansu", local.bootstrap_servers, local.process, local.stop)


#: Every kind of broker the stall tests run on, by name (the test id).
BROKER_KINDS: Mapping[str, Callable[[Path], StallableBroker]] = {"tansu": _start_tansu}


def start_stallable(kind: str, *, log_dir: Path) -> StallableBroker:
    """Start a broker of ``kind``; it accepts connections, but may not answer requests yet."""
    return BROKER_KINDS[kind](log_dir)
