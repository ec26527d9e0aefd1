"""The shipped degradation rules (rules/degradation.yaml) through the running control plane, on the real sample service.

Alerts arrive as Alertmanager sends them: a firing notification, repeated while the alert fires, and
its resolve, which Prometheus sends only after the alert's 5-minute hold-down (keep_firing_for in
alerting/degradation.rules.yaml, whose promtool tests show a flap never resolving it). The rule file
is the shipped one, with its `langgraph` target pointed at the sample service and verify.resolved
polling every 100 ms instead of 30 s; on SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controlplane.actions.builtin import build_registry
from controlplane.app import create_app
from controlplane.rules.loader import load_rules
from tests.conftest import RULES, TOKEN, make_settings
from tests.helpers import post_alerts
from tests.sample_fixture import SampleApp, SampleClient

TARGET = """
targets:
  - {{name: langgraph, kind: http, url: "{url}", min_service_level: minimal}}
"""
WAIT = 15.0


@pytest.fixture
def service(database_url: str, sample_app: SampleApp, tmp_path: Path) -> Iterator[TestClient]:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    shipped = (RULES / "degradation.yaml").read_text()
    assert shipped.count("poll: 30s") == 2
    (rules_dir / "degradation.yaml").write_text(shipped.replace("poll: 30s", "poll: 100ms"))
    (rules_dir / "targets.yaml").write_text(TARGET.format(url=f"{sample_app.url}/admin"))
    load_rules(rules_dir, build_registry())  # what `controlplane check` runs: the files must pass it
    settings = make_settings(database_url, rules_dir=rules_dir, worker_poll_seconds=0.05)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def alert(name: str, status: str = "firing", **labels: str) -> dict[str, Any]:
    """One Alertmanager alert of ours, its fingerprint made of its labels; a resolved one has ended."""
    labels = {"alertname": name, "namespace": "agents", "instance": "a:8000", **labels}
    fingerprint = hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]
    out: dict[str, Any] = {"labels": labels, "fingerprint": fingerprint}
    if status == "resolved":
        out.update(status="resolved", endsAt="2026-11-24T08:30:00Z")
    return out


def down(dependency: str, feature: str, status: str = "firing") -> dict[str, Any]:
    return alert("LangGraphDependencyDown", status, severity="warning", dependency=dependency, feature=feature)


def degradation(c: SampleClient) -> tuple[str, list[str]]:
    view = c.admin("GET", "/degradation")
    return view["level"], view["features"]


def until(what: str, check: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {WAIT:g}s: {what}")


def executions(client: TestClient) -> list[dict[str, Any]]:
    return list(client.get("/api/v1/executions").json()["items"])


def uses(c: SampleClient, feature: str, result: str) -> float:
    return c.metric("langgraph_feature_requests_total", feature=feature, result=result)


def test_one_failed_dependency_degrades_its_feature_holds_through_a_flap_and_restores_on_the_resolve(
    service: TestClient, sample_app: SampleApp
) -> None:
    c = sample_app.client
    c.fault(dependency="external_api", broken=True)
    c.wait_until(lambda: uses(c, "external_api", "error") >= 3)
    post_alerts(service, down("external_api", "external_api"))
    until("external_api degraded", lambda: degradation(c) == ("degraded", ["external_api"]))
    fallbacks = uses(c, "external_api", "fallback")
    errors = uses(c, "external_api", "error")
    c.wait_until(lambda: uses(c, "external_api", "fallback") >= fallbacks + 3)
    assert uses(c, "external_api", "error") == errors  # the feature answers its fallback, no error
    assert uses(c, "retrieval", "fallback") == 0  # the other features run as before

    # The dependency recovers, then fails again within the hold-down: the alert never resolved, and
    # Alertmanager repeats it as firing. Nothing is restored, nothing is run again.
    c.clear_faults()
    c.fault(dependency="external_api", broken=True)
    post_alerts(service, down("external_api", "external_api"))
    time.sleep(0.5)  # several of the run's polls
    assert degradation(c) == ("degraded", ["external_api"])
    (only,) = executions(service)  # one run, still waiting for the resolve (or polling for it right now)
    assert only["status"] in ("waiting", "running")

    # Healthy for the whole hold-down: Prometheus resolves the alert, the run restores the feature.
    c.clear_faults()
    post_alerts(service, down("external_api", "external_api", "resolved"))
    until("restored", lambda: degradation(c) == ("full", []))
    run = until("the run ended", lambda: [e for e in executions(service) if e["status"] == "succeeded"])
    assert len(executions(service)) == 1 and run[0]["rule_name"] == "dependency-down"
    ok = uses(c, "external_api", "ok")
    c.wait_until(lambda: uses(c, "external_api", "ok") >= ok + 3)


def test_two_failed_dependencies_go_minimal_and_come_back_up_as_the_alerts_resolve(
    service: TestClient, sample_app: SampleApp
) -> None:
    c = sample_app.client
    c.fault(dependency="analysis_model", broken=True)
    c.fault(dependency="vector_store", broken=True)
    both = alert("LangGraphDependenciesDown", severity="critical")
    post_alerts(service, down("analysis_model", "advanced_analysis"), down("vector_store", "retrieval"), both)
    until("minimal", lambda: degradation(c) == ("minimal", ["advanced_analysis", "retrieval"]))
    assert c.metric("langgraph_feature_degraded") == 3  # every feature on its fallback
    fallbacks = uses(c, "external_api", "fallback")
    c.wait_until(lambda: uses(c, "external_api", "fallback") >= fallbacks + 3)  # its dependency is fine

    # analysis_model recovers: fewer than two down, held down, then resolved; vector_store still down.
    c.fault(dependency="analysis_model", broken=False)
    post_alerts(service, alert("LangGraphDependenciesDown", "resolved", severity="critical"))
    until("back up to degraded", lambda: degradation(c)[0] == "degraded")
    assert degradation(c) == ("degraded", ["advanced_analysis", "retrieval"])  # their own runs hold them off
    assert uses(c, "external_api", "ok") > 0

    c.clear_faults()
    post_alerts(service, down("analysis_model", "advanced_analysis", "resolved"))
    post_alerts(service, down("vector_store", "retrieval", "resolved"))
    until("full", lambda: degradation(c) == ("full", []))
    until("every run ended", lambda: all(e["status"] == "succeeded" for e in executions(service)))
    rules = sorted(e["rule_name"] for e in executions(service))
    assert rules == ["dependencies-down", "dependency-down", "dependency-down"]
