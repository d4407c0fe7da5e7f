"""The service under test as a process: spawned with the tests' settings, driven over real HTTP.

Synopsis::

    services = Services(broker=broker, topic=topic, group=group, tmp_path=tmp_path, app_url=None)
    app = services.spawn({"PUBLISH_TIMEOUT_MS": "2000"})     # healthy, ready to use
    body = app.post_event(user_id="u1")
    app.wait_processed({body["eventId"]})
    assert app.terminate() == 0
    services.close()                                         # stops whatever is left
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs
import httpx
import pytest

from actors.devtools.local_broker import free_port
from actors.runtime.settings import SETTINGS

from .brokers import Broker
from .waiting import wait_until

__all__ = [
    "FAST_SETTINGS",
    "HEALTH_TIMEOUT",
    "REPO_ROOT",
    "ServiceHandle",
    "ServiceProcess",
    "Services",
    "Spawn",
    "rss_bytes",
    "spawn_module",
]

REPO_ROOT = Path(__file__).resolve().parents[2]

#: How long a spawned service may take to answer ``GET /health`` with 200 (topic created,
#: consumer group joined: about 1 s of that is Tansu holding the first JoinGroup).
HEALTH_TIMEOUT = 30.0


#: Settings every spawned service gets (see the broker notes: fast group timings and fetches).
FAST_SETTINGS = {
    "HTTP_HOST": "127.0.0.1",
    "KAFKA_SESSION_TIMEOUT_MS": "1000",
    "KAFKA_HEARTBEAT_INTERVAL_MS": "300",
    "KAFKA_FETCH_WAIT_MAX_MS": "100",
}

_DEFAULTS = {setting.variable: setting.default for setting in SETTINGS}


@attrs.define
class ServiceHandle:
    """Real HTTP to a running service, spawned or external."""

    base_url: str
    topic: str
    group: str
    name: str = "service"
    http: httpx.Client = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.http = self._new_client()

    def _new_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            timeout=10.0,
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=100),
        )

    def drop_connections(self) -> None:
        """Close the pooled keep-alive connections; later requests open new ones."""
        self.http.close()
        self.http = self._new_client()

    def health(self) -> httpx.Response:
        return self.http.get("/health")

    def post_event(
        self, *, user_id: str, event_type: str = "LOGIN", payload: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """POST /events/generate; asserts 201 and returns the body."""
        body: dict[str, Any] = {"userId": user_id, "eventType": event_type}
        if payload is not None:
            body["payload"] = payload
        response = self.http.post("/events/generate", json=body)
        assert response.status_code == 201, f"{response.status_code}: {response.text}"
        created: dict[str, Any] = response.json()
        return created

    def processed(self) -> list[dict[str, Any]]:
        """GET /events/processed; asserts 200."""
        response = self.http.get("/events/processed")
        assert response.status_code == 200, f"{response.status_code}: {response.text}"
        events: list[dict[str, Any]] = response.json()
        return events

    def wait_processed(self, event_ids: set[str], timeout: float = 10) -> list[dict[str, Any]]:
        """Wait until every id in ``event_ids`` is listed; returns the whole listing."""

        def listing() -> list[dict[str, Any]] | None:
            events = self.processed()
            return events if event_ids <= {event["eventId"] for event in events} else None

        return wait_until(listing, timeout, what=f"{len(event_ids)} event(s) in {self.name}")

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> dict[str, Any]:
        last = "no answer"
        deadline = time.monotonic() + timeout
        while True:
            self._check_running()
            try:
                response = self.http.get("/health", timeout=1.0)
            except httpx.TransportError as error:
                last = repr(error)
            else:
                if response.status_code == 200:
                    status: dict[str, Any] = response.json()
                    return status
                last = f"{response.status_code} {response.text}"
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{self.name} at {self.base_url} not healthy within {timeout:g} s; last "
                    f"answer: {last}{self._diagnostics()}",
                    pytrace=False,
                )
            time.sleep(0.05)

    def _check_running(self) -> None:
        """Spawned processes fail fast when the process died."""

    def _diagnostics(self) -> str:
        return ""

    def close(self) -> None:
        self.http.close()


@attrs.define
class ServiceProcess(ServiceHandle):
    """A service this test started: its process, its output file, and how to stop it."""

    process: subprocess.Popen[bytes] = attrs.field(kw_only=True)
    log_path: Path = attrs.field(kw_only=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = 15) -> int:
        """SIGTERM, wait for the exit and return the exit code.

        Raises:
            AssertionError: the process was still running ``timeout`` seconds later (it is
                killed first).
        """
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} still running {timeout:g} s after SIGTERM; killed"
            ) from None

    def kill(self) -> int:
        """SIGKILL and reap; returns the exit code (``-9`` unless it had already exited)."""
        if self.alive():
            self.process.kill()
        return self.process.wait()

    def stop(self) -> None:
        """Teardown: gracefully if it can, by force if it must; never raises."""
        with contextlib.suppress(AssertionError):
            self.terminate()
        self.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of output, without the access lines of polling GETs
        (a test waiting for health would otherwise fill the tail with them)."""
        kept = [line for line in self.log_text().splitlines() if not polling_access_line(line)]
        return "\n".join(kept[-lines:])

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far; other output (tracebacks) is left out."""
        parsed = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    parsed.append(record)
        return parsed

    def wait_for_logs(
        self, match: Callable[[dict[str, Any]], bool], *, count: int = 1, timeout: float = 10
    ) -> list[dict[str, Any]]:
        """Wait until at least ``count`` log lines satisfy ``match``; returns all that do."""

        def matching() -> list[dict[str, Any]] | None:
            found = [line for line in self.log_lines() if match(line)]
            return found if len(found) >= count else None

        return wait_until(matching, timeout, what=f"{count} matching log line(s) of {self.name}")

    def children(self) -> list[int]:
        """Pids whose parent is this process (Linux /proc)."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # pid (comm) state ppid ...; comm may hold spaces and parentheses
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == self.pid:
                    pids.append(int(stat.parent.name))
        return pids

    def _check_running(self) -> None:
        if not self.alive():
            pytest.fail(
                f"{self.name} exited with code {self.process.returncode} before it was healthy"
                f"{self._diagnostics()}",
                pytrace=False,
            )

    def _diagnostics(self) -> str:
        return f"\n--- {self.name} output ({self.log_path}), last lines:\n{self.log_tail()}"


def polling_access_line(line: str) -> bool:
    """Whether ``line`` is the JSON access line of a GET."""
    if '"actors.http.access"' not in line:
        return False
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("method") == "GET"


class Spawn(Protocol):
    """Start another service process (see :meth:`Services.spawn`)."""

    def __call__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        args: Sequence[str] = (),
        wait_healthy: bool = True,
        bootstrap_servers: str | None = None,
    ) -> ServiceProcess: ...


class Services:
    """The ``service`` fixture: starts services for one test and stops them all afterwards.

    Every process of a test shares the test's topic and consumer group, so a second
    ``spawn()`` after ``terminate()`` is a restart.
    """

    def __init__(
        self,
        *,
        broker: Broker,
        topic: str,
        group: str,
        tmp_path: Path,
        app_url: str | None,
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.group = group
        self.tmp_path = tmp_path
        self.app_url = app_url
        self.processes: list[ServiceProcess] = []
        self._external: ServiceHandle | None = None

    @property
    def external(self) -> bool:
        return self.app_url is not None

    def __call__(self, env: Mapping[str, str] | None = None) -> ServiceHandle:
        """A healthy service: a new process, or in external mode the one at ``APP_URL``."""
        if self.app_url is None:
            return self.spawn(env)
        if env:
            raise RuntimeError(
                "settings cannot be changed on an external service; request process_control"
            )
        if self._external is None:
            self._external = ServiceHandle(
                base_url=self.app_url, topic=self.topic, group=self.group, name="external service"
            )
            self._external.wait_healthy()
        return self._external

    def environment(
        self, port: int, overrides: Mapping[str, str], bootstrap_servers: str | None
    ) -> dict[str, str]:
        """The child's environment: none of the service's variables leak in from ours."""
        env = {key: value for key, value in os.environ.items() if key not in _DEFAULTS}
        env.pop("APP_URL", None)
        env |= FAST_SETTINGS | {
            "PYTHONUNBUFFERED": "1",
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers or self.broker.bootstrap_servers,
            "KAFKA_TOPIC": self.topic,
            "KAFKA_CONSUMER_GROUP": self.group,
            "HTTP_PORT": str(port),
        }
        return env | dict(overrides)

    def spawn(
        self,
        env: Mapping[str, str] | None = None,
        *,
        args: Sequence[str] = (),
        wait_healthy: bool = True,
        bootstrap_servers: str | None = None,
        module: str = "actors",
    ) -> ServiceProcess:
        """Start ``python -m actors`` with the test's settings plus ``env``.

        Args:
            env: extra or overriding variables (``HTTP_PORT`` included, if a test must).
            args: command-line arguments, e.g. ``("--local-broker",)``.
            wait_healthy: wait (bounded) until ``GET /health`` answers 200.
            bootstrap_servers: another address for the broker, e.g. a proxy in front of it.
            module: the module to run instead of ``actors`` (a test's fault-injecting wrapper).
        """
        if self.app_url is not None:
            raise RuntimeError("cannot spawn with APP_URL set; request process_control")
        overrides = dict(env or {})
        port = int(overrides.get("HTTP_PORT") or free_port())
        number = len(self.processes) + 1
        log_path = self.tmp_path / f"service-{number}.log"
        with log_path.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=REPO_ROOT,
                env=self.environment(port, overrides, bootstrap_servers),
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        handle = ServiceProcess(
            base_url=f"http://127.0.0.1:{port}",
            topic=self.topic,
            group=self.group,
            name=f"{module} {number} (pid {process.pid})",
            process=process,
            log_path=log_path,
        )
        self.processes.append(handle)
        if wait_healthy:
            handle.wait_healthy()
        return handle

    def close(self) -> None:
        for process in self.processes:
            process.stop()
            process.close()
        if self._external is not None:
            self._external.close()


def spawn_module(
    services: Services,
    module: str,
    env: Mapping[str, str] | None = None,
    *,
    wait_healthy: bool = True,
    bootstrap_servers: str | None = None,
) -> ServiceProcess:
    """Like :meth:`Services.spawn`, but run ``python -m module`` (a test's wrapper around
    ``actors.__main__.main`` that injects a fault) instead of ``python -m actors``."""
    if services.external:
        pytest.skip("runs a fault-injecting build of the service; APP_URL is external")
    return services.spawn(
        env, wait_healthy=wait_healthy, bootstrap_servers=bootstrap_servers, module=module
    )


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (Linux ``/proc/PID/status`` ``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")
