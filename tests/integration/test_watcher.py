"""Who watches the watcher: what the rules that page when the control plane is dead, missing or deaf rely on.

The rules' firing and quiet cases are promtool unit tests (alerting/tests/controlplane_test.yaml of
the packaged defaults, run by test_alerting_rules.py). Here, with Debian's real binaries: the metrics
they compare exist as the rules spell them, Alertmanager's routing (`amtool config routes test` runs
its own routing code) sends each alert where it must go, and Prometheus scrapes the jobs the rules
assume.
"""

from __future__ import annotations

import re
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from controlplane.durations import parse_duration
from tests.alertmanager_server import AlertmanagerServer
from tests.conftest import RULES, require_binary

REPO = Path(__file__).resolve().parents[2]
ALERTING = RULES.parent / "alerting"  # as test_alerting_rules.py finds the shipped alerting rules
CONTROLPLANE_RULES = ALERTING / "controlplane.rules.yaml"
LANGGRAPH_RULES = ALERTING / "langgraph.rules.yaml"
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
KUBERNETES = REPO / "deploy" / "kubernetes"

CONTROLPLANE = "controlplane"  # the receiver posting to the control plane's webhook
ONCALL = "oncall"  # the people: a placeholder an SRE fills in
HEARTBEAT = "heartbeat"  # the external dead man's switch
WATCHDOG = "Watchdog"
SILENT = "ControlPlaneWebhookSilent"


def alerts(path: Path) -> list[dict[str, Any]]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def expressions() -> list[str]:
    return [
        str(rule["expr"])
        for path in (CONTROLPLANE_RULES, LANGGRAPH_RULES)
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def alertmanager_config() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    return loaded


def test_a_control_plane_that_accepted_nothing_yet_exports_a_zero(client: TestClient) -> None:
    """ControlPlaneWebhookSilent counts `increase()` of the accepted webhooks: a series that first appears
    at 1 has no increase, so a fresh or long-dead control plane's first webhook would go unseen."""
    text = client.get("/metrics").text
    assert 'controlplane_webhook_requests_total{outcome="accepted"} 0.0' in text


def test_the_alertmanager_metrics_the_rules_compare_are_debians(alertmanager: AlertmanagerServer) -> None:
    """Each `alertmanager_*{integration="webhook"}` the rules name is exported by the real Alertmanager,
    labelled by integration only: 0.25 cannot tell the control plane's webhook from the heartbeat's,
    which is why the Watchdog is routed to the control plane too (see the next tests)."""
    used = {name for expr in expressions() for name in re.findall(r"\b(alertmanager_\w+)\{", expr)}
    assert used == {"alertmanager_notifications_total", "alertmanager_notifications_failed_total"}
    assert all('integration="webhook"' in expr for expr in expressions() if "alertmanager_" in expr)
    exported = alertmanager.http.get("/metrics").text
    for name in used:
        labels = re.findall(rf"^{name}\{{(.*)\}} ", exported, flags=re.MULTILINE)
        assert 'integration="webhook"' in labels, f"{name} not exported by {alertmanager.url}"
        # A receiver label (Alertmanager 0.27+) would let the rules select the control plane's receiver.
        assert {re.sub(r'="[^"]*"', "", pair) for pair in labels} == {"integration"}, labels


def routes(labels: dict[str, str]) -> list[str]:
    """The receivers Alertmanager's routing tree gives these labels, in order, by Debian's amtool."""
    result = subprocess.run(
        [
            require_binary("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_CONFIG}",
            *(f"{name}={value}" for name, value in labels.items()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip().split(",")


def labels_of(rule: dict[str, Any]) -> dict[str, str]:
    # What Prometheus sends: the alert's name, its rule labels, and the series' namespace.
    return {"alertname": rule["alert"], "namespace": "agents", **rule["labels"]}


@pytest.mark.parametrize("rule", alerts(CONTROLPLANE_RULES), ids=lambda rule: rule["alert"])
def test_the_control_plane_alerts_reach_people_not_only_the_control_plane(rule: dict[str, Any]) -> None:
    if rule["alert"] == WATCHDOG:
        assert routes(labels_of(rule)) == [HEARTBEAT, CONTROLPLANE]
    else:
        assert routes(labels_of(rule)) == [ONCALL]


@pytest.mark.parametrize("rule", alerts(LANGGRAPH_RULES), ids=lambda rule: rule["alert"])
def test_the_langgraph_alerts_reach_the_control_plane_and_critical_ones_people(rule: dict[str, Any]) -> None:
    expected = [CONTROLPLANE, ONCALL] if rule["labels"]["severity"] == "critical" else [CONTROLPLANE]
    assert routes(labels_of(rule)) == expected


def test_any_other_alert_goes_to_the_control_plane() -> None:
    assert routes({"alertname": "DiskFull", "namespace": "agents", "severity": "warning"}) == [CONTROLPLANE]
    # Routing is by the component label, not by name: a new control plane alert needs nothing here.
    assert routes({"alertname": "ControlPlaneNew", "component": "controlplane", "severity": "critical"}) == [ONCALL]


def test_only_the_control_plane_receiver_posts_to_the_control_plane() -> None:
    receivers = {r["name"]: r for r in alertmanager_config()["receivers"]}
    assert set(receivers) == {CONTROLPLANE, ONCALL, HEARTBEAT}
    [webhook] = receivers[CONTROLPLANE]["webhook_configs"]
    for name, receiver in receivers.items():
        if name != CONTROLPLANE:
            urls = [config["url"] for config in receiver.get("webhook_configs", [])]
            assert webhook["url"] not in urls, name
    assert receivers[ONCALL].get("pagerduty_configs") or receivers[ONCALL].get("slack_configs")
    assert "webhook_configs" not in receivers[ONCALL]  # Alertmanager 0.25 would count it with the control plane's


def watchdog_route(receiver: str) -> dict[str, Any]:
    [route] = [
        r
        for r in alertmanager_config()["route"]["routes"]
        if r["matchers"] == [f'alertname="{WATCHDOG}"'] and r["receiver"] == receiver
    ]
    return route


def every(route: dict[str, Any]) -> timedelta:
    """Longest time between two notifications of an unchanged group: the repeat interval, checked only
    at each group interval."""
    top = alertmanager_config()["route"]
    return parse_duration(route.get("repeat_interval", top["repeat_interval"])) + parse_duration(
        route.get("group_interval", top["group_interval"])
    )


def test_the_control_plane_hears_the_watchdog_often_enough_for_the_silence_rule() -> None:
    """ControlPlaneWebhookSilent fires when nothing was accepted in its window: a control plane that
    Alertmanager reaches must get the Watchdog at least twice per window, or quiet hours page."""
    [silent] = [rule for rule in alerts(CONTROLPLANE_RULES) if rule["alert"] == SILENT]
    windows = set(re.findall(r"\[(\w+)\]", silent["expr"]))
    assert len(windows) == 1, windows  # both sides over the same window
    window = parse_duration(windows.pop())
    assert 2 * every(watchdog_route(CONTROLPLANE)) <= window
    # The heartbeat service is told to expect a ping every 5 minutes (alerting/RUNBOOKS.md#watchdog).
    assert every(watchdog_route(HEARTBEAT)) <= timedelta(minutes=5)
    assert watchdog_route(HEARTBEAT)["continue"] is True


def test_prometheus_scrapes_the_jobs_the_rules_assume() -> None:
    jobs = [job for expr in expressions() for job in re.findall(r'\bjob="([^"]*)"', expr)]
    assert jobs == [CONTROLPLANE], "the control plane's job is named once, in the controlplane:up rule"
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    scraped = {job["job_name"]: job for job in config["scrape_configs"]}
    assert CONTROLPLANE in scraped
    # prometheus-operator names a ServiceMonitor's job after the Service unless jobLabel says otherwise.
    documents = [d for p in sorted(KUBERNETES.rglob("*.y*ml")) for d in yaml.safe_load_all(p.read_text())]
    manifests = [d for d in documents if isinstance(d, dict)]  # JSON patches are lists
    services = {d.get("metadata", {}).get("name") for d in manifests if d.get("kind") == "Service"}
    for monitor in [d for d in manifests if d.get("kind") == "ServiceMonitor"]:
        assert "jobLabel" not in monitor.get("spec", {}) and CONTROLPLANE in services, monitor
    # The silence and delivery rules need Alertmanager's metrics: every Alertmanager alerts go to is scraped.
    sent_to = {t for am in config["alerting"]["alertmanagers"] for c in am["static_configs"] for t in c["targets"]}
    assert {t for c in scraped["alertmanager"]["static_configs"] for t in c["targets"]} == sent_to
