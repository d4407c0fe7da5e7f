"""What a change costs in POST throughput: this checkout against a git revision, interleaved.

The revision's tree is exported (``git archive``) to a temporary folder and run with this
checkout's virtualenv, so both sides use the same libraries and differ only in the service's
code. Rounds alternate between the two, which goes first alternating too (A B, B A, A B, ...),
each on a fresh local broker and a fresh service process, so that the noise of a shared
machine and any warm-up falls on both alike. Each round reports
POSTs per second and the service process's CPU time per POST (user + system, all its threads,
from /proc): on a busy machine throughput follows the neighbours' load, CPU time per request
much less. Prints each round and the median of each side; asserts nothing.

    .venv/bin/python bench/cost_of_change.py --baseline main --events 3000 --concurrency 64

Measured this way: the cost of metrics and trace context on the hot path (README, "Metrics").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from actors.devtools.local_broker import free_port, local_broker

ROOT = Path(__file__).resolve().parent.parent

#: POSTs sent before the measured ones: the producer's first delivery takes ~0.5 s on Tansu.
WARM_UP_EVENTS = 200


@contextlib.contextmanager
def exported(revision: str) -> Iterator[Path]:
    """The tree of ``revision`` in a temporary folder."""
    with tempfile.TemporaryDirectory(prefix="cost-of-change-") as folder:
        archive = Path(folder) / "tree.tar"
        subprocess.run(
            ["git", "archive", "--format=tar", f"--output={archive}", revision],
            cwd=ROOT,
            check=True,
        )
        with tarfile.open(archive) as tar:
            tar.extractall(Path(folder) / "tree", filter="data")
        yield Path(folder) / "tree"


def _wait_healthy(client: httpx.Client, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if client.get("/health").status_code == 200:
                return
        time.sleep(0.1)
    raise SystemExit("service did not become healthy")


def _cpu_seconds(pid: int) -> float:
    """User plus system time of process ``pid`` and all its threads so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_round(tree: Path, events: int, concurrency: int) -> tuple[float, float]:
    """POSTs per second (201 answers) of the service in ``tree`` and its CPU milliseconds per
    POST, on a fresh broker and process."""
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
            # `python -m actors` from `tree` imports that tree's package, not this checkout's.
            "PYTHONPATH": str(tree),
        }
        service = subprocess.Popen([sys.executable, "-m", "actors"], cwd=tree, env=env)
        try:
            limits = httpx.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            )
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits
            ) as client:
                _wait_healthy(client, 30)
                _post_all(client, WARM_UP_EVENTS, concurrency)
                started, cpu = time.perf_counter(), _cpu_seconds(service.pid)
                accepted = _post_all(client, events, concurrency)
                elapsed = time.perf_counter() - started
                cpu_ms = (_cpu_seconds(service.pid) - cpu) * 1000 / max(accepted, 1)
                return accepted / elapsed, cpu_ms
        finally:
            service.terminate()
            service.wait(30)


def _post_all(client: httpx.Client, events: int, concurrency: int) -> int:
    def post(index: int) -> int:
        try:
            response = client.post(
                "/events/generate",
                json={
                    "userId": f"user-{index % 100}",
                    "eventType": "PRODUCT_VIEW",
                    "payload": {"productId": f"sku-{index}"},
                },
            )
        except httpx.TransportError:  # e.g. a keep-alive connection closed as it was reused
            return 0
        return response.status_code

    with ThreadPoolExecutor(concurrency) as pool:
        return sum(1 for status in pool.map(post, range(events)) if status == 201)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git revision to compare with")
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side")
    args = parser.parse_args()

    rates: dict[str, list[float]] = {"baseline": [], "this checkout": []}
    cpu: dict[str, list[float]] = {"baseline": [], "this checkout": []}
    with exported(args.baseline) as baseline:
        sides = {"baseline": baseline, "this checkout": ROOT}
        for number in range(1, args.rounds + 1):
            order = list(sides.items()) if number % 2 else list(sides.items())[::-1]
            for side, tree in order:
                rate, cpu_ms = one_round(tree, args.events, args.concurrency)
                rates[side].append(rate)
                cpu[side].append(cpu_ms)
                print(
                    f"round {number}  {side:<14} {rate:8.0f} POST/s  {cpu_ms:6.3f} CPU ms/POST",
                    flush=True,
                )
    print(
        f"events {args.events} per round, concurrency {args.concurrency}, baseline {args.baseline}"
    )
    for what, values, better in (("POST/s", rates, -1), ("CPU ms/POST", cpu, 1)):
        base = statistics.median(values["baseline"])
        this = statistics.median(values["this checkout"])
        cost = (this - base) / base * 100 * better
        print(
            f"median {what:<12} baseline {base:8.3f}  this checkout {this:8.3f}  cost {cost:+.1f} %"
        )


if __name__ == "__main__":
    main()
