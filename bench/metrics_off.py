"""``python -m actors`` with every metrics recording on the hot paths made a no-op.

The baseline of ``bench/cost_of_change.py --baseline metrics-off``: the same code tree, the same
libraries and settings, differing from the real service only in what :class:`Metrics` records
per request, per publish and per consumed event. The exposition still answers (with counters
that stay at zero), so everything else the service does is unchanged.

    .venv/bin/python bench/metrics_off.py     # then as `python -m actors`
"""

from __future__ import annotations

import sys
from typing import Any

from actors.__main__ import main
from actors.runtime.metrics import Metrics

#: The recordings made per request, publish or consumed record (not the per-second statistics).
HOT_PATH_RECORDINGS = (
    "http_request",
    "publish_acknowledged",
    "publish_failed",
    "event_published",
    "event_consumed",
    "end_to_end",
)


def _record_nothing(self: Metrics, *args: Any, **kwargs: Any) -> None:
    """Stands in for one recording method."""


def switch_off_recordings() -> None:
    for name in HOT_PATH_RECORDINGS:
        if not callable(getattr(Metrics, name, None)):
            raise SystemExit(f"Metrics.{name} is gone: update bench/metrics_off.py")
        setattr(Metrics, name, _record_nothing)


if __name__ == "__main__":
    switch_off_recordings()
    sys.exit(main())
