"""The monitoring profile's files: Prometheus' configuration and alert rules (checked and unit
tested by promtool), Grafana's provisioning and dashboard, and their agreement with the
service's metrics and the compose file.

promtool comes from ``scripts/ensure-promtool`` (Debian's prometheus package), which
``scripts/test`` runs first; a missing promtool fails these tests, it never skips them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring_files import (
    ALERTS,
    DASHBOARD,
    MONITORING,
    alert_rules,
    dashboard,
    dashboard_expressions,
    metrics_used,
)

from actors.runtime.metrics import PREFIX, Metrics
from actors.runtime.settings import SETTINGS

from .container_files import interpolate, parse_listeners, read_compose, service_environment

PROMETHEUS_DIR = MONITORING / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts.test.yml"
GRAFANA = MONITORING / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"

#: The alerts the service promises (README.md, "Monitoring").
ALERT_NAMES = {
    "ConsumerLagGrowing",
    "PublishFailures",
    "MessagesDeadLettered",
    "ActorRestarting",
    "NotReady",
}

#: What the dashboard must show, each as a metric at least one panel queries.
DASHBOARD_TOPICS = {
    "ingest rate": f"{PREFIX}events_published_total",
    "publish latency": f"{PREFIX}publish_latency_seconds_bucket",
    "end-to-end latency": f"{PREFIX}end_to_end_latency_seconds_bucket",
    "consumer lag per partition": f"{PREFIX}consumer_lag_messages",
    "mailbox depths": f"{PREFIX}mailbox_depth",
    "errors": f"{PREFIX}publish_failures_total",
    "restarts": f"{PREFIX}actor_restarts_total",
}

PANEL_TYPES = {"timeseries", "stat", "gauge", "table", "bargauge", "text"}
GRID_COLUMNS = 24


def promtool_path() -> str:
    """promtool beside this interpreter (where scripts/ensure-promtool puts it) or on PATH."""
    scripts = sysconfig.get_path("scripts")
    found = shutil.which("promtool", path=scripts) or shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: run scripts/ensure-promtool (scripts/test does)")
    return found


def promtool(
    *arguments: str | Path, cwd: Path = PROMETHEUS_DIR
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool_path(), *map(str, arguments)],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def exported_names() -> set[str]:
    """Every sample name the service's metrics can have: the declared families, with the
    suffixes of histogram samples."""
    metrics = Metrics(restartable=("consumer",))
    names = set()
    for line in metrics.exposition().decode().splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


# --- promtool ------------------------------------------------------------------------------


def test_promtool_accepts_the_prometheus_configuration() -> None:
    """`promtool check config` passes, which also checks the rule files it names."""
    result = promtool("check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_accepts_the_alert_rules() -> None:
    """`promtool check rules` passes and finds one rule per promised alert."""
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERT_NAMES)} rules found" in result.stdout


def test_alert_rules_pass_their_unit_tests() -> None:
    """`promtool test rules`: each alert fires on its series, with its labels and text, and
    stays quiet on the others."""
    result = promtool("test", "rules", ALERT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_are_live(tmp_path: Path) -> None:
    """A broken expression fails `check rules`, and a changed alert fails its unit tests."""
    broken = tmp_path / "alerts.yml"
    broken.write_text(ALERTS.read_text().replace("> 0", "> > 0", 1))
    assert promtool("check", "rules", broken).returncode != 0
    changed = tmp_path / "changed"
    changed.mkdir()
    (changed / "alerts.yml").write_text(ALERTS.read_text().replace("for: 5m", "for: 30m"))
    (changed / "alerts.test.yml").write_text(ALERT_TESTS.read_text())
    assert promtool("test", "rules", "alerts.test.yml", cwd=changed).returncode != 0


def test_every_promised_alert_exists_and_is_unit_tested() -> None:
    """The five alerts exist, each with a severity and a summary, and each appears in the
    unit tests both firing and not firing."""
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == ALERT_NAMES
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
    checks = [
        check for test in load_yaml(ALERT_TESTS)["tests"] for check in test["alert_rule_test"]
    ]
    firing = {check["alertname"] for check in checks if check["exp_alerts"]}
    assert firing == ALERT_NAMES


def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """Every panel query parses: promtool checks them as recording rules."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel_query_{index}", "expr": expression}
                    for index, expression in enumerate(dashboard_expressions())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the metrics they use ------------------------------------------------------------------


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_used_is_exported_by_the_service(source: str) -> None:
    """Each user_activity_ metric an alert or a panel queries is one the service exports."""
    expressions = (
        [rule["expr"] for rule in alert_rules()] if source == "alerts" else dashboard_expressions()
    )
    used = metrics_used(expressions)
    assert used, f"the {source} use no metric of the service"
    assert sorted(used - exported_names()) == []


def test_dashboard_shows_what_an_operator_needs() -> None:
    """Ingest rate, publish and end-to-end latency (p50 and p99), lag per partition, mailbox
    depths, errors and restarts each have a panel."""
    expressions = dashboard_expressions()
    missing = [
        topic
        for topic, metric in DASHBOARD_TOPICS.items()
        if not any(metric in expression for expression in expressions)
    ]
    assert missing == []
    for histogram in ("publish_latency_seconds", "end_to_end_latency_seconds"):
        quantiles = {
            float(match)
            for expression in expressions
            if histogram in expression
            for match in re.findall(r"histogram_quantile\(([0-9.]+)", expression)
        }
        assert quantiles == {0.5, 0.99}, histogram
    assert any("by (topic, partition)" in expression for expression in expressions)


# --- the dashboard's structure ---------------------------------------------------------------


def test_dashboard_json_has_grafanas_structure() -> None:
    """uid, title, schemaVersion and panels; each panel has a unique id, a known type, a
    title, a place on the 24-column grid, and targets with unique refIds and a query."""
    document = dashboard()
    assert document["uid"]
    assert document["title"]
    assert isinstance(document["schemaVersion"], int)
    assert document["schemaVersion"] >= 30
    panels = document["panels"]
    assert panels
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["title"]
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= set(grid), panel["title"]
        assert min(grid["x"], grid["y"]) >= 0, panel["title"]
        assert min(grid["w"], grid["h"]) > 0, panel["title"]
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids, panel["title"]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


def test_dashboard_panels_do_not_overlap() -> None:
    """No two panels claim the same grid cell."""
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_dashboard_queries_the_provisioned_datasource() -> None:
    """Every panel and target names the datasource Grafana provisions, by uid."""
    [datasource] = load_yaml(DATASOURCES)["datasources"]
    expected = {"type": datasource["type"], "uid": datasource["uid"]}
    for panel in dashboard()["panels"]:
        assert panel["datasource"] == expected, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]


# --- agreement with the compose file -------------------------------------------------------


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return read_compose()["services"]  # type: ignore[no-any-return]


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> repository path of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        mounts[target] = source.removeprefix("./")
    return mounts


def test_prometheus_scrapes_the_app_and_loads_the_repositorys_files(
    services: dict[str, Any],
) -> None:
    """Prometheus reads monitoring/prometheus, and its target is the app's service name and
    HTTP_PORT default, at /metrics."""
    prometheus = services["prometheus"]
    assert _mounts(prometheus)["/etc/prometheus"] == "monitoring/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    [job] = [
        job
        for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
        if job["job_name"] == "user-activity"
    ]
    assert job["metrics_path"] == "/metrics"
    http_port = next(setting.default for setting in SETTINGS if setting.variable == "HTTP_PORT")
    assert job["static_configs"] == [{"targets": [f"app:{http_port}"]}]
    for rule_file in load_yaml(PROMETHEUS_CONFIG)["rule_files"]:
        assert (PROMETHEUS_DIR / rule_file).is_file()


def test_grafana_is_provisioned_from_the_repository(services: dict[str, Any]) -> None:
    """Grafana mounts the provisioning and dashboard folders where the provider looks, and
    its datasource is the prometheus service."""
    mounts = _mounts(services["grafana"])
    assert mounts["/etc/grafana/provisioning"] == "monitoring/grafana/provisioning"
    [provider] = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert mounts[provider["options"]["path"]] == "monitoring/grafana/dashboards"
    [datasource] = load_yaml(DATASOURCES)["datasources"]
    port = services["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert datasource["url"] == f"http://prometheus:{port}"
    home = service_environment(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"


def test_kafka_ui_reads_the_broker_on_the_compose_network(services: dict[str, Any]) -> None:
    """Kafka UI (provectuslabs/kafka-ui, pinned) bootstraps from Kafka's in-network listener."""
    kafka_ui = services["kafka-ui"]
    image, _, tag = kafka_ui["image"].rpartition(":")
    assert image == "provectuslabs/kafka-ui"
    assert tag not in {"", "latest"}
    advertised = parse_listeners(
        service_environment(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    )
    host, port = advertised["PLAINTEXT"]
    bootstrap = service_environment(kafka_ui)["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"]
    assert bootstrap == f"{host}:{port}"


@pytest.mark.parametrize("name", ["prometheus", "grafana", "kafka-ui"])
def test_monitoring_images_are_pinned_and_ports_local(services: dict[str, Any], name: str) -> None:
    """Each monitoring image has a version tag, and each port is published on 127.0.0.1 only,
    none on the app's HTTP_PORT default."""
    image = services[name]["image"]
    assert image.rpartition(":")[2] not in {"", "latest"}, image
    for entry in services[name]["ports"]:
        host, published, _ = interpolate(entry).split(":")
        assert host == "127.0.0.1", entry
        assert published != "3000", entry


# --- the README's list ---------------------------------------------------------------------


def test_readme_lists_every_metric_and_only_exported_ones() -> None:
    """Each family the service exports has a row in README.md's metrics table (the process
    collector's as one row), and every metric name the README mentions is exported."""
    readme = (MONITORING.parent / "README.md").read_text()
    section = readme[readme.index("\n## Metrics") :]
    section = section.split("\n## ", 2)[1]  # up to the next section, if any
    rows = [line for line in section.splitlines() if line.startswith(f"| `{PREFIX}")]
    listed = {name for row in rows for name in re.findall(rf"`({PREFIX}[a-z_*]+)`", row)}
    declared = {
        name for name in exported_names() if not name.endswith(("_bucket", "_sum", "_count"))
    }
    process = {name for name in declared if name.startswith(f"{PREFIX}process_")}
    assert f"{PREFIX}process_*" in listed
    assert sorted(declared - process - listed) == []
    mentioned = set(re.findall(rf"\b{PREFIX}[a-z_]+\b", readme))
    assert sorted(mentioned - exported_names() - {f"{PREFIX}process_"}) == []
