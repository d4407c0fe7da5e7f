"""What a change costs in POST throughput: two variants of the service, in alternating rounds.

The baseline is either a git revision, whose tree is exported (``git archive``) to a temporary
folder and run with this checkout's virtualenv (so both sides use the same libraries and differ
only in the service's code), or ``metrics-off``: this checkout with every per-request and
per-event metrics recording made a no-op (``bench/metrics_off.py``), which isolates what metrics
cost. Each side is one service process on a fresh local broker of its own, started once and warmed
up; then short rounds of closed-loop load alternate between the two, which goes first
alternating too (A B, B A, A B, ...), so that the noise of a shared machine falls on both alike
and each pair of rounds shares its moment's noise. Each round reports POSTs per second and the
service process's CPU time per POST (user + system, all its threads, from /proc). The load is
``wrk`` (``bench/post.lua``, keep-alive) when it is on PATH, else bench/perf.py's asyncio
client. Prints each round, the median of each side and the median of the paired rounds'
ratios; asserts nothing. With ``--route batch`` the load is ``POST /events/batch`` with
``--batch-size`` events per request, and the figures are per event instead of per POST.

    .venv/bin/python bench/cost_of_change.py --baseline metrics-off --rounds 20
    .venv/bin/python bench/cost_of_change.py --baseline main --seconds 5 --concurrency 64
    .venv/bin/python bench/cost_of_change.py --baseline main --route batch --concurrency 8

Measured this way: the cost of metrics on the hot path (README, "Metrics").
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

# bench/ is this script's folder, so its sibling is importable as a module.
from perf import (
    HOST,
    SERVICE_ENV,
    AsyncioClient,
    Generator,
    Process,
    Wrk,
    batch_body,
    consumed_within,
    event_body,
)

from actors.devtools.local_broker import free_port, local_broker

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

#: The baseline that is this checkout without metrics recordings.
METRICS_OFF = "metrics-off"

#: The POST bodies of ``/events/generate`` the load cycles through.
BODIES = [event_body(index) for index in range(1000)]


@attrs.frozen(kw_only=True)
class Load:
    """What each round sends: the route, the bodies it cycles through, events per body."""

    path: str
    bodies: tuple[bytes, ...]
    events_per_body: int
    unit: str

    @classmethod
    def of(cls, route: str, batch_size: int) -> Load:
        if route == "batch":
            bodies = tuple(batch_body(index, batch_size) for index in range(20))
            return cls(
                path="/events/batch", bodies=bodies, events_per_body=batch_size, unit="event"
            )
        return cls(path="/events/generate", bodies=tuple(BODIES), events_per_body=1, unit="POST")


@attrs.frozen(kw_only=True)
class Variant:
    """How to start one side: its command line and the folder its ``actors`` package is in."""

    argv: tuple[str, ...]
    tree: Path


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


@contextlib.contextmanager
def baseline_variant(baseline: str) -> Iterator[Variant]:
    if baseline == METRICS_OFF:
        yield Variant(argv=(sys.executable, str(HERE / "metrics_off.py")), tree=ROOT)
        return
    with exported(baseline) as tree:
        yield Variant(argv=(sys.executable, "-m", "actors"), tree=tree)


@contextlib.contextmanager
def running(variant: Variant) -> Iterator[Process]:
    """``variant`` serving on its own fresh local broker, healthy and warmed up."""
    port = free_port()
    with local_broker() as broker:
        env = os.environ | SERVICE_ENV
        env |= {
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "HTTP_HOST": HOST,
            "HTTP_PORT": str(port),
            "PYTHONPATH": str(variant.tree),
        }
        # `python -m actors` run in `tree` imports that tree's package, not this checkout's.
        process = Process(variant.argv, env, port, cwd=variant.tree)
        try:
            process.wait_healthy(30)
            yield process
        finally:
            process.stop()


def one_round(
    process: Process, generator: Generator, load: Load, concurrency: int, seconds: float
) -> tuple[float, float]:
    """Events per second (of 2xx answers) of the service ``process`` and its CPU milliseconds
    per event over ``seconds`` of closed-loop load, consuming them included.

    The round starts once the service has consumed what earlier rounds published and ends once
    it has consumed its own: no side's round is slowed by the other's leftover work.
    """
    consumed_within(process.port)
    cpu = process.cpu_seconds()
    result = generator.run(process.port, load.path, load.bodies, concurrency, seconds)
    consumed_within(process.port)
    accepted = (result.requests - result.failed) * load.events_per_body
    cpu_ms = (process.cpu_seconds() - cpu) * 1000 / max(accepted, 1)
    return accepted / result.seconds, cpu_ms


def _generator() -> Generator:
    wrk = shutil.which("wrk")
    return AsyncioClient() if wrk is None else Wrk(wrk)


def _report(
    baseline: str, unit: str, rates: dict[str, list[float]], cpu: dict[str, list[float]]
) -> None:
    """Medians of each side, and the median of the rounds' paired ratios (each round's two
    measurements ran back to back, so they share that moment's noise)."""
    for what, values, better in ((f"{unit}/s", rates, -1), (f"CPU ms/{unit}", cpu, 1)):
        base = statistics.median(values["baseline"])
        this = statistics.median(values["this checkout"])
        cost = (this - base) / base * 100 * better
        pairs = zip(values["this checkout"], values["baseline"], strict=True)
        paired = statistics.median((ours / theirs - 1) * 100 * better for ours, theirs in pairs)
        print(
            f"median {what:<12} {baseline} {base:8.3f}  this checkout {this:8.3f}"
            f"  cost {cost:+.1f} %  (median of paired rounds {paired:+.1f} %)"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--baseline",
        default="main",
        help=f"git revision to compare with, or {METRICS_OFF} (this checkout, no recordings)",
    )
    parser.add_argument("--seconds", type=float, default=3, help="measured load per round")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20, help="rounds per side")
    parser.add_argument("--route", choices=("generate", "batch"), default="generate")
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch")
    args = parser.parse_args(argv)
    load = Load.of(args.route, args.batch_size)

    generator = _generator()
    rates: dict[str, list[float]] = {"baseline": [], "this checkout": []}
    cpu: dict[str, list[float]] = {"baseline": [], "this checkout": []}
    this_checkout = Variant(argv=(sys.executable, "-m", "actors"), tree=ROOT)
    with (
        baseline_variant(args.baseline) as variant,
        running(variant) as baseline,
        running(this_checkout) as checkout,
    ):
        sides = {"baseline": baseline, "this checkout": checkout}
        for process in sides.values():  # the first deliveries of a fresh producer are slow
            generator.run(process.port, load.path, load.bodies, args.concurrency, 2)
        for number in range(1, args.rounds + 1):
            order = list(sides.items()) if number % 2 else list(sides.items())[::-1]
            for side, process in order:
                rate, cpu_ms = one_round(process, generator, load, args.concurrency, args.seconds)
                rates[side].append(rate)
                cpu[side].append(cpu_ms)
                print(
                    f"round {number}  {side:<14} {rate:8.0f} {load.unit}/s"
                    f"  {cpu_ms:6.3f} CPU ms/{load.unit}",
                    flush=True,
                )
    print(
        f"{args.seconds:g} s per round, concurrency {args.concurrency}, load {generator.name},"
        f" route {load.path}, baseline {args.baseline}, load average {os.getloadavg()[0]:.1f}"
    )
    _report(args.baseline, load.unit, rates, cpu)


if __name__ == "__main__":
    main()
