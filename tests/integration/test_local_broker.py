"""The local broker started by ``--local-broker`` never outlives the service."""

from __future__ import annotations

import os
import signal

import pytest
from support.services import Spawn
from support.waiting import wait_until

#: Exercises no broker behaviour of its own: runs in the Tansu leg only (see .ci/run).
pytestmark = pytest.mark.broker_neutral


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is a process that ended and is waiting for its (new) parent to reap it
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigkill_of_the_service_takes_its_local_broker_with_it(process_control: Spawn) -> None:
    """SIGKILL leaves the service no chance to stop its broker; the kernel stops it instead."""
    app = process_control(args=("--local-broker",))
    [broker] = app.children()
    assert _running(broker)
    os.kill(app.pid, signal.SIGKILL)
    app.process.wait(10)
    wait_until(lambda: not _running(broker), 10, what="the orphaned local broker to end")
