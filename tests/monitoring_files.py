"""The monitoring profile's files and the metric names their queries use.

Shared by the static checks of the files (tests/static/test_monitoring.py) and the integration
test that compares them with a running service's ``/metrics``.

Imported as ``monitoring_files``: ``tests/`` is on ``sys.path`` (see ``fakes``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from actors.runtime.metrics import PREFIX

__all__ = [
    "ALERTS",
    "DASHBOARD",
    "MONITORING",
    "alert_rules",
    "dashboard",
    "dashboard_expressions",
    "metrics_used",
]

MONITORING = Path(__file__).resolve().parents[1] / "monitoring"
ALERTS = MONITORING / "prometheus" / "alerts.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "user-activity.json"

_METRIC_NAME = re.compile(rf"\b{PREFIX}[a-z_]+\b")


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def metrics_used(expressions: list[str]) -> set[str]:
    """The service's sample names (``user_activity_...``) that ``expressions`` query."""
    return {name for expression in expressions for name in _METRIC_NAME.findall(expression)}
