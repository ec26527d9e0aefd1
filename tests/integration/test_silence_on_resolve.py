"""The running service expires the silences it created for an incident once the incident resolves."""

from __future__ import annotations

import copy
from pathlib import Path

from fastapi.testclient import TestClient

from controlplane.app import create_app
from tests.alertmanager_server import AlertmanagerServer
from tests.conftest import TOKEN, WEBHOOK, load_payload, make_settings
from tests.helpers import wait_for


def test_resolve_expires_the_incident_silence(
    database_url: str, tmp_path: Path, alertmanager: AlertmanagerServer
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "silence.yaml").write_text("""
rules:
  - name: quiet-while-fixing
    match: {alertname: LangGraphHighErrorRate}
    playbook: quiet
playbooks:
  - name: quiet
    steps:
      - id: silenced
        action: alertmanager.silence
        with: {duration: 2h, comment: "fixing"}
""")
    settings = make_settings(database_url, rules_dir=rules, alertmanager_url=alertmanager.url, worker_poll_seconds=0.05)
    payload = load_payload("alertmanager_firing.json")
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert client.post(WEBHOOK, json=payload).status_code == 200
        silence_id = wait_for("the playbook creates the silence", lambda: _silence_of(client), 15)
        assert alertmanager.silence(silence_id)["status"] == {"state": "active"}

        resolved = copy.deepcopy(payload)
        resolved["status"] = "resolved"
        resolved["alerts"] = [a | {"status": "resolved", "endsAt": "2026-11-24T08:20:00Z"} for a in resolved["alerts"]]
        assert client.post(WEBHOOK, json=resolved).status_code == 200
        wait_for("the silence expires", lambda: alertmanager.silence(silence_id)["status"] == {"state": "expired"}, 15)


def _silence_of(client: TestClient) -> str | None:
    items = client.get("/api/v1/executions", params={"status": "succeeded"}).json()["items"]
    if not items:
        return None
    detail = client.get(f"/api/v1/executions/{items[0]['id']}").json()
    return str(detail["steps"][0]["output"]["value"])
