"""The running service expires the silences it created for an incident once the incident resolves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from controlplane.app import create_app
from tests.alertmanager_server import AlertmanagerServer
from tests.conftest import TOKEN, WEBHOOK, load_payload, make_settings
from tests.helpers import SESSION_SECRET, console_users, csrf, log_in, wait_for

RULES = """
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
"""


@pytest.fixture
def silenced(database_url: str, tmp_path: Path, alertmanager: AlertmanagerServer) -> Iterator[tuple[TestClient, str]]:
    """The service with an incident whose playbook silenced it in the real Alertmanager: (client, silence id)."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "silence.yaml").write_text(RULES)
    settings = make_settings(
        database_url,
        rules_dir=rules,
        alertmanager_url=alertmanager.url,
        worker_poll_seconds=0.05,
        console_users=console_users(oncall="operator"),
        session_secret=SESSION_SECRET,
    )
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert client.post(WEBHOOK, json=load_payload("alertmanager_firing.json")).status_code == 200
        silence_id = wait_for("the playbook creates the silence", lambda: _silence_of(client), 15)
        assert alertmanager.silence(silence_id)["status"] == {"state": "active"}
        yield client, silence_id


def test_resolve_expires_the_incident_silence(
    silenced: tuple[TestClient, str], alertmanager: AlertmanagerServer
) -> None:
    client, silence_id = silenced
    resolved = load_payload("alertmanager_firing.json")
    resolved["status"] = "resolved"
    resolved["alerts"] = [a | {"status": "resolved", "endsAt": "2026-11-24T08:20:00Z"} for a in resolved["alerts"]]
    assert client.post(WEBHOOK, json=resolved).status_code == 200
    wait_for("the silence expires", lambda: alertmanager.silence(silence_id)["status"] == {"state": "expired"}, 15)


def test_resolving_by_hand_expires_the_incident_silence_too(
    silenced: tuple[TestClient, str], alertmanager: AlertmanagerServer
) -> None:
    """Our silence must not hide the next episode of an incident someone resolved in the console."""
    client, silence_id = silenced
    [incident] = client.get("/api/v1/incidents").json()["items"]
    log_in(client, "oncall")
    token = csrf(client, f"/incidents/{incident['id']}")
    answer = client.post(f"/incidents/{incident['id']}/resolve", data={"csrf_token": token}, follow_redirects=False)
    assert answer.status_code == 303
    wait_for("the silence expires", lambda: alertmanager.silence(silence_id)["status"] == {"state": "expired"}, 15)


def _silence_of(client: TestClient) -> str | None:
    items = client.get("/api/v1/executions", params={"status": "succeeded"}).json()["items"]
    if not items:
        return None
    detail = client.get(f"/api/v1/executions/{items[0]['id']}").json()
    return str(detail["steps"][0]["output"]["value"])
