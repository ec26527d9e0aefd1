"""The web console over HTTP on SQLite and PostgreSQL: login, roles, CSRF, escaping, htmx blocks, filters, paging."""

from __future__ import annotations

import io
import json
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from fastapi import Request
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text

from controlplane.actions.builtin import build_registry
from controlplane.app import create_app
from controlplane.cli import main
from controlplane.config import SettingsError, load_settings
from controlplane.db import migrate
from controlplane.db.engine import make_engine, write_transaction
from controlplane.db.tables import audit_t, executions_t, incidents_t
from controlplane.rules.loader import RuleSet, load_rules
from controlplane.web import rules_view, views
from controlplane.web.auth import LoginThrottle, console_user
from controlplane.web.routes import safe_next
from tests.alertmanager_server import AlertmanagerServer
from tests.conftest import AUTH, count_rows, make_settings
from tests.helpers import PASSWORD_HASH, SESSION_SECRET, console_app, console_users, csrf, log_in, post_alerts

USERS = console_users(viewer="viewer", operator="operator", admin="admin")
HX = {"HX-Request": "true"}

RULES = """
rules:
  - name: careful
    match: {alertname: NeedsApproval}
    playbook: tell
    guards: {approval: true}
  - name: slow-graphs
    when: {query: 'vector(42)', above: 30, for: 1m}
    playbook: tell
playbooks:
  - name: tell
    steps:
      - action: notify.log
        with: {text: "approved run for {{ alert.labels.namespace }}"}
failover:
  - service: agents
    endpoints:
      - {name: primary, url: "http://127.0.0.1:9", region: eu-west}
      - {name: backup, url: "http://127.0.0.1:9", region: us-east, priority: 1}
"""


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with console_app(
        database_url, RULES, tmp_path, users=USERS, console_login_max_failures=3, worker_poll_seconds=0.05
    ) as client:
        yield client


Login = Callable[[str], TestClient]


@pytest.fixture
def login(app: TestClient) -> Login:
    """Log the shared client in as `role` (the user of that name); returns it."""

    def as_role(role: str) -> TestClient:
        log_in(app, role)
        return app

    return as_role


def load_rules_text(source: str) -> RuleSet:
    directory = Path(tempfile.mkdtemp(prefix="cp-rules-"))
    (directory / "rules.yaml").write_text(source)
    return load_rules(directory, build_registry())


def needs_approval(client: TestClient, namespace: str = "ns-approve") -> tuple[int, int]:
    """An incident with an execution awaiting approval: (incident id, execution id)."""
    (incident_id,) = post_alerts(
        client, {"fingerprint": f"fp-{namespace}", "labels": {"alertname": "NeedsApproval", "namespace": namespace}}
    )
    items = client.get("/api/v1/executions", params={"status": "awaiting_approval"}).json()["items"]
    return incident_id, next(e["id"] for e in items if e["incident_id"] == incident_id)


def execution_status(client: TestClient, execution_id: int) -> str:
    return str(client.get(f"/api/v1/executions/{execution_id}").json()["status"])


def incident(client: TestClient, incident_id: int) -> dict[str, Any]:
    return client.get(f"/api/v1/incidents/{incident_id}").json()  # type: ignore[no-any-return]


def audits(database_url: str, action: str) -> list[Any]:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(audit_t).where(audit_t.c.action == action).order_by(audit_t.c.id)))
    finally:
        engine.dispose()


# -- login ------------------------------------------------------------------------------------------


def test_pages_need_a_login_and_htmx_is_sent_to_it(app: TestClient) -> None:
    response = app.get("/incidents?severity=critical", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fincidents%3Fseverity%3Dcritical"
    response = app.get("/incidents", headers={**HX, "HX-Current-URL": "http://testserver/rules"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"] == "/login?next=%2Frules"
    assert app.post("/incidents/1/acknowledge", follow_redirects=False).headers["location"] == "/login"


def test_login_and_logout_are_audited_and_the_cookie_is_locked_down(app: TestClient, database_url: str) -> None:
    token = csrf(app, "/login")
    cookie = app.cookies.get("cp_session")
    wrong = app.post("/login", data={"csrf_token": token, "username": "operator", "password": "nope"})
    assert wrong.status_code == 401
    assert "Wrong user name or password" in wrong.text
    right = app.post(
        "/login",
        data={"csrf_token": token, "username": "operator", "password": "correct horse", "next": "/rules"},
        follow_redirects=False,
    )
    assert right.status_code == 303 and right.headers["location"] == "/rules"
    set_cookie = right.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie and "secure" not in set_cookie
    assert app.cookies.get("cp_session") != cookie  # a new session (and CSRF token) at login
    page = app.get("/incidents")
    assert page.status_code == 200 and "operator" in page.text
    assert [r.detail["user"] for r in audits(database_url, "console.login_failed")] == ["operator"]
    assert [r.actor for r in audits(database_url, "console.login")] == ["user:operator"]

    assert app.post("/logout", data={"csrf_token": csrf(app, "/incidents")}, follow_redirects=False).status_code == 303
    assert app.get("/incidents", follow_redirects=False).status_code == 303
    assert [r.actor for r in audits(database_url, "console.logout")] == ["user:operator"]


def test_a_cookie_copied_before_logout_is_refused_after_it(app: TestClient, login: Login) -> None:
    """Logout ends the session on the server: a stolen copy of the cookie dies with it."""
    copied = login("operator").cookies["cp_session"]
    assert app.get("/incidents").status_code == 200
    assert app.post("/logout", data={"csrf_token": csrf(app, "/incidents")}, follow_redirects=False).status_code == 303
    app.cookies.clear()
    app.cookies.set("cp_session", copied)
    replay = app.get("/incidents", follow_redirects=False)
    assert replay.status_code == 303 and replay.headers["location"].startswith("/login")
    assert app.get("/incidents", headers=HX).status_code == 401
    token = csrf(app, "/login")  # the login page of a stranger, whose token does not act as the operator
    refused = app.post("/incidents/1/acknowledge", data={"csrf_token": token}, follow_redirects=False)
    assert refused.status_code == 303 and refused.headers["location"] == "/login"


def test_console_user_gives_the_api_the_user_of_a_live_session(database_url: str) -> None:
    app = create_app(make_settings(database_url, console_users=USERS, session_secret=SESSION_SECRET))

    @app.get("/test/whoami")
    def whoami(request: Request) -> dict[str, str | None]:  # how the JSON API asks
        user = console_user(request)
        return {"user": user.name if user else None}

    with TestClient(app) as client:
        assert client.get("/test/whoami").json() == {"user": None}
        token = csrf(client, "/login")
        client.post("/login", data={"csrf_token": token, "username": "admin", "password": "correct horse"})
        copied = client.cookies["cp_session"]
        assert client.get("/test/whoami").json() == {"user": "admin"}
        client.post("/logout", data={"csrf_token": csrf(client, "/incidents")})
        client.cookies.clear()
        client.cookies.set("cp_session", copied)
        assert client.get("/test/whoami").json() == {"user": None}


def test_an_expired_session_is_refused(app: TestClient, login: Login, database_url: str) -> None:
    """Expiry is the server's: a session past `session_max_age_seconds` is refused whatever the cookie says."""
    login("viewer")
    assert app.get("/incidents").status_code == 200
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE console_sessions SET expires_at = :past"), {"past": datetime(2000, 1, 1)})
    finally:
        engine.dispose()
    assert app.get("/incidents", follow_redirects=False).status_code == 303
    assert app.get("/incidents", headers=HX).status_code == 401


def test_login_needs_the_csrf_token_of_its_session(app: TestClient) -> None:
    csrf(app, "/login")
    response = app.post("/login", data={"username": "admin", "password": "correct horse"}, follow_redirects=False)
    assert response.status_code == 403
    assert app.get("/incidents", follow_redirects=False).status_code == 303


def test_failed_logins_are_throttled_per_user_and_address(app: TestClient) -> None:
    token = csrf(app, "/login")
    for _ in range(3):
        assert app.post("/login", data={"csrf_token": token, "username": "admin", "password": "x"}).status_code == 401
    locked = app.post("/login", data={"csrf_token": token, "username": "admin", "password": "correct horse"})
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) > 0
    other = app.post(
        "/login", data={"csrf_token": token, "username": "viewer", "password": "correct horse"}, follow_redirects=False
    )
    assert other.status_code == 303


def test_the_throttle_counts_in_the_database_and_stays_bounded(engine: Engine) -> None:
    throttle = LoginThrottle(max_failures=2, window_seconds=60)
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def attempt(name: str, address: str, at: float) -> int | None:
        with write_transaction(engine) as conn:
            return throttle.attempt(conn, name=name, address=address, now=start + timedelta(seconds=at))

    assert attempt("alice", "10.0.0.1", 0) is None
    assert attempt("Alice", "10.0.0.1", 10) is None  # one name, however it is spelled
    assert attempt("alice", "10.0.0.1", 20) == 40  # over the limit until the window that began at 0 ends
    assert attempt("alice", "10.0.0.2", 20) is None  # another address counts on its own
    assert attempt("alice", "10.0.0.1", 61) is None  # the window ended
    with write_transaction(engine) as conn:
        throttle.succeeded(conn, name="alice", address="10.0.0.1")
    # Rotating addresses: the name's own count stops them at 4x the limit.
    rotating = [attempt("bob", f"10.1.0.{i}", 100) for i in range(12)]
    assert rotating == [None] * 8 + [60] * 4
    # Rows of ended windows are pruned: the table holds only what can still refuse someone.
    assert count_rows(engine, "login_attempts") > 2
    attempt("carol", "10.2.0.1", 300)
    assert count_rows(engine, "login_attempts") == 2


def test_a_changed_password_ends_old_sessions(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, console_users=USERS, session_secret=SESSION_SECRET)
    with TestClient(create_app(settings), headers=AUTH) as client:
        token = csrf(client, "/login")
        client.post("/login", data={"csrf_token": token, "username": "admin", "password": "correct horse"})
        cookie = client.cookies.get("cp_session")
    new_hash = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("new")
    users = [*USERS[:2], {"name": "admin", "role": "admin", "password_hash": new_hash}]
    settings = make_settings(database_url, console_users=users, session_secret=SESSION_SECRET)
    with TestClient(create_app(settings), headers=AUTH, cookies={"cp_session": cookie or ""}) as client:
        assert client.get("/incidents", follow_redirects=False).status_code == 303


def test_an_auth_proxy_header_names_the_user_and_role(database_url: str) -> None:
    settings = make_settings(
        database_url,
        session_secret=SESSION_SECRET,
        console_auth_header="X-Forwarded-User",
        console_role_header="X-Forwarded-Role",
    )
    with TestClient(create_app(settings), headers=AUTH) as client:
        assert client.get("/incidents", follow_redirects=False).status_code == 303
        headers = {"X-Forwarded-User": "carol", "X-Forwarded-Role": "admin"}
        page = client.get("/rules", headers=headers)
        assert page.status_code == 200 and "carol" in page.text and "Pause automation" in page.text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        as_viewer = {"X-Forwarded-User": "dave"}  # no role header: the default role, viewer
        forbidden = client.post("/automation/pause", data={"csrf_token": token}, headers=as_viewer)
        assert forbidden.status_code == 403
        done = client.post("/automation/pause", data={"csrf_token": token}, headers=headers, follow_redirects=False)
        assert done.status_code == 303
        assert client.get("/api/v1/automation").json()["updated_by"] == "user:carol"


# -- roles and CSRF -----------------------------------------------------------------------------------


def test_a_viewer_reads_but_cannot_approve(app: TestClient, login: Login) -> None:
    incident_id, execution_id = needs_approval(app)
    client = login("viewer")
    page = client.get(f"/incidents/{incident_id}")
    assert page.status_code == 200
    assert "Approve" not in page.text and "needs the operator role" in page.text
    token = csrf(client, "/incidents")
    refused = client.post(f"/executions/{execution_id}/approve", data={"csrf_token": token})
    assert refused.status_code == 403
    assert "operator role" in refused.text
    assert refused.headers["content-type"].startswith("text/html")
    assert execution_status(client, execution_id) == "awaiting_approval"
    refused = client.post(f"/incidents/{incident_id}/acknowledge", data={"csrf_token": token}, headers=HX)
    assert refused.status_code == 403 and refused.headers["HX-Retarget"] == "#flash"
    assert incident(client, incident_id)["status"] == "open"


def test_an_operator_approves_and_the_playbook_runs(app: TestClient, login: Login, database_url: str) -> None:
    incident_id, execution_id = needs_approval(app)
    client = login("operator")
    token = csrf(client, "/approvals")
    response = client.post(
        f"/executions/{execution_id}/approve", data={"csrf_token": token, "next": "/approvals"}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/approvals"
    deadline = time.monotonic() + 10
    while execution_status(client, execution_id) != "succeeded":
        assert time.monotonic() < deadline, execution_status(client, execution_id)
        time.sleep(0.05)
    page = client.get(f"/incidents/{incident_id}").text
    assert "notify.log" in page and "approved run for ns-approve" in page  # the step's inputs
    assert "execution.pending" in page and "user:operator" in page
    assert "Nothing is waiting for approval" in client.get("/approvals").text
    # Twice is a conflict, said in the flash, not a second run.
    again = client.post(f"/executions/{execution_id}/approve", data={"csrf_token": token}, headers=HX)
    assert again.status_code == 409 and "cannot be approved" in again.text


def test_an_operator_rejects_and_cancels(app: TestClient, login: Login) -> None:
    _, first = needs_approval(app, "ns-one")
    _, second = needs_approval(app, "ns-two")
    client = login("operator")
    token = csrf(client, "/approvals")
    assert client.post(f"/executions/{first}/reject", data={"csrf_token": token}, headers=HX).status_code == 200
    assert client.post(f"/executions/{second}/cancel", data={"csrf_token": token}, headers=HX).status_code == 200
    assert execution_status(client, first) == execution_status(client, second) == "cancelled"
    assert client.post(f"/executions/{first}/explode", data={"csrf_token": token}).status_code == 422


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_a_missing_or_wrong_csrf_token_is_refused_and_changes_nothing(
    app: TestClient, login: Login, token: str | None
) -> None:
    incident_id, execution_id = needs_approval(app)
    client = login("admin")
    form = {} if token is None else {"csrf_token": token}
    for path in (
        f"/incidents/{incident_id}/acknowledge",
        f"/incidents/{incident_id}/resolve",
        f"/executions/{execution_id}/approve",
        "/automation/pause",
    ):
        response = client.post(path, data=form, follow_redirects=False)
        assert response.status_code == 403, path
        assert "security token" in response.text
    assert incident(client, incident_id)["status"] == "open"
    assert execution_status(client, execution_id) == "awaiting_approval"
    assert client.get("/api/v1/automation").json()["paused"] is False


def test_the_htmx_header_carries_the_token(app: TestClient, login: Login) -> None:
    (incident_id,) = post_alerts(app, {"fingerprint": "fp-h"})
    client = login("operator")
    token = csrf(client, "/incidents")
    response = client.post(f"/incidents/{incident_id}/acknowledge", headers={**HX, "X-CSRF-Token": token})
    assert response.status_code == 200
    assert response.headers["HX-Trigger"] == "cp-changed" and response.headers["HX-Retarget"] == "#flash"
    assert "acknowledged" in response.text and "<html" not in response.text


def test_only_an_admin_pauses_and_the_banner_shows_it(app: TestClient, login: Login) -> None:
    client = login("operator")
    assert client.post("/automation/pause", data={"csrf_token": csrf(client, "/rules")}).status_code == 403
    client = login("admin")
    token = csrf(client, "/rules")
    response = client.post("/automation/pause", data={"csrf_token": token, "reason": "maintenance"}, headers=HX)
    assert response.status_code == 200 and response.headers["HX-Refresh"] == "true"
    page = client.get("/incidents").text
    assert "Automation is paused" in page and "maintenance" in page and "Resume" in page
    client.post("/automation/dry-run-on", data={"csrf_token": token})
    client.post("/automation/resume", data={"csrf_token": token})
    page = client.get("/incidents").text
    assert "Automation is paused" not in page and "Dry run" in page


# -- incident actions --------------------------------------------------------------------------------


def test_acknowledge_resolve_and_note(app: TestClient, login: Login, database_url: str) -> None:
    (incident_id,) = post_alerts(app, {"fingerprint": "fp-a"})
    client = login("operator")
    token = csrf(client, f"/incidents/{incident_id}")
    base = f"/incidents/{incident_id}"
    assert client.post(f"{base}/acknowledge", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    found = incident(client, incident_id)
    assert found["status"] == "acknowledged" and found["acknowledged_at"] is not None
    assert client.post(f"{base}/acknowledge", data={"csrf_token": token}).status_code == 409
    note = "rolled back <b>v2</b>"
    assert client.post(f"{base}/notes", data={"csrf_token": token, "text": note}, headers=HX).status_code == 200
    assert client.post(f"{base}/notes", data={"csrf_token": token, "text": "  "}).status_code == 422
    assert client.post(f"{base}/resolve", data={"csrf_token": token, "reason": "fixed"}).status_code == 200
    found = incident(client, incident_id)
    assert found["status"] == "resolved" and found["resolved_at"] is not None
    assert client.post(f"{base}/resolve", data={"csrf_token": token}).status_code == 409
    assert client.post("/incidents/999999/acknowledge", data={"csrf_token": token}).status_code == 404

    engine = make_engine(database_url)
    with engine.connect() as conn:
        assert conn.execute(select(incidents_t.c.open_key).where(incidents_t.c.id == incident_id)).scalar() is None
    engine.dispose()
    actions = [(e["action"], e["actor"]) for e in found["timeline"]]
    assert ("incident.acknowledged", "user:operator") in actions
    assert ("incident.note", "user:operator") in actions
    assert ("incident.resolved", "user:operator") in actions
    assert "rolled back &lt;b&gt;v2&lt;/b&gt;" in client.get(base).text
    # A new episode of the same alert opens a new incident: the resolved one's key is free.
    (reopened,) = post_alerts(app, {"fingerprint": "fp-a2"})
    assert reopened != incident_id


def test_silence_in_the_real_alertmanager(
    database_url: str,
    tmp_path: Path,
    alertmanager: AlertmanagerServer,
) -> None:
    settings = make_settings(
        database_url, console_users=USERS, session_secret=SESSION_SECRET, alertmanager_url=alertmanager.url
    )
    with TestClient(create_app(settings), headers=AUTH) as client:
        (incident_id,) = post_alerts(client, {"fingerprint": "fp-s", "labels": {"namespace": "silenced"}})
        token = csrf(client, "/login")
        client.post("/login", data={"csrf_token": token, "username": "operator", "password": "correct horse"})
        token = csrf(client, f"/incidents/{incident_id}")
        base = f"/incidents/{incident_id}"
        assert client.post(f"{base}/silence", data={"csrf_token": token, "duration": "forever"}).status_code == 422
        response = client.post(
            f"{base}/silence", data={"csrf_token": token, "duration": "4h", "comment": "deploy"}, headers=HX
        )
        assert response.status_code == 200, response.text
        silence_id = re.search(r"\(([0-9a-f-]{36})\)", response.text).group(1)  # type: ignore[union-attr]
        silence = alertmanager.silence(silence_id)
        assert silence["createdBy"] == "user:operator" and silence["comment"] == "deploy"
        assert {(m["name"], m["value"]) for m in silence["matchers"]} == {  # type: ignore[attr-defined]
            ("alertname", "LangGraphHighErrorRate"),
            ("namespace", "silenced"),
        }
        page = client.get(base).text
        assert silence_id in page and "incident.silenced" in page


def test_silence_when_alertmanager_is_down_says_so(database_url: str) -> None:
    settings = make_settings(
        database_url, console_users=USERS, session_secret=SESSION_SECRET, alertmanager_url="http://127.0.0.1:9"
    )
    with TestClient(create_app(settings), headers=AUTH) as client:
        (incident_id,) = post_alerts(client, {"fingerprint": "fp-d"})
        token = csrf(client, "/login")
        client.post("/login", data={"csrf_token": token, "username": "operator", "password": "correct horse"})
        token = csrf(client, f"/incidents/{incident_id}")
        response = client.post(f"/incidents/{incident_id}/silence", data={"csrf_token": token, "duration": "1h"})
        assert response.status_code == 503 and "Alertmanager" in response.text


# -- rendering ---------------------------------------------------------------------------------------


def test_untrusted_labels_and_urls_render_as_text(app: TestClient, login: Login) -> None:
    (incident_id,) = post_alerts(
        app,
        {
            "fingerprint": "fp-x",
            "labels": {"namespace": "<script>alert(1)</script>", "team": '"><img src=x onerror=alert(2)>'},
            "annotations": {"summary": "<script>alert(3)</script>", "runbook_url": "javascript:alert(4)"},
        },
    )
    client = login("viewer")
    for page in (client.get("/incidents").text, client.get(f"/incidents/{incident_id}").text):
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    detail = client.get(f"/incidents/{incident_id}").text
    assert 'href="javascript:' not in detail and "javascript:alert(4)" in detail  # shown, never a link
    assert 'href="http://prometheus:9090/graph' in detail  # the real generatorURL is a link


def test_security_headers_on_pages_and_assets(app: TestClient, login: Login) -> None:
    client = login("viewer")
    for path in ("/incidents", "/login", "/static/console/htmx.min.js", "/static/console/console.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        assert "'unsafe-inline'" not in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
    assert "<script>" not in client.get("/incidents").text  # no inline script anywhere
    assert client.get("/api/v1/incidents").headers.get("x-frame-options") is None  # the API is left alone


def test_htmx_gets_the_block_and_a_browser_the_page(app: TestClient, login: Login) -> None:
    (incident_id,) = post_alerts(app, {"fingerprint": "fp-b"})
    client = login("viewer")
    full = client.get("/incidents")
    assert full.text.startswith("<!doctype html>") and 'id="incident-list"' in full.text
    block = client.get("/incidents", headers=HX)
    assert block.text.startswith('<section id="incident-list"') and "<html" not in block.text
    restore = client.get("/incidents", headers={**HX, "HX-History-Restore-Request": "true"})
    assert restore.text.startswith("<!doctype html>")
    detail = client.get(f"/incidents/{incident_id}", headers=HX)
    assert detail.text.startswith('<section id="incident-live"') and "Add a note" not in detail.text
    version = re.search(r"\?v=([0-9a-f]+)", detail.text).group(1)  # type: ignore[union-attr]
    assert client.get(f"/incidents/{incident_id}?v={version}", headers=HX).status_code == 204  # nothing changed
    assert client.get(f"/incidents/{incident_id}?v={version}").status_code == 200  # a browser always gets the page
    for path, block_id in (("/approvals", "approval-list"), ("/endpoints", "endpoints-live")):
        assert client.get(path, headers=HX).text.startswith(f'<section id="{block_id}"')


def test_filters_and_keyset_pagination(app: TestClient, login: Login) -> None:
    alerts = [
        {
            "fingerprint": f"fp-{n}",
            "labels": {"namespace": f"ns-{n:02d}", "severity": "warning" if n % 2 else "critical"},
        }
        for n in range(60)
    ]
    post_alerts(app, *alerts)
    client = login("viewer")
    first = client.get("/incidents").text
    assert first.count('<tr class="sev-') == 50
    older = re.search(r'rel="next" href="([^"]+)"', first).group(1).replace("&amp;", "&")  # type: ignore[union-attr]
    second = client.get(older).text
    assert second.count('<tr class="sev-') == 10 and 'rel="next"' not in second and "« Newest" in second
    assert "ns-00" in second and "ns-59" in first

    warning = client.get("/incidents", params={"severity": "warning"}).text
    assert warning.count('<tr class="sev-warning"') == 30 and "sev-critical" not in warning.split("<tbody>")[1]
    assert client.get("/incidents", params={"q": "ns-07"}).text.count('<tr class="sev-') == 1
    assert client.get("/incidents", params={"q": "50%_"}).text.count('<tr class="sev-') == 0  # LIKE wildcards escaped
    acknowledged = client.get("/incidents", params={"status": "acknowledged"}).text
    assert "No incidents match these filters" in acknowledged
    assert client.get("/incidents", params={"status": "bogus"}).status_code == 422
    assert client.get("/incidents", params={"before": "0"}).status_code == 422
    # The live refresh asks for the same filters and page.
    live = client.get("/incidents", params={"severity": "warning", "before": 40}, headers=HX).text
    assert 'hx-get="/incidents?severity=warning&amp;before=40"' in live


def test_rules_endpoints_and_dashboards_pages(app: TestClient, login: Login) -> None:
    needs_approval(app)
    breaker = app.app.state.services.breakers.get("http:graph-admin")  # type: ignore[attr-defined]
    breaker.record_failure()
    client = login("viewer")
    rules = client.get("/rules").text
    assert "careful" in rules and "approval" in rules and "notify.log" in rules
    assert "1 of" not in rules  # no max_runs guard on these rules
    assert "vector(42)" in rules and "&gt; 30.0" in rules
    deadline = time.monotonic() + 10  # the leader evaluates metric rules at start; Prometheus is not there
    while "cannot reach Prometheus" not in rules:
        assert time.monotonic() < deadline, rules
        time.sleep(0.1)
        rules = client.get("/rules").text
    assert "Pausing and dry run need the admin role" in rules
    endpoints = client.get("/endpoints").text
    assert "agents" in endpoints and "primary" in endpoints and "us-east" in endpoints
    assert "http:graph-admin" in endpoints and "1 failed" in endpoints
    dashboards = client.get("/dashboards")
    assert dashboards.status_code == 200 and "Grafana dashboards" in dashboards.text


def test_guard_state_counts_runs_and_cooldown(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    ruleset = load_rules_text(
        """
rules:
  - name: guarded
    match: {alertname: X}
    playbook: p
    guards: {cooldown: 10m, max_runs: {count: 3, per: 1h}}
playbooks:
  - name: p
    steps: [{action: notify.log, with: {text: hi}}]
"""
    )
    now = datetime.now(UTC)
    with engine.begin() as conn:
        for n, (minutes_ago, status) in enumerate(
            [(90, "succeeded"), (30, "succeeded"), (4, "failed"), (1, "suppressed")]
        ):
            at = now - timedelta(minutes=minutes_ago)
            conn.execute(
                executions_t.insert().values(
                    rule_name="guarded",
                    playbook_name="p",
                    trigger_key=f"t{n}",
                    guard_key='{alertname="X"}',
                    status=status,
                    playbook={},
                    params={},
                    context={},
                    created_at=at,
                    updated_at=at,
                )
            )
        view = rules_view.rules_view(conn=conn, ruleset=ruleset, now=now, loaded_at=now, errors=[], directory="rules")
    engine.dispose()
    (rule,) = view.rules
    assert rule.runs_in_window == 2  # the one 90 min ago left the window; suppressed ones never count
    assert rule.last_run_at is not None and abs((now - rule.last_run_at).total_seconds() - 240) < 1
    assert rule.cooldown_left is not None and abs(rule.cooldown_left.total_seconds() - 360) < 1


def test_unknown_incident_is_a_404_page(app: TestClient, login: Login) -> None:
    client = login("viewer")
    response = client.get("/incidents/424242")
    assert response.status_code == 404 and "not found" in response.text
    assert response.headers["content-type"].startswith("text/html")


# -- settings and helpers ------------------------------------------------------------------------------


def test_users_from_a_file_and_production_secrets(tmp_path: Path) -> None:
    users = tmp_path / "users.yaml"
    users.write_text(f"users:\n  - name: alice\n    role: admin\n    password_hash: '{PASSWORD_HASH}'\n")
    assert [u.name for u in load_settings(console_users_file=users).console_users] == ["alice"]
    users.write_text(json.dumps([{"name": "bob", "password_hash": "plaintext"}]))
    with pytest.raises(SettingsError, match="argon2"):
        load_settings(console_users_file=users)
    with pytest.raises(SettingsError, match="missing"):
        load_settings(console_users_file=tmp_path / "missing.yaml")
    production = {
        "environment": "production",
        "webhook_token": "3c9e0b7a1f5d2e8c4a6b0d9f7e1c3a5b",
        "console_users_file": users,
    }
    users.write_text(json.dumps([{"name": "bob", "password_hash": PASSWORD_HASH}]))
    with pytest.raises(SettingsError, match="session_secret"):
        load_settings(**production)
    with pytest.raises(SettingsError, match="placeholder"):
        load_settings(**production, session_secret="changeme")
    secret = tmp_path / "secret"
    secret.write_text("e4b1c7d09a3f5e2b8c6d1a0f9e7b3c5d2a4f6e8b")
    assert load_settings(**production, session_secret_file=secret).session_secret is not None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/incidents/3", "/incidents/3"),
        ("/incidents?status=open", "/incidents?status=open"),
        ("//evil.example/x", "/incidents"),
        ("https://evil.example", "/incidents"),
        ("/\\evil.example", "/incidents"),
        ("/\nSet-Cookie: x", "/incidents"),
        ("", "/incidents"),
    ],
)
def test_redirects_stay_on_this_site(value: str, expected: str) -> None:
    assert safe_next(value) == expected


def test_hash_password_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["hash-password"]) == 0
    hashed = capsys.readouterr().out.strip()
    assert hashed.startswith("$argon2id$") and PasswordHasher().verify(hashed, "s3cret")
    assert load_settings(console_users=[{"name": "a", "password_hash": hashed}]).console_users[0].name == "a"


def test_a_storm_incident_page_stays_bounded(app: TestClient, login: Login) -> None:
    (incident_id,) = set(post_alerts(app, *({"fingerprint": f"fp-storm-{n}"} for n in range(210))))
    client = login("viewer")
    page = client.get(f"/incidents/{incident_id}").text
    assert page.count('<article class="alert alert-firing">') == 200
    assert "10 more alerts are not shown" in page and "210 of 210" in page


def test_alert_counts_stop_at_the_cap(app: TestClient, login: Login, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting a storm's alerts would cost more than the rest of the page: beyond the cap it says "N+"."""
    monkeypatch.setattr(views, "ALERTS_COUNTED", 150)
    (incident_id,) = set(post_alerts(app, *({"fingerprint": f"fp-storm-{n}"} for n in range(210))))
    client = login("viewer")
    page = client.get(f"/incidents/{incident_id}").text
    assert page.count('<article class="alert alert-firing">') == 200
    assert "150+ of 150+" in page and "more alerts are not shown" in page
    assert "150+ / 150+" in client.get("/incidents").text
    assert app.get(f"/api/v1/incidents/{incident_id}").json()["alerts_total"] == 210  # the API counts them all


def test_a_search_reads_a_window_of_incidents_per_page(
    app: TestClient, login: Login, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text search reads a bounded number of incidents per page; "Older" searches on until the oldest."""
    monkeypatch.setattr(views, "SEARCH_WINDOW", 5)
    post_alerts(app, *({"fingerprint": f"fp-{n}", "labels": {"namespace": f"ns-{n:02d}"}} for n in range(12)))
    client = login("viewer")
    pages, found, path = 0, 0, "/incidents?q=ns-00"
    while path:
        text = client.get(path).text
        found += text.count('<tr class="sev-')
        pages += 1
        if found == 0:
            assert "No incidents match these filters among those after #" in text
        older = re.search(r'rel="next" href="([^"]+)"', text)
        path = older.group(1).replace("&amp;", "&") if older else ""
    assert (found, pages) == (1, 3)  # ns-00 is the oldest of 12: in the third window of 5
    assert client.get("/incidents?q=ns-11").text.count('<tr class="sev-') == 1


def test_cookies_are_secure_over_https_without_a_public_url(database_url: str) -> None:
    settings = make_settings(database_url, console_users=USERS, session_secret=SESSION_SECRET)
    with TestClient(create_app(settings), base_url="https://testserver") as client:
        assert "; secure" in client.get("/login").headers["set-cookie"].lower()
    with TestClient(create_app(settings), base_url="http://testserver") as client:
        assert "; secure" not in client.get("/login").headers["set-cookie"].lower()


def test_cookies_are_secure_behind_https(database_url: str) -> None:
    settings = make_settings(
        database_url, console_users=USERS, session_secret=SESSION_SECRET, public_url="https://controlplane.example"
    )
    with TestClient(create_app(settings), headers=AUTH, base_url="https://testserver") as client:
        response = client.get("/login")
        assert "secure" in response.headers["set-cookie"].lower()
