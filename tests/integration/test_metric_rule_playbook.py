"""A metric rule in the running service: Prometheus condition -> incident -> playbook, on both databases."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from controlplane.app import create_app
from controlplane.services import Services
from tests.alertmanager_server import AlertmanagerServer
from tests.conftest import AUTH, make_settings
from tests.helpers import wait_for
from tests.prometheus_server import PrometheusServer


def test_a_firing_metric_rule_runs_its_playbook(
    database_url: str, tmp_path: Path, prometheus: PrometheusServer
) -> None:
    name = prometheus.unique_name("cp_queue_depth")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "metric.yaml").write_text(f"""
rules:
  - name: deep-queue
    when: {{query: 'max({name})', above: 100, for: 0s, labels: {{namespace: agents, severity: warning}}}}
    playbook: note
playbooks:
  - name: note
    steps:
      - action: incident.annotate
        with: {{text: "queue depth is {{{{ alert.annotations.summary }}}}"}}
""")
    prometheus.target.set(name, {"queue": "checkpoints"}, 250)
    prometheus.wait_for(f"max({name})", 250)
    settings = make_settings(
        database_url,
        rules_dir=rules,
        prometheus_url=prometheus.url,
        worker_poll_seconds=0.05,
        metric_rule_interval_seconds=3600,  # evaluated on demand below
    )
    app = create_app(settings)
    with TestClient(app, headers=AUTH) as client:
        services: Services = app.state.services
        [evaluation] = services.scheduler.evaluate_now()
        assert evaluation.state == "firing"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            items = client.get("/api/v1/executions", params={"status": "succeeded"}).json()["items"]
            if items:
                break
            time.sleep(0.05)
        assert items, client.get("/api/v1/executions").json()
        [execution] = items
        assert execution["rule_name"] == "deep-queue"
        incident = client.get(f"/api/v1/incidents/{execution['incident_id']}").json()
        assert incident["key"] == '{alertname="deep-queue",namespace="agents"}'
        [note] = [e for e in incident["timeline"] if e["action"] == "incident.note"]
        assert "250" in note["detail"]["text"]
        assert incident["timeline"][0]["actor"] == "metric-rule:deep-queue"

        prometheus.target.set(name, {"queue": "checkpoints"}, 3)
        prometheus.wait_for(f"max({name})", 3)
        services.scheduler.evaluate_now()
        assert client.get(f"/api/v1/incidents/{execution['incident_id']}").json()["status"] == "resolved"
    prometheus.target.remove(name)


def test_a_metric_rule_that_clears_lifts_its_incident_silence(
    database_url: str, tmp_path: Path, prometheus: PrometheusServer, alertmanager: AlertmanagerServer
) -> None:
    """As for an Alertmanager alert that resolves: our silence must not hide the rule's next episode."""
    name = prometheus.unique_name("cp_queue_depth")
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "metric.yaml").write_text(f"""
rules:
  - name: deep-queue
    when: {{query: 'max({name})', above: 100, for: 0s, labels: {{namespace: agents, severity: warning}}}}
    playbook: quiet
playbooks:
  - name: quiet
    steps:
      - action: alertmanager.silence
        with: {{duration: 2h, comment: "draining the queue"}}
""")
    prometheus.target.set(name, {"queue": "checkpoints"}, 250)
    prometheus.wait_for(f"max({name})", 250)
    settings = make_settings(
        database_url,
        rules_dir=rules,
        prometheus_url=prometheus.url,
        alertmanager_url=alertmanager.url,
        worker_poll_seconds=0.05,
        metric_rule_interval_seconds=3600,  # evaluated on demand below
    )
    app = create_app(settings)
    with TestClient(app, headers=AUTH) as client:
        services: Services = app.state.services
        assert [e.state for e in services.scheduler.evaluate_now()] == ["firing"]

        def silence_id() -> str | None:
            items = client.get("/api/v1/executions", params={"status": "succeeded"}).json()["items"]
            return (
                str(client.get(f"/api/v1/executions/{items[0]['id']}").json()["steps"][0]["output"]["value"])
                if items
                else None
            )

        silence = wait_for("the playbook silences the incident", silence_id, 15)
        assert alertmanager.silence(silence)["status"] == {"state": "active"}
        prometheus.target.set(name, {"queue": "checkpoints"}, 3)
        prometheus.wait_for(f"max({name})", 3)
        assert [e.state for e in services.scheduler.evaluate_now()] == ["inactive"]
        wait_for("the silence expires", lambda: alertmanager.silence(silence)["status"] == {"state": "expired"}, 15)
    prometheus.target.remove(name)
