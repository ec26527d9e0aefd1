"""A NUL byte wherever a client or a person can put text: a 4xx or an empty result, never a 500.

PostgreSQL cannot store NUL in text (or \\u0000 in jsonb), so on it a NUL that reached a query
or an insert was a 500. Every query parameter and path parameter of the read API, every
console form field, the login form and the admin API's JSON bodies, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from controlplane.db.tables import audit_t
from tests.conftest import ADMIN_TOKEN
from tests.helpers import console_app, console_users, csrf, log_in

NUL = "a\x00b"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

RULES = """
rules:
  - name: careful
    match: {alertname: LangGraphHighErrorRate}
    playbook: tell
    guards: {approval: true}
playbooks:
  - name: tell
    steps:
      - action: notify.log
        with: {text: "hello"}
failover:
  - service: agents
    interval: 1h
    endpoints:
      - {name: primary, url: "http://127.0.0.1:9", region: eu-west}
      - {name: backup, url: "http://127.0.0.1:9", region: us-east, priority: 1}
"""


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with console_app(
        database_url,
        RULES,
        tmp_path,
        users=console_users(root="admin"),
        seeded=True,
        raise_server_exceptions=False,
        console_login_max_failures=3,
    ) as client:
        yield client


def refused_or_empty(response: Any, what: str) -> None:
    assert response.status_code < 500, f"{what}: {response.status_code} {response.text[:300]}"
    if response.status_code == 200 and response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        if isinstance(body, dict) and "items" in body:
            assert body["items"] == [], what


def api_reads(client: TestClient) -> list[tuple[str, dict[str, str]]]:
    """Every GET of the API with NUL in each string parameter, one at a time, from its OpenAPI document."""
    spec = client.get("/openapi.json").json()
    requests = []
    for path, operations in spec["paths"].items():
        get = operations.get("get")
        if get is None or not path.startswith("/api/v1"):
            continue
        for parameter in get.get("parameters", []):
            schema = parameter.get("schema", {})
            types = {schema.get("type")} | {s.get("type") for s in schema.get("anyOf", [])}
            if "string" not in types:
                continue
            if parameter["in"] == "query":
                requests.append((re.sub(r"\{[^}]+\}", "1", path), {parameter["name"]: NUL}))
            elif parameter["in"] == "path":
                requests.append((path.replace("{" + parameter["name"] + "}", "a%00b"), {}))
    return requests


def test_nul_in_any_query_or_path_parameter(app: TestClient) -> None:
    requests = api_reads(app)
    reads = {"/api/v1/incidents", "/api/v1/alerts", "/api/v1/executions", "/api/v1/endpoints/active"}
    assert reads <= {path for path, _ in requests}, requests
    for path, params in requests:
        refused_or_empty(app.get(path, params=params), f"GET {path} {params!r}")
    refused_or_empty(app.get("/api/v1/incidents", params={"status": NUL}), "status")


def test_nul_in_the_console_search_and_forms(app: TestClient) -> None:
    log_in(app, "root")
    token = csrf(app, "/incidents/1")
    for params in ({"q": NUL}, {"severity": NUL}, {"status": NUL}):
        refused_or_empty(app.get("/incidents", params=params), f"/incidents {params}")
    execution = app.get("/api/v1/executions", params={"status": "awaiting_approval"}).json()["items"][0]["id"]
    forms = [
        ("/incidents/1/notes", {"text": NUL}),
        ("/incidents/1/silence", {"duration": NUL, "comment": NUL}),
        ("/incidents/1/silence", {"duration": "1h", "comment": NUL}),
        ("/incidents/1/resolve", {"reason": NUL}),
        (f"/executions/{execution}/reject", {"reason": NUL}),
        ("/automation/pause", {"reason": NUL}),
        ("/incidents/1/acknowledge", {"next": NUL}),
        ("/logout", {"x": NUL}),
    ]
    for path, fields in forms:
        response = app.post(path, data={"csrf_token": token, **fields}, follow_redirects=False)
        refused_or_empty(response, f"POST {path} {fields!r}")
    assert app.get("/api/v1/incidents/1").json()["status"] == "open"  # the NUL resolve changed nothing


def test_nul_in_the_admin_api(app: TestClient) -> None:
    execution = app.get("/api/v1/executions", params={"status": "awaiting_approval"}).json()["items"][0]["id"]
    for path, body in [
        (f"/api/v1/executions/{execution}/approve", {"reason": NUL}),
        (f"/api/v1/executions/{execution}/cancel", {"reason": NUL}),
        ("/api/v1/automation/pause", {"reason": NUL}),
        ("/api/v1/automation/dry-run", {"enabled": True, "reason": NUL}),
        ("/api/v1/failover/agents/switch", {"to": NUL, "reason": "x"}),
        ("/api/v1/failover/agents/switch", {"to": "backup", "reason": NUL}),
        ("/api/v1/failover/a%00b/switch", {"to": "backup"}),
    ]:
        refused_or_empty(app.post(path, json=body, headers=ADMIN), f"POST {path} {body!r}")
    assert app.get(f"/api/v1/executions/{execution}").json()["status"] == "awaiting_approval"


def test_a_login_with_nul_is_counted_and_audited(app: TestClient, engine: Engine) -> None:
    statuses = []
    for _ in range(4):
        token = csrf(app, "/login")
        answer = app.post("/login", data={"csrf_token": token, "username": "ro\x00ot", "password": "x\x00y"})
        statuses.append(answer.status_code)
    assert statuses == [401, 401, 401, 429], statuses
    with engine.connect() as conn:
        failed = conn.execute(select(audit_t.c.detail).where(audit_t.c.action == "console.login_failed")).scalars()
        users = [detail["user"] for detail in failed]
    assert len(users) == 3 and all(user.startswith("ro") and user.endswith("ot") for user in users), users
