"""Publish-and-consume benchmark: prints numbers, asserts nothing.

Starts a fresh local broker (Tansu slows down as a topic grows, so every run starts clean) and
the real service process, sends ``--events`` POSTs from ``--concurrency`` threads over real
HTTP, then waits until all of them are listed by ``GET /events/processed``.

    .venv/bin/python bench/throughput.py --events 2000 --concurrency 16

Prints: accepted POSTs per second, POST latency percentiles, time until the last event was
consumed, and the service's peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from actors.devtools.local_broker import free_port, local_broker

ROOT = Path(__file__).resolve().parent.parent


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait_healthy(client: httpx.Client, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("service did not become healthy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    port = free_port()
    with local_broker() as broker:
        env = os.environ | {
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(port),
            "KAFKA_SESSION_TIMEOUT_MS": "1000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "300",
            "KAFKA_FETCH_WAIT_MAX_MS": "100",
            "LOG_LEVEL": "WARNING",
        }
        service = subprocess.Popen([sys.executable, "-m", "actors"], cwd=ROOT, env=env)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                _wait_healthy(client, 30)
                _run(client, args.events, args.concurrency, service.pid)
        finally:
            service.terminate()
            service.wait(30)


def _run(client: httpx.Client, events: int, concurrency: int, pid: int) -> None:
    def post(index: int) -> tuple[int, float]:
        started = time.perf_counter()
        response = client.post(
            "/events/generate",
            json={
                "userId": f"user-{index % 100}",
                "eventType": "PRODUCT_VIEW",
                "payload": {"productId": f"sku-{index}"},
            },
        )
        return response.status_code, time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(post, range(events)))
    published = time.perf_counter() - started
    accepted = sum(1 for status, _ in results if status == 201)

    while len(client.get("/events/processed").json()) < accepted:
        if time.perf_counter() - started > 120:
            break
        time.sleep(0.05)
    consumed = time.perf_counter() - started
    stored = len(client.get("/events/processed").json())

    latencies = sorted(latency for _, latency in results)
    quantiles = statistics.quantiles(latencies, n=100)
    print(f"events sent            {events} (concurrency {concurrency})")
    print(f"201 answers            {accepted}")
    print(f"POST throughput        {accepted / published:.0f} events/s")
    print(f"POST latency p50/p99   {quantiles[49] * 1000:.1f} / {quantiles[98] * 1000:.1f} ms")
    print(f"all consumed after     {consumed:.2f} s ({stored} stored)")
    print(f"service peak RSS       {_peak_rss_mib(pid):.0f} MiB")


if __name__ == "__main__":
    main()
