"""The benchmarks still run: ``bench/perf.py --tiny`` end to end, its figures all present, and
``bench/cost_of_change.py`` against its metrics-off baseline for one short round.

It times nothing and asserts no speed: only that every measurement produced a number, so the
benchmark cannot rot unnoticed while the service changes.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

#: Exercises no broker behaviour of its own: runs in the Tansu leg only (see .ci/run).
pytestmark = pytest.mark.broker_neutral

REPO_ROOT = Path(__file__).resolve().parents[2]


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def run_bench(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python <argv>`` from the repository, its output captured; asserts it exited 0."""
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_tiny_benchmark_reports_every_figure(tmp_path: Path) -> None:
    """A tiny run exits 0, prints the table and writes a JSON file with a finite number for
    every figure of the service and of the null app."""
    output = tmp_path / "bench.json"
    result = run_bench("bench/perf.py", "--tiny", "--output", str(output))
    assert "POST req/s, C=64" in result.stdout
    figures = json.loads(output.read_text())
    for side in ("service", "floor"):
        for concurrency in (1, 16, 64):
            post = figures[side][f"post_c{concurrency}"]
            assert post["req_per_s"] > 0
            assert all(_finite(post[key]) for key in ("p50_ms", "p99_ms", "cpu_ms_per_req"))
        assert figures[side]["start_to_healthy_s"] > 0
    service = figures["service"]
    for key in ("e2e_idle", "e2e_steady"):
        assert service[key]["samples"] > 0
        assert _finite(service[key]["p50_ms"])
    store = service["store"]
    assert _finite(store["rss_bytes_per_event"])
    assert _finite(store["get_ms_at_1000"])
    assert _finite(service["batch"]["events_per_s"])
    assert _finite(service["batch"]["cpu_ms_per_event"])
    batch = service["batch"]
    assert batch["published"] > 0
    assert batch["stored"] == batch["published"], batch  # each batched event stored once
    assert batch["listed"] == batch["listed_distinct"] >= batch["stored"], batch
    assert _finite(figures["floor"]["round_trip"]["p50_ms"])


@pytest.mark.parametrize(
    ("route", "unit"), [("generate", "POST/s"), ("batch", "event/s")], ids=["generate", "batch"]
)
def test_cost_of_metrics_runs_both_sides_and_reports_the_paired_cost(route: str, unit: str) -> None:
    """One round of each side (the service with and without its metrics recordings, which
    must still find every recording it switches off) and the summary lines, for single POSTs
    and for batches (figures per event)."""
    result = run_bench(
        "bench/cost_of_change.py",
        *("--baseline", "metrics-off", "--rounds", "1", "--seconds", "1", "--route", route),
    )
    assert "round 1  baseline" in result.stdout
    assert "round 1  this checkout" in result.stdout
    assert f"median {unit}" in result.stdout
    assert "median of paired rounds" in result.stdout
