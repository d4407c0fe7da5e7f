"""Start-to-healthy benchmark: prints numbers, asserts nothing.

Starts one fresh broker of each kind asked for (``tansu``, ``kafka-zk``, ``kafka-kraft``; the
Apache Kafka ones as the integration suite does), then ``python -m actors`` against it, several
times, each on a fresh topic and group, and prints how long each start took until ``GET /health``
answered 200, with two sets of settings:

- ``defaults``: only the broker address and the HTTP port; everything else the service's own
  defaults;
- ``compose``: the settings docker-compose.yml passes to the app (its defaults interpolated).

    .venv/bin/python bench/startup.py --kinds kafka-zk kafka-kraft --runs 3
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import yaml

from actors.devtools.local_broker import free_port

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.brokers import start_broker  # noqa: E402  (the tests' broker starters)


def compose_settings() -> dict[str, str]:
    """The app service's environment in docker-compose.yml, ``${NAME:-default}`` resolved to
    the default."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    environment = compose["services"]["app"]["environment"]
    resolved = {}
    for name, value in environment.items():
        text = "" if value is None else str(value)
        resolved[name] = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)
    return resolved


def start_to_healthy(bootstrap: str, settings: dict[str, str], timeout: float = 120) -> float:
    """Spawn the service with ``settings`` and return the seconds until /health is 200."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "HTTP_"))}
    env |= settings | {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port),
        "KAFKA_TOPIC": f"bench-{uuid.uuid4().hex}",
        "KAFKA_CONSUMER_GROUP": f"bench-group-{uuid.uuid4().hex}",
    }
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "actors"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=1) as client:
            while time.monotonic() - started < timeout:
                try:
                    if client.get("/health").status_code == 200:
                        return time.monotonic() - started
                except httpx.TransportError:
                    pass
                time.sleep(0.05)  # polling pace
        return float("inf")
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["kafka-zk", "kafka-kraft"])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    variants = {
        "defaults": {},
        "compose": {
            k: v
            for k, v in compose_settings().items()
            if k not in {"KAFKA_BOOTSTRAP_SERVERS", "HTTP_HOST", "HTTP_PORT"}
        },
    }
    for kind in args.kinds:
        with tempfile.TemporaryDirectory() as folder:
            broker = start_broker(kind, log_dir=Path(folder))
            try:
                for name, settings in variants.items():
                    times = [
                        start_to_healthy(broker.bootstrap_servers, settings)
                        for _ in range(args.runs)
                    ]
                    print(
                        f"{kind:12} {name:9} start-to-healthy: "
                        + " ".join(f"{t:.2f}" for t in times)
                        + f" s (median {statistics.median(times):.2f} s)",
                        flush=True,
                    )
            finally:
                broker.stop()


if __name__ == "__main__":
    main()
