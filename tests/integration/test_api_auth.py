"""Who may read the API: a read token, the admin token or a console login; the webhook only takes JSON.

The tokens here are all different (the shared test settings use one value for the webhook and
read tokens, so one client header serves both): the webhook token must not read, a read token
must not change anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from fastapi.testclient import TestClient

from controlplane.app import create_app
from tests.conftest import WEBHOOK, load_payload, make_settings
from tests.helpers import SESSION_SECRET, console_users

WEBHOOK_TOKEN = "webhook-only-0123456789abcdef"
READ_TOKEN = "read-only-0123456789abcdef0123"
ADMIN = "admin-0123456789abcdef01234567"
OPEN = {"/health", "/ready", "/metrics"}


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(
        database_url,
        webhook_token=WEBHOOK_TOKEN,
        read_token=READ_TOKEN,
        admin_token=ADMIN,
        console_users=console_users(vic="viewer"),
        session_secret=SESSION_SECRET,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def read_paths(client: TestClient) -> list[str]:
    """Every GET operation of the API as its OpenAPI document lists it, with 1 for each path parameter."""
    spec = client.get("/openapi.json").json()
    return sorted(
        re.sub(r"\{[^}]+\}", "1", path)
        for path, operations in spec["paths"].items()
        if "get" in operations and path.startswith("/api/v1")
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_every_read_needs_a_credential(app: TestClient) -> None:
    paths = read_paths(app)
    assert "/api/v1/incidents" in paths and "/api/v1/rules" in paths and "/api/v1/endpoints" in paths
    for path in paths:
        for headers in ({}, bearer(WEBHOOK_TOKEN), bearer("wrong"), {"Authorization": "Basic " + "x" * 20}):
            response = app.get(path, headers=headers)
            assert response.status_code == 401, (path, headers, response.status_code)
            assert "credential" in response.json()["error"]
        for token in (READ_TOKEN, ADMIN):
            status = app.get(path, headers=bearer(token)).status_code
            assert status in (200, 404, 422), (path, status)  # 404/422: no object 1, a required parameter
    for path in OPEN:
        assert app.get(path).status_code == 200, path


def test_a_console_login_reads_the_api(app: TestClient) -> None:
    page = app.get("/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    response = app.post(
        "/login",
        data={"username": "vic", "password": "correct horse", "csrf_token": csrf.group(1)},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert app.get("/api/v1/incidents").status_code == 200  # the session cookie is the credential
    app.cookies.clear()
    assert app.get("/api/v1/incidents").status_code == 401


def test_a_read_token_cannot_change_anything(app: TestClient) -> None:
    for path in ("/api/v1/rules/reload", "/api/v1/automation/pause", "/api/v1/executions/1/approve"):
        assert app.post(path, headers=bearer(READ_TOKEN), json={}).status_code == 401, path
    assert (
        app.post(WEBHOOK, headers=bearer(READ_TOKEN), json=load_payload("alertmanager_firing.json")).status_code == 401
    )


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_the_webhook_takes_only_json(app: TestClient, content_type: str | None) -> None:
    body = json.dumps(load_payload("alertmanager_firing.json")).encode()
    headers = bearer(WEBHOOK_TOKEN) | ({"Content-Type": content_type} if content_type else {})
    response = app.post(WEBHOOK, content=body, headers=headers)
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["error"]
    assert app.get("/api/v1/alerts", headers=bearer(READ_TOKEN)).json()["items"] == []
    ok = app.post(
        WEBHOOK, content=body, headers=bearer(WEBHOOK_TOKEN) | {"Content-Type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 200, ok.text


def test_without_tokens_development_is_open_and_says_so(database_url: str) -> None:
    settings = make_settings(database_url, webhook_token=None, admin_token=None, read_token=None)
    with structlog.testing.capture_logs() as logs, TestClient(create_app(settings)) as client:
        assert client.get("/api/v1/incidents").status_code == 200
    [warning] = [entry for entry in logs if entry["event"] == "security.open"]
    assert warning["log_level"] == "warning"
    assert any("webhook" in part for part in warning["open"]) and any("read API" in part for part in warning["open"])


def test_with_a_token_nothing_is_said_and_reads_are_closed(database_url: str) -> None:
    settings = make_settings(database_url, webhook_token=WEBHOOK_TOKEN, admin_token=None, read_token=READ_TOKEN)
    with structlog.testing.capture_logs() as logs, TestClient(create_app(settings)) as client:
        assert client.get("/api/v1/incidents").status_code == 401
    assert not [entry for entry in logs if entry["event"] == "security.open"]
