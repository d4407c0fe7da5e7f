"""A TCP proxy that a test can cut and restore, to simulate a broker outage.

The broker keeps running (its in-memory data survives) while the service loses its path to it.
The broker must advertise the proxy's address, so that clients reconnect through the proxy
after the first metadata answer.

Synopsis::

    with TcpProxy(listen_port=proxy_port, target_port=broker_port) as proxy:
        proxy.cut()        # drop open connections, refuse new ones (accept, then close)
        proxy.restore()    # forward again
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

HOST = "127.0.0.1"


class TcpProxy:
    def __init__(self, *, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener = socket.create_server((HOST, listen_port), reuse_port=False)
        self._listener.settimeout(0.1)
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)

    def __enter__(self) -> TcpProxy:
        self._acceptor.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._acceptor.join(timeout=2)
        self._listener.close()
        self._drop_all()

    @property
    def forwarding(self) -> bool:
        return self._forwarding.is_set()

    def cut(self) -> None:
        """Stop forwarding: open connections are dropped, new ones are closed at once."""
        self._forwarding.clear()
        self._drop_all()

    def restore(self) -> None:
        self._forwarding.set()

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._open = self._open, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._forwarding.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection((HOST, self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._open.difference_update((source, sink))
