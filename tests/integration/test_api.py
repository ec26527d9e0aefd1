"""The webhook and read API through HTTP, on SQLite and the real PostgreSQL."""

from __future__ import annotations

import base64
import copy
import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from controlplane.app import create_app
from tests.conftest import TOKEN, WEBHOOK, count_rows, load_payload, make_settings


def post(client: TestClient, payload: Any, headers: dict[str, str] | None = None) -> Any:
    return client.post(
        WEBHOOK, content=json.dumps(payload), headers={"content-type": "application/json", **(headers or {})}
    )


def test_two_firing_then_resolved_through_the_api(client: TestClient) -> None:
    firing = load_payload("alertmanager_firing.json")
    accepted = post(client, firing)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json() | {"incident_ids": None} == {
        "status": "accepted",
        "alerts": 2,
        "new": 2,
        "resolved": 0,
        "duplicates": 0,
        "incident_ids": None,
    }
    [incident] = client.get("/api/v1/incidents").json()["items"]
    assert (incident["status"], incident["alerts_firing"], incident["alerts_total"]) == ("open", 2, 2)
    assert incident["severity"] == "critical"

    assert post(client, firing).json()["duplicates"] == 2  # Alertmanager repeats the group
    assert post(client, load_payload("alertmanager_resolved_one.json")).json()["resolved"] == 1
    detail = client.get(f"/api/v1/incidents/{incident['id']}").json()
    assert (detail["status"], detail["alerts_firing"]) == ("open", 1)
    by_fp = {a["fingerprint"]: a for a in detail["alerts"]}
    assert by_fp["5c4b7c9f2b6a1d3e"]["status"] == "resolved"
    assert by_fp["5c4b7c9f2b6a1d3e"]["receive_count"] == 3
    assert by_fp["5c4b7c9f2b6a1d3e"]["ends_at"] == "2026-11-24T08:10:00Z"
    assert by_fp["9a8e1f0c3d2b4a57"]["generator_url"].startswith("http://prometheus:9090/graph")

    last = copy.deepcopy(firing)
    last["status"] = "resolved"
    last["alerts"] = [a | {"status": "resolved", "endsAt": "2026-11-24T08:11:00Z"} for a in last["alerts"]]
    assert post(client, last).status_code == 200
    detail = client.get(f"/api/v1/incidents/{incident['id']}").json()
    assert detail["status"] == "resolved" and detail["resolved_at"]
    assert [e["action"] for e in detail["timeline"]] == [
        "incident.opened",
        "alert.firing",
        "alert.firing",
        "alert.resolved",
        "alert.resolved",
        "incident.resolved",
    ]
    assert detail["timeline"][0]["actor"] == "alertmanager:controlplane.auto"
    assert client.get("/api/v1/incidents", params={"status": "open"}).json()["items"] == []
    assert len(client.get("/api/v1/incidents", params={"status": "resolved"}).json()["items"]) == 1


def _huge_payload() -> bytes:
    payload = load_payload("alertmanager_firing.json")
    payload["commonAnnotations"] = {"blob": "x" * (10 * 1024 * 1024)}
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("content", "headers", "status", "message"),
    [
        (b"", {}, 400, "empty body"),
        (b"<html>alert</html>", {}, 400, "not valid JSON"),
        (json.dumps(load_payload("alertmanager_firing.json") | {"version": "3"}).encode(), {}, 422, 'version "4"'),
        (_huge_payload(), {}, 413, "over the limit"),
        (
            json.dumps({k: v for k, v in load_payload("alertmanager_firing.json").items() if k != "alerts"}).encode(),
            {},
            422,
            "alerts",
        ),
        (
            json.dumps(load_payload("alertmanager_firing.json")).encode(),
            {"Authorization": "Bearer wrong"},
            401,
            "invalid webhook credentials",
        ),
        (json.dumps(load_payload("alertmanager_firing.json")).encode(), {"Authorization": ""}, 401, "missing"),
    ],
    ids=["empty", "not-json", "version-3", "10MB", "no-alerts", "wrong-token", "no-token"],
)
def test_bad_input_gets_a_clear_4xx_and_stores_nothing(
    client: TestClient, engine: Engine, content: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    tables = ("alerts", "incidents", "incident_alerts", "audit_events", "executions")
    before = {t: count_rows(engine, t) for t in tables}  # start-up writes its own audit (leader.elected)
    response = client.post(WEBHOOK, content=content, headers={"content-type": "application/json", **headers})
    assert response.status_code == status
    assert message in response.json()["error"]
    assert {t: count_rows(engine, t) for t in tables} == before
    assert before["alerts"] == 0
    if status == 401:
        assert "Bearer" in response.headers["www-authenticate"]


def test_a_chunked_body_over_the_limit_is_refused(client: TestClient, engine: Engine) -> None:
    def chunks() -> Any:
        for _ in range(12):
            yield b"x" * (1024 * 1024)

    response = client.post(WEBHOOK, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert count_rows(engine, "alerts") == 0


def test_basic_auth_as_alertmanager_sends_it(client: TestClient) -> None:
    credentials = base64.b64encode(f"alertmanager:{TOKEN}".encode()).decode()
    response = post(client, load_payload("alertmanager_firing.json"), headers={"Authorization": f"Basic {credentials}"})
    assert response.status_code == 200


def test_incident_pages_and_filters(client: TestClient) -> None:
    for i in range(7):
        payload = load_payload("alertmanager_firing.json")
        for alert in payload["alerts"]:
            alert["labels"]["namespace"] = f"ns-{i}"
            alert["fingerprint"] += f"-{i}"
            alert["labels"]["severity"] = "warning" if i % 2 else "critical"
        assert post(client, payload).status_code == 200
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"before": cursor} if cursor else {})
        page = client.get("/api/v1/incidents", params=params).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == 7
    warnings = client.get("/api/v1/incidents", params={"severity": "warning"}).json()["items"]
    assert len(warnings) == 3
    alerts = client.get("/api/v1/alerts", params={"status": "firing", "limit": 500}).json()
    assert len(alerts["items"]) == 14 and alerts["next_cursor"] is None
    one = client.get("/api/v1/alerts", params={"fingerprint": "5c4b7c9f2b6a1d3e-3"}).json()["items"]
    assert [a["labels"]["namespace"] for a in one] == ["ns-3"]


def test_unknown_incident_and_bad_query(client: TestClient) -> None:
    missing = client.get("/api/v1/incidents/999999")
    assert missing.status_code == 404 and "999999" in missing.json()["error"]
    assert client.get("/api/v1/incidents", params={"status": "closed"}).status_code == 422
    assert client.get("/api/v1/incidents", params={"limit": 0}).status_code == 422


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "migrations": "current"}
    post(client, load_payload("alertmanager_firing.json"))
    client.post(WEBHOOK, content=b"nope", headers={"content-type": "application/json"})
    client.post(WEBHOOK, content=b"alert=1", headers={"content-type": "application/x-www-form-urlencoded"})
    text = client.get("/metrics").text
    assert 'controlplane_webhook_requests_total{outcome="accepted"} 1.0' in text
    assert 'controlplane_webhook_requests_total{outcome="malformed"} 1.0' in text
    assert 'controlplane_webhook_requests_total{outcome="unsupported_type"} 1.0' in text
    assert 'controlplane_alerts_received_total{status="firing"} 2.0' in text
    assert "controlplane_open_incidents 1.0" in text
    assert "controlplane_ingest_duration_seconds_count 1.0" in text


def test_responses_carry_a_request_id(client: TestClient) -> None:
    assert client.get("/health", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    assert len(client.get("/health", headers={"X-Request-ID": "bad id\n"}).headers["x-request-id"]) == 32


def test_webhook_answers_carry_a_request_id_and_refuse_a_nul_in_the_url(client: TestClient) -> None:
    """The webhook is answered ahead of the application's middleware (api/webhook.py): these still hold for it."""
    accepted = post(client, load_payload("alertmanager_firing.json"), headers={"X-Request-ID": "am-1"})
    assert accepted.status_code == 200 and accepted.headers["x-request-id"] == "am-1"
    assert accepted.headers["content-type"] == "application/json"
    refused = post(client, {"version": "3"})
    assert refused.status_code == 422 and len(refused.headers["x-request-id"]) == 32
    assert refused.json()["error"].startswith("unsupported payload version")
    nul = client.post(WEBHOOK + "?x=%00", json=load_payload("alertmanager_firing.json"))
    assert nul.status_code == 400 and "NUL" in nul.json()["error"]
    assert client.get(WEBHOOK).status_code == 405  # other methods are the application's


def test_webhook_bodies_are_bounded_by_their_own_limit_not_the_consoles(database_url: str, engine: Engine) -> None:
    payload = load_payload("alertmanager_firing.json")
    payload["alerts"][0]["annotations"]["description"] = "x" * 100_000  # over the console forms' 64 KiB
    settings = make_settings(database_url, max_body_bytes=200_000)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert post(client, payload).status_code == 200
        payload["alerts"][0]["annotations"]["description"] = "x" * 250_000
        too_large = post(client, payload)
        assert too_large.status_code == 413 and "200000 bytes" in too_large.json()["error"]


def test_a_webhook_that_fails_unexpectedly_answers_500_and_is_counted(database_url: str, engine: Engine) -> None:
    app = create_app(make_settings(database_url))
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}, raise_server_exceptions=False) as client:

        async def broken(_notification: Any) -> Any:
            raise RuntimeError("a bug")

        app.state.services.writer.submit = broken
        failed = post(client, load_payload("alertmanager_firing.json"))
        assert failed.status_code == 500 and failed.text == "Internal Server Error"
        assert len(failed.headers["x-request-id"]) == 32
        assert 'controlplane_webhook_requests_total{outcome="error"} 1.0' in client.get("/metrics").text


def test_openapi_documents_the_webhook_and_docs_need_no_cdn(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"][WEBHOOK]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/AlertmanagerNotification"}
    assert "AlertmanagerAlert" in spec["components"]["schemas"]
    assert {"/api/v1/incidents", "/api/v1/incidents/{incident_id}", "/api/v1/alerts"} <= set(spec["paths"])
    for page in ("/docs", "/redoc"):  # rendered in a browser by tests/e2e/test_docs_browser.py
        docs = client.get(page)
        assert docs.status_code == 200
        assets = re.findall(r'(?:href|src)="([^"]+)"', docs.text)
        assert assets and all(a.startswith("/static/console/apidocs/") for a in assets), assets
        assert all(client.get(asset).status_code == 200 for asset in assets)
        assert "googleapis" not in docs.text and "cdn" not in docs.text.lower()
        assert "'unsafe-eval'" not in docs.headers["content-security-policy"]
        assert docs.headers["x-frame-options"] == "DENY"


def test_group_by_is_configurable(database_url: str, engine: Engine) -> None:
    settings = make_settings(database_url, incident_group_by=["alertname"])
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        payload = load_payload("alertmanager_firing.json")
        payload["alerts"][1]["labels"]["namespace"] = "billing"
        post(client, payload)
        [incident] = client.get("/api/v1/incidents").json()["items"]
        assert incident["key"] == '{alertname="LangGraphHighErrorRate"}'
        assert incident["alerts_total"] == 2


def test_open_webhook_when_no_token_is_configured(database_url: str, engine: Engine) -> None:
    with TestClient(create_app(make_settings(database_url, webhook_token=None))) as client:
        assert post(client, load_payload("alertmanager_firing.json")).status_code == 200
