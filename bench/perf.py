"""The service against its floor, in one run: prints one table and writes a JSON file.

    .venv/bin/python bench/perf.py                    # about three minutes
    .venv/bin/python bench/perf.py --tiny             # seconds; only checks that it still runs

It starts a fresh local broker (Tansu slows down as a topic grows), the service (``python -m
actors`` with its default settings, except the short consumer-group session that the local broker
needs, as ``scripts/run-local`` sets it) and the null app (``bench/null_app.py``: parse the body,
add a UUID, answer 201, behind the same HTTP server), and measures one after the other (the
POST figures alternate between the two, a few rounds each, and show the median):

- POST /events/generate req/s and p50/p99 latency at each concurrency (closed loop, keep-alive);
- CPU per request of the process under test (utime + stime from ``/proc/PID/stat``);
- end to end: from the 201 until the eventId is listed by ``GET /events/processed``, idle and
  under a steady load of POSTs;
- batch ingest (``POST /events/batch``, when the service has it): events/s, and how long the
  consumer needs after the load stops until it has stored every published event, how many of
  them the store counted (once each), and how many events the listing then shows, distinct;
- the cost of ``GET /events/processed`` and the resident memory per stored event (marginal),
  with the store filled straight from the topic to each size (on a fresh broker and service);
- the time from process start to ``/health`` 200.

Each service figure is shown with its ratio to the null app's where the null app has one.
Nothing is asserted: the numbers are for people to compare.

The load generator is ``wrk`` (``bench/post.lua``) when it is on PATH: written in C, about 10 µs
of CPU per request, so it leaves the two cores to the process under test. Without it (or with
``--generator python``) a small asyncio client is used, which costs several times more; its
own CPU per request is measured and shown either way.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from actors.devtools.local_broker import LocalBroker, free_port, local_broker
from actors.domain.events import new_event
from actors.kafka.config import producer_config
from actors.runtime.settings import SETTINGS, load_settings

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
TOPIC = "user-activity-events"  # the service's default KAFKA_TOPIC

#: Where the bare producer's round trip writes: not the service's topic, whose consumer would
#: store those events as if the service had published them.
ROUND_TRIP_TOPIC = "bench-round-trip"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

#: Settings the benchmark gives the service; everything else is the default.
SERVICE_ENV = {"KAFKA_SESSION_TIMEOUT_MS": "3000"}


@attrs.frozen(kw_only=True)
class Profile:
    """How long and how much each measurement runs."""

    post_seconds: float
    warmup_seconds: float
    concurrencies: tuple[int, ...]
    e2e_samples: int
    steady_rate: int
    batch_seconds: float
    batch_size: int
    batch_concurrency: int
    store_sizes: tuple[int, int]
    get_repeats: int
    rounds: int


FULL = Profile(
    post_seconds=4,
    warmup_seconds=1,
    concurrencies=(1, 16, 64),
    e2e_samples=60,
    steady_rate=100,
    batch_seconds=10,
    batch_size=100,
    batch_concurrency=8,
    store_sizes=(10_000, 100_000),
    get_repeats=5,
    rounds=3,
)
TINY = Profile(
    post_seconds=0.3,
    warmup_seconds=0.1,
    concurrencies=(1, 16, 64),
    e2e_samples=3,
    steady_rate=100,
    batch_seconds=0.5,
    batch_size=10,
    batch_concurrency=2,
    store_sizes=(200, 1000),
    get_repeats=1,
    rounds=1,
)


# --- processes ------------------------------------------------------------------------------------


class Process:
    """A child process under test: its CPU time and resident memory, read from /proc."""

    def __init__(
        self, argv: Sequence[str], env: dict[str, str], port: int, cwd: Path = ROOT
    ) -> None:
        self.port = port
        self.started = time.perf_counter()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the child
        self.popen = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=self._stderr
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_seconds(self) -> float:
        return _cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def wait_healthy(self, timeout: float = 60) -> float:
        """Seconds from the process's start until ``/health`` first answered 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                self._stderr.seek(0)
                stderr = self._stderr.read().decode(errors="replace")
                raise SystemExit(f"process exited with {self.popen.returncode}: {stderr}")
            try:
                status, _ = request(self.port, "GET", "/health")
            except OSError:
                status = 0
            if status == 200:
                return time.perf_counter() - self.started
            time.sleep(0.01)
        raise SystemExit("process did not become healthy")

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _cpu_seconds(pid: int) -> float:
    # Fields after the command name (which may hold spaces) start at field 3: utime is 14, stime 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _clean_environment() -> dict[str, str]:
    """This process's environment without any of the service's settings: defaults apply."""
    ours = {setting.variable for setting in SETTINGS}
    return {name: value for name, value in os.environ.items() if name not in ours}


@contextmanager
def service(broker: LocalBroker, settings: dict[str, str]) -> Iterator[Process]:
    port = free_port()
    env = _clean_environment() | SERVICE_ENV | settings
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "HTTP_HOST": HOST,
        "HTTP_PORT": str(port),
    }
    process = Process([sys.executable, "-m", "actors"], env, port)
    try:
        yield process
    finally:
        process.stop()


@contextmanager
def null_app() -> Iterator[Process]:
    port = free_port()
    argv = [sys.executable, str(HERE / "null_app.py"), "--port", str(port)]
    process = Process(argv, _clean_environment(), port)
    try:
        yield process
    finally:
        process.stop()


# --- HTTP -----------------------------------------------------------------------------------------


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One request on a fresh connection; for the occasional call, not for load."""
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def health(port: int) -> dict[str, Any]:
    _, body = request(port, "GET", "/health")
    return dict(json.loads(body))


#: How long the service's counters must stay still before its consuming counts as done.
SETTLED_SECONDS = 0.1


def consumed_within(port: int, timeout: float = 60) -> float:
    """Seconds until the process has stored (or recognised as a duplicate) every event it
    published, and its counters then stayed still for :data:`SETTLED_SECONDS`: ``nan`` past
    ``timeout``, ``0`` at once for one that consumes nothing (the null app's health has no
    counters).

    # NOTE: the consumer may store an event before the publisher has settled its delivery
    # report, so "stored >= published" alone can hold while publishes are still being counted
    # (the requests a load generator left in flight when it stopped).
    """
    started = time.perf_counter()
    settled: tuple[tuple[int, int], float] | None = None  # counters, and when first seen
    while time.perf_counter() - started < timeout:
        counters = health(port).get("counters")
        if counters is None:
            return 0.0
        now = time.perf_counter()
        published = counters.get("published", 0)
        reading = (published, counters.get("stored", 0) + counters.get("duplicates", 0))
        if reading[1] < published:
            settled = None
        elif settled is None or settled[0] != reading:
            settled = (reading, now)
        elif now - settled[1] >= SETTLED_SECONDS:
            return settled[1] - started
        time.sleep(0.02)
    return float("nan")


def event_body(index: int) -> bytes:
    return json.dumps(
        {
            "userId": f"user-{index % 100}",
            "eventType": "PRODUCT_VIEW",
            "payload": {"productId": f"sku-{index}"},
        },
        separators=(",", ":"),
    ).encode()


def batch_body(index: int, size: int) -> bytes:
    events = [json.loads(event_body(index * size + offset)) for offset in range(size)]
    return json.dumps({"events": events}, separators=(",", ":")).encode()


# --- load generators ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    failed: int
    generator_cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds


class Wrk:
    """Closed loop over keep-alive connections with wrk and ``bench/post.lua``."""

    name = "wrk"

    def __init__(self, executable: str) -> None:
        self._executable = executable

    def run(
        self, port: int, path: str, bodies: Sequence[bytes], concurrency: int, seconds: float
    ) -> LoadResult:
        with tempfile.NamedTemporaryFile("wb", suffix=".jsonl") as file:
            file.write(b"\n".join(bodies) + b"\n")
            file.flush()
            argv = [
                self._executable,
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(HERE / "post.lua"),
                f"http://{HOST}:{port}",
            ]
            env = os.environ | {"BENCH_BODIES": file.name, "BENCH_PATH": path}
            process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
            assert process.stdout is not None
            output = process.stdout.read()
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            cpu = usage.ru_utime + usage.ru_stime
        summary = json.loads(output.strip().splitlines()[-1])
        return LoadResult(
            requests=summary["requests"],
            seconds=summary["duration_us"] / 1e6,
            p50_ms=summary["p50_us"] / 1000,
            p99_ms=summary["p99_us"] / 1000,
            failed=summary["non_2xx"] + summary["socket_errors"],
            generator_cpu_seconds=cpu,
        )


class AsyncioClient:
    """Closed loop over keep-alive connections in this process (asyncio, raw HTTP/1.1)."""

    name = "python asyncio"

    def run(
        self, port: int, path: str, bodies: Sequence[bytes], concurrency: int, seconds: float
    ) -> LoadResult:
        wire = [
            (
                f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
            for body in bodies
        ]
        cpu_before = time.process_time()
        latencies, failed, elapsed = asyncio.run(self._load(port, wire, concurrency, seconds))
        cpu = time.process_time() - cpu_before
        latencies.sort()
        return LoadResult(
            requests=len(latencies),
            seconds=elapsed,
            p50_ms=_quantile(latencies, 0.50) * 1000,
            p99_ms=_quantile(latencies, 0.99) * 1000,
            failed=failed,
            generator_cpu_seconds=cpu,
        )

    async def _load(
        self, port: int, wire: list[bytes], concurrency: int, seconds: float
    ) -> tuple[list[float], int, float]:
        latencies: list[float] = []
        failures = [0]
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(
            *(
                self._connection(port, wire, index, stop_at, latencies, failures)
                for index in range(concurrency)
            )
        )
        return latencies, failures[0], time.perf_counter() - started

    @staticmethod
    async def _connection(
        port: int,
        wire: list[bytes],
        index: int,
        stop_at: float,
        latencies: list[float],
        failures: list[int],
    ) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while (now := time.perf_counter()) < stop_at:
                writer.write(wire[index % len(wire)])
                index += 1
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - now)
                if not status_line.split(b" ")[1].startswith(b"2"):
                    failures[0] += 1
        finally:
            writer.close()


Generator = Wrk | AsyncioClient


def _quantile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- measurements ---------------------------------------------------------------------------------


def post_load(
    process: Process, generator: Generator, profile: Profile, concurrency: int
) -> dict[str, float]:
    bodies = [event_body(index) for index in range(1000)]
    generator.run(process.port, "/events/generate", bodies, concurrency, profile.warmup_seconds)
    # NOTE: the service goes on consuming what it published after the load stops. That work
    # is part of what a POST costs it, and left running it would slow whatever is measured
    # next (the null app's round): each round starts and ends only once the service has
    # consumed everything.
    consumed_within(process.port)
    cpu_before = process.cpu_seconds()
    result = generator.run(
        process.port, "/events/generate", bodies, concurrency, profile.post_seconds
    )
    consumed_within(process.port)
    cpu = process.cpu_seconds() - cpu_before
    return {
        "req_per_s": result.per_second,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "cpu_ms_per_req": cpu / max(1, result.requests) * 1000,
        "failed": result.failed,
        "generator_cpu_ms_per_req": result.generator_cpu_seconds / max(1, result.requests) * 1000,
    }


class Poster:
    """A keep-alive connection for POSTs and listings, one request at a time."""

    def __init__(self, port: int) -> None:
        self._connection = http.client.HTTPConnection(HOST, port, timeout=30)

    def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        self._connection.request(
            "POST", path, body=body, headers={"Content-Type": "application/json"}
        )
        response = self._connection.getresponse()
        return response.status, response.read()

    def get(self, path: str) -> bytes:
        self._connection.request("GET", path)
        return self._connection.getresponse().read()

    def close(self) -> None:
        self._connection.close()


def end_to_end(port: int, samples: int, timeout: float = 10) -> dict[str, float]:
    """Milliseconds from each 201 until GET /events/processed lists its eventId."""
    delays: list[float] = []
    poster, lister = Poster(port), Poster(port)
    try:
        for index in range(samples):
            status, body = poster.post("/events/generate", event_body(index))
            answered = time.perf_counter()
            if status != 201:
                continue
            needle = b'"eventId":"' + json.loads(body)["eventId"].encode() + b'"'
            while needle not in lister.get("/events/processed"):
                if time.perf_counter() - answered > timeout:
                    break
                time.sleep(0.002)
            else:
                delays.append((time.perf_counter() - answered) * 1000)
            time.sleep(0.05)
    finally:
        poster.close()
        lister.close()
    delays.sort()
    return {
        "p50_ms": _quantile(delays, 0.5),
        "p99_ms": _quantile(delays, 0.99),
        "samples": len(delays),
    }


@contextmanager
def steady_posts(port: int, rate: int) -> Iterator[None]:
    """POSTs at ``rate`` per second from a thread, for as long as the block runs."""
    stop = threading.Event()

    def post_steadily() -> None:
        poster = Poster(port)
        interval = 1 / rate
        next_at = time.perf_counter()
        index = 0
        try:
            while not stop.is_set():
                poster.post("/events/generate", event_body(index))
                index += 1
                next_at += interval
                time.sleep(max(0.0, next_at - time.perf_counter()))
        finally:
            poster.close()

    thread = threading.Thread(target=post_steadily, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        yield
    finally:
        stop.set()
        thread.join(30)


def has_batch_endpoint(port: int) -> bool:
    _, body = request(port, "GET", "/openapi.json")
    return "/events/batch" in json.loads(body).get("paths", {})


def batch_ingest(process: Process, generator: Generator, profile: Profile) -> dict[str, Any]:
    """Events/s through POST /events/batch, then how long the consumer needs to catch up."""
    if not has_batch_endpoint(process.port):
        return {}
    bodies = [batch_body(index, profile.batch_size) for index in range(20)]
    before = health(process.port)["counters"]
    cpu_before = process.cpu_seconds()
    result = generator.run(
        process.port,
        "/events/batch",
        bodies,
        profile.batch_concurrency,
        profile.batch_seconds,
    )
    # From the load's end until the consumer had stored everything (not the stillness after).
    drain = consumed_within(process.port)
    cpu = process.cpu_seconds() - cpu_before  # consuming the events included
    counters = health(process.port)["counters"]
    published = counters.get("published", 0) - before.get("published", 0)
    listed, distinct = listed_events(process.port)
    return {
        "events_per_s": published / result.seconds,
        "batch_p50_ms": result.p50_ms,
        "batch_p99_ms": result.p99_ms,
        "failed_batches": result.failed,
        "cpu_ms_per_event": cpu / max(1, published) * 1000,
        "drain_s": drain,
        "published": published,
        "stored_total": counters.get("stored", 0),
        "duplicates_total": counters.get("duplicates", 0),
        # Each published event stored once (the store counts an eventId only the first time),
        # and the listing of what the store holds (its oldest may be evicted) without repeats.
        "stored": counters.get("stored", 0) - before.get("stored", 0),
        "listed": listed,
        "listed_distinct": distinct,
    }


def listed_events(port: int) -> tuple[int, int]:
    """How many events ``GET /events/processed`` lists, and how many distinct eventIds."""
    lister = Poster(port)
    try:
        events = json.loads(lister.get("/events/processed"))
    finally:
        lister.close()
    return len(events), len({event["eventId"] for event in events})


def fill_topic(bootstrap: str, start: int, count: int) -> None:
    """Produce ``count`` valid events straight to the topic, as the publisher would."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for index in range(start, start + count):
        event = new_event(
            user_id=f"user-{index % 100}",
            event_type="PRODUCT_VIEW",
            payload={"productId": f"sku-{index}"},
        )
        while True:
            try:
                producer.produce(TOPIC, key=event.user_id.encode(), value=event.to_json())
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush(60)


def producer_round_trip(
    bootstrap: str, samples: int, settings: Mapping[str, str] | None = None
) -> dict[str, float]:
    """The broker's part of a confirmed POST at C=1: a bare confluent-kafka producer with the
    service's producer settings (idempotent, ``acks=all``, ``KAFKA_LINGER_MS``: its defaults,
    or as ``settings`` set them) produces one event at a time and polls until the broker
    acknowledged it. No single POST can answer 201 sooner than the null app's p50 plus this."""
    environment = _clean_environment() | SERVICE_ENV | dict(settings or {})
    kafka = load_settings(environment).kafka
    config = producer_config(attrs.evolve(kafka, bootstrap_servers=bootstrap))
    config.pop("logger")
    create_topic(bootstrap, ROUND_TRIP_TOPIC)
    producer = Producer(config)
    warm_up = 20
    latencies = []
    acknowledged: list[object] = []
    for index in range(warm_up + samples):
        event = new_event(user_id=f"user-{index}", event_type="LOGIN", payload={})
        acknowledged.clear()
        started = time.perf_counter()
        producer.produce(
            ROUND_TRIP_TOPIC,
            key=event.user_id.encode(),
            value=event.to_json(),
            on_delivery=lambda error, _: acknowledged.append(error),
        )
        while not acknowledged:
            producer.poll(1)
        if index >= warm_up:
            latencies.append(time.perf_counter() - started)
    producer.flush(10)
    latencies.sort()
    return {
        "p50_ms": _quantile(latencies, 0.50) * 1000,
        "p99_ms": _quantile(latencies, 0.99) * 1000,
    }


def create_topic(bootstrap: str, name: str) -> None:
    """Create the topic ``name`` with one partition, unless it exists."""
    admin = AdminClient({"bootstrap.servers": bootstrap})  # alive until the answer is in
    future = admin.create_topics([NewTopic(name, num_partitions=1)], request_timeout=10)[name]
    try:
        future.result(timeout=15)
    except KafkaException as error:
        if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def wait_stored(port: int, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while health(port)["gauges"].get("store_events", 0) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"the store did not reach {count} events")
        time.sleep(0.05)


def listing_cost(port: int, repeats: int) -> dict[str, float]:
    lister = Poster(port)
    try:
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            body = lister.get("/events/processed")
            timings.append((time.perf_counter() - started) * 1000)
        return {"ms": statistics.median(timings), "bytes": len(body)}
    finally:
        lister.close()


def store_costs(broker: LocalBroker, profile: Profile, settings: dict[str, str]) -> dict[str, Any]:
    small, large = profile.store_sizes
    with service(broker, settings) as process:
        process.wait_healthy()
        fill_topic(broker.bootstrap_servers, 0, small)
        wait_stored(process.port, small)
        get_small = listing_cost(process.port, profile.get_repeats)
        rss_small = process.rss_bytes()
        fill_topic(broker.bootstrap_servers, small, large - small)
        wait_stored(process.port, large)
        get_large = listing_cost(process.port, profile.get_repeats)
        rss_large = process.rss_bytes()
    return {
        f"get_ms_at_{small}": get_small["ms"],
        f"get_ms_at_{large}": get_large["ms"],
        "rss_bytes_per_event": (rss_large - rss_small) / (large - small),
        "rss_mib_at_large": rss_large / 2**20,
    }


# --- the run --------------------------------------------------------------------------------------


def measure(
    generator: Generator, profile: Profile, settings: dict[str, str], *, post_only: bool
) -> dict[str, Any]:
    """Both processes side by side on one broker; the load goes to one at a time.

    The POST figures alternate between the service and the null app, ``profile.rounds`` times
    at each concurrency, and each figure is the median of its rounds: on a shared machine the
    load of other work drifts, and alternating lets both sides see the same drift.
    """
    service_results: dict[str, Any] = {}
    floor_results: dict[str, Any] = {}
    with local_broker() as broker, service(broker, settings) as ours:
        service_results["start_to_healthy_s"] = ours.wait_healthy()
        service_results["rss_mib_idle"] = ours.rss_bytes() / 2**20
        if not post_only:
            service_results["e2e_idle"] = end_to_end(ours.port, profile.e2e_samples)
            with steady_posts(ours.port, profile.steady_rate):
                service_results["e2e_steady"] = end_to_end(ours.port, profile.e2e_samples)
        with null_app() as floor:
            floor_results["start_to_healthy_s"] = floor.wait_healthy()
            for concurrency in profile.concurrencies:
                rounds: dict[str, list[dict[str, float]]] = {"service": [], "floor": []}
                for _ in range(profile.rounds):
                    rounds["service"].append(post_load(ours, generator, profile, concurrency))
                    rounds["floor"].append(post_load(floor, generator, profile, concurrency))
                key = f"post_c{concurrency}"
                service_results[key] = _medians(rounds["service"])
                floor_results[key] = _medians(rounds["floor"])
        floor_results["round_trip"] = producer_round_trip(
            broker.bootstrap_servers, profile.e2e_samples * 3, settings
        )
        if post_only:
            return {"service": service_results, "floor": floor_results}
        service_results["batch"] = batch_ingest(ours, generator, profile)
    with local_broker() as broker:
        service_results["store"] = store_costs(broker, profile, settings)
    return {"service": service_results, "floor": floor_results}


def _medians(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Each figure's median over the rounds, and every round's figures as measured."""
    medians: dict[str, Any] = {
        key: statistics.median(one[key] for one in rounds) for key in rounds[0]
    }
    medians["rounds"] = rounds
    return medians


def table(results: dict[str, Any]) -> str:
    service_figures, floor = results["service"], results["floor"]
    rows: list[tuple[str, str, str, str]] = []

    def row(name: str, ours: float, theirs: float | None, unit: str, digits: int = 2) -> None:
        shown = f"{ours:.{digits}f} {unit}".strip()
        floor_shown = "-" if theirs is None else f"{theirs:.{digits}f} {unit}".strip()
        ratio = "-" if theirs in (None, 0) else f"{ours / theirs:.2f}x"
        rows.append((name, shown, floor_shown, ratio))

    for concurrency in results["profile"]["concurrencies"]:
        key = f"post_c{concurrency}"
        ours, theirs = service_figures[key], floor[key]
        row(f"POST req/s, C={concurrency}", ours["req_per_s"], theirs["req_per_s"], "", 0)
        row(f"POST p50, C={concurrency}", ours["p50_ms"], theirs["p50_ms"], "ms")
        row(f"POST p99, C={concurrency}", ours["p99_ms"], theirs["p99_ms"], "ms")
        row(
            f"CPU per POST, C={concurrency}",
            ours["cpu_ms_per_req"],
            theirs["cpu_ms_per_req"],
            "ms",
            3,
        )
    round_trip = floor.get("round_trip")
    if round_trip:
        single = service_figures["post_c1"]["p50_ms"]
        floor_single = floor["post_c1"]["p50_ms"]
        rows.append(("bare producer round trip, p50", "-", f"{round_trip['p50_ms']:.2f} ms", "-"))
        row(
            "POST p50, C=1, vs null app + round trip",
            single,
            floor_single + round_trip["p50_ms"],
            "ms",
        )
    for key, label in (("e2e_idle", "idle"), ("e2e_steady", "steady POSTs")):
        if key in service_figures:
            figures = service_figures[key]
            row(f"201 → listed, {label}, p50", figures["p50_ms"], None, "ms", 1)
            row(f"201 → listed, {label}, p99", figures["p99_ms"], None, "ms", 1)
    batch = service_figures.get("batch")
    if batch:
        row("batch ingest", batch["events_per_s"], None, "events/s", 0)
        row("CPU per batched event", batch["cpu_ms_per_event"], None, "ms", 4)
        row("consumer drain after load", batch["drain_s"], None, "s")
        stored = f"{batch['stored']} of {batch['published']}"
        rows.append(("batch events stored (once each)", stored, "-", "-"))
        listed = f"{batch['listed']}, {batch['listed_distinct']} distinct"
        rows.append(("events listed afterwards", listed, "-", "-"))
    elif batch is not None:
        rows.append(("batch ingest", "no /events/batch", "-", "-"))
    store = service_figures.get("store", {})
    for key, value in store.items():
        if key.startswith("get_ms_at_"):
            row(f"GET /events/processed at {key.removeprefix('get_ms_at_')}", value, None, "ms", 1)
    if store:
        row("RSS per stored event (marginal)", store["rss_bytes_per_event"], None, "B", 0)
    row(
        "start → /health 200",
        service_figures["start_to_healthy_s"],
        floor["start_to_healthy_s"],
        "s",
    )
    generator_costs = [
        f"{results[side][f'post_c{c}']['generator_cpu_ms_per_req']:.3f}"
        for side in ("service", "floor")
        for c in results["profile"]["concurrencies"]
    ]
    header = ("figure", "service", "null app", "ratio")
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        for cells in [header, tuple("-" * width for width in widths), *rows]
    ]
    for side in ("service", "floor"):
        spreads = [
            "/".join(f"{one['req_per_s']:.0f}" for one in results[side][f"post_c{c}"]["rounds"])
            for c in results["profile"]["concurrencies"]
        ]
        lines.append(f"{side} req/s in each round, per concurrency: {'  '.join(spreads)}")
    lines.append(
        f"load generator: {results['generator']}; its own CPU per request (ms), service then "
        f"null app, per concurrency: {' '.join(generator_costs)}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="seconds-long run, for smoke tests")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--output", type=Path, default=Path("bench-results.json"))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="VARIABLE=VALUE",
        help="a setting of the service other than its default (to compare settings)",
    )
    parser.add_argument("--post-only", action="store_true", help="only the POST figures")
    parser.add_argument(
        "--round-trip",
        metavar="BOOTSTRAP",
        help="only the bare producer's round trip, to the broker at BOOTSTRAP (any broker, "
        "e.g. Apache Kafka from scripts/kafka-broker)",
    )
    args = parser.parse_args()
    settings = dict(assignment.split("=", 1) for assignment in args.set)
    if args.round_trip:
        trip = producer_round_trip(args.round_trip, FULL.e2e_samples * 3, settings)
        print(f"bare producer round trip to {args.round_trip}: ", end="")
        print(f"p50 {trip['p50_ms']:.2f} ms, p99 {trip['p99_ms']:.2f} ms")
        return
    profile = TINY if args.tiny else FULL
    wrk = shutil.which("wrk")
    generator: Generator
    if args.generator == "python" or (args.generator == "auto" and wrk is None):
        generator = AsyncioClient()
    elif wrk is None:
        raise SystemExit("wrk is not on PATH (Debian: apt-get install wrk)")
    else:
        generator = Wrk(wrk)
    results: dict[str, Any] = {
        "profile": attrs.asdict(profile),
        "generator": generator.name,
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    results["settings"] = settings
    results |= measure(generator, profile, settings, post_only=args.post_only)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
