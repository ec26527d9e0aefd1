"""The operator commands (controlplane/operator_cli.py) against a running service on a loopback port:
what they print, and the exit codes scripts rely on (0 ok, 1 refused or not found, 2 usage, 3 unreachable)."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

from controlplane.cli import main
from tests.conftest import ADMIN_TOKEN, AUTH, TOKEN
from tests.helpers import post_alert, serve_in_thread, wait_for
from tests.integration.serverproc import ServerProcess

LOOPBACK = "127.0.0.1"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

RULES = """
rules:
  - name: careful
    match: {alertname: =~NeedsApproval.*}
    playbook: note
    guards: {approval: true}
playbooks:
  - name: note
    steps:
      - action: notify.log
        with: {text: "approved"}
"""


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`controlplane serve` on SQLite, with a rule that waits for approval (the tests' alerts are their own).

    A process of its own: its log lines stay out of the output of the commands, which run in this one."""
    directory = tmp_path_factory.mktemp("operator-cli")
    (directory / "rules").mkdir()
    (directory / "rules" / "test.yaml").write_text(RULES)
    with ServerProcess(
        f"sqlite:///{directory}/controlplane.db",
        directory / "server.log",
        rules_dir=str(directory / "rules"),
        admin_token=ADMIN_TOKEN,
        worker_poll_seconds="0.05",
    ) as server:
        server.wait_ready()
        yield server.url


@pytest.fixture
def api(service: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service, headers=AUTH, timeout=10) as client:
        yield client


@pytest.fixture
def cli(service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run `controlplane ARGS` against the service with the read token from CONTROLPLANE_TOKEN (admin=True:
    the admin token from a --token-file); (exit code, stdout, stderr). Neither token may appear in the output."""
    for name in ("CONTROLPLANE_URL", "CONTROLPLANE_TOKEN", "CONTROLPLANE_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CONTROLPLANE_URL", service)
    monkeypatch.setenv("CONTROLPLANE_TOKEN", TOKEN)
    token_file = tmp_path / "admin-token"
    token_file.write_text(ADMIN_TOKEN + "\n")

    def run(*args: str, admin: bool = False) -> tuple[int, str, str]:
        code = main([*args, "--token-file", str(token_file)] if admin else list(args))
        out, err = capsys.readouterr()
        assert TOKEN not in out + err and ADMIN_TOKEN not in out + err
        return code, out, err

    return run


def _alertname(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def test_incidents_as_a_table_and_as_json(cli: Any, api: httpx.Client) -> None:
    [incident_id] = post_alert(api, alertname=_alertname("CliList"))
    incident = api.get(f"/api/v1/incidents/{incident_id}").json()
    code, out, err = cli("incidents", "--status", "open")
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "STATUS", "SEVERITY", "OPENED", "(UTC)", "FIRING", "AUTOMATION", "TITLE"]
    row = next(r for r in rows if r.split()[0] == str(incident_id))
    assert row.split()[1:3] == ["open", incident["severity"]] and row.endswith(incident["title"])
    assert header.index("STATUS") == row.index("open")  # aligned
    code, out, _ = cli("incidents", "--json")
    assert code == 0 and any(item["id"] == incident_id for item in json.loads(out)["items"])
    code, out, _ = cli("incidents", "--status", "resolved", "acknowledged")
    assert code == 0 and not any(line.split()[:1] == [str(incident_id)] for line in out.splitlines())


def test_one_incident_with_its_alerts_and_timeline(cli: Any, api: httpx.Client) -> None:
    name = _alertname("CliDetail")
    [incident_id] = post_alert(api, alertname=name)
    code, out, err = cli("incident", str(incident_id))
    assert code == 0, err
    assert out.startswith(f"incident      {incident_id}: ")
    assert "\nstatus        open\n" in out
    alerts = out.split("\nalerts (1):\n")[1].split("\n\ntimeline")[0].splitlines()
    assert alerts[0].split()[:3] == ["ID", "STATUS", "ALERTNAME"] and alerts[1].split()[1:3] == ["firing", name]
    timeline = out.split("\ntimeline:\n")[1].splitlines()
    actions = [e["action"] for e in api.get(f"/api/v1/incidents/{incident_id}").json()["timeline"]]
    assert [line.split()[3] for line in timeline[1:]] == actions  # AT is two words: date and time
    code, out, _ = cli("incident", str(incident_id), "--json")
    assert code == 0 and json.loads(out)["id"] == incident_id


def test_postmortem_from_the_running_service(cli: Any, api: httpx.Client) -> None:
    """`controlplane postmortem ID > file.md` against the real export (the stand-in below pins the contract)."""
    name = _alertname("CliPostmortem")
    [incident_id] = post_alert(api, alertname=name)
    code, out, err = cli("postmortem", str(incident_id))
    assert code == 0, err
    assert out.startswith(f"# Postmortem: incident #{incident_id}")
    assert name in out and "## Root cause" in out
    code, out, err = cli("postmortem", str(incident_id), "--format", "json")
    assert code == 0, err
    assert json.loads(out)["incident"]["id"] == incident_id


def test_an_unknown_incident_exits_1_with_the_services_message(cli: Any, api: httpx.Client) -> None:
    said = api.get("/api/v1/incidents/999999").json()["error"]
    code, out, err = cli("incident", "999999")
    assert (code, out) == (1, "") and err == f"controlplane: HTTP 404: {said}\n"


def test_approve_an_execution_awaiting_approval(cli: Any, api: httpx.Client) -> None:
    [incident_id] = post_alert(api, alertname=_alertname("NeedsApproval"))

    def waiting() -> dict[str, Any] | None:
        items = api.get("/api/v1/executions", params={"incident_id": incident_id}).json()["items"]
        return items[0] if items and items[0]["status"] == "awaiting_approval" else None

    execution = wait_for("an execution awaits approval", waiting, 10)
    code, _, err = cli("approve", str(execution["id"]))  # the read token may not approve
    assert code == 1 and "admin token required" in err
    code, out, err = cli("approve", str(execution["id"]), "--reason", "looked at it", admin=True)
    assert code == 0, err
    assert out.startswith(f"execution {execution['id']} (careful, incident {incident_id}): approved, now ")
    detail = api.get(f"/api/v1/executions/{execution['id']}").json()
    assert detail["decided_by"] == "admin" and detail["approved_by"] == ["admin"]
    wait_for("it runs", lambda: api.get(f"/api/v1/executions/{execution['id']}").json()["status"] == "succeeded", 10)
    code, out, err = cli("approve", str(execution["id"]), admin=True)
    assert code == 1 and out == "" and "cannot be approved" in err


def test_pause_then_resume(cli: Any, api: httpx.Client) -> None:
    try:
        code, out, err = cli("pause", "--reason", "incident review", admin=True)
        assert code == 0, err
        assert out.startswith("automation paused (new triggers are suppressed); set by admin at ")
        assert out.endswith(": incident review\n")
        state = api.get("/api/v1/automation").json()
        assert state["paused"] is True and state["reason"] == "incident review"
    finally:
        code, out, err = cli("resume", "--json", admin=True)
    assert code == 0, err
    assert json.loads(out)["paused"] is False
    assert api.get("/api/v1/automation").json()["paused"] is False


def test_a_wrong_token_exits_1_with_the_401_message(cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "wrong-token-" + uuid.uuid4().hex
    (tmp_path / "wrong").write_text(wrong)
    monkeypatch.setenv("CONTROLPLANE_TOKEN_FILE", str(tmp_path / "wrong"))  # the file wins over CONTROLPLANE_TOKEN
    code, out, err = cli("incidents")
    assert (code, out) == (1, "")
    assert err.startswith("controlplane: HTTP 401: a credential is required") and wrong not in err
    assert err.endswith(f"(this command sent the token from token file {tmp_path / 'wrong'})\n")


def test_a_token_a_header_cannot_carry_is_a_usage_error_and_not_printed(cli: Any, tmp_path: Path) -> None:
    (tmp_path / "pasted").write_text("first-half second-half\n")
    code, out, err = cli("incidents", "--token-file", str(tmp_path / "pasted"))
    assert (code, out) == (2, "") and "half" not in err
    assert err == f"controlplane: the token in token file {tmp_path / 'pasted'} has characters a header cannot carry\n"


def test_an_unreadable_token_file_is_a_usage_error(cli: Any, tmp_path: Path) -> None:
    code, out, err = cli("incidents", "--token-file", str(tmp_path / "missing"))
    assert (code, out) == (2, "") and "missing: No such file or directory" in err


def test_an_unreachable_service_exits_3(cli: Any) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind((LOOPBACK, 0))
        url = f"http://{LOOPBACK}:{sock.getsockname()[1]}"
    code, out, err = cli("incidents", "--url", url)
    assert (code, out) == (3, "") and err.startswith(f"controlplane: cannot reach the service at {url}: ")


def test_usage_errors_exit_2(cli: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("incident", "first")
    assert exited.value.code == 2


# The postmortem export's contract (GET /api/v1/incidents/{id}/postmortem?format=md|json), served by a stand-in:
# Markdown text, a JSON document, the service's 404 for an unknown incident, and no such route at all.
MARKDOWN = "# Incident 7: chat is failing\n\n## Timeline\n\n- 10:00 alert fired\n"


@pytest.fixture(scope="module")
def postmortems() -> Iterator[str]:
    app = FastAPI()

    @app.get("/api/v1/incidents/{incident_id}/postmortem")
    def postmortem(incident_id: int, format: str = "md") -> Any:
        if incident_id == 10:
            time.sleep(2)
        if incident_id == 9:
            return JSONResponse({"error": "database unavailable"}, status_code=503, headers={"Retry-After": "5"})
        if incident_id != 7:
            return JSONResponse({"error": f"incident {incident_id} not found"}, status_code=404)
        if format == "json":
            return {"incident": {"id": 7}, "root_cause": None}
        return PlainTextResponse(MARKDOWN, media_type="text/markdown")

    with serve_in_thread(app) as url:
        yield url


def test_postmortem_prints_the_services_document(cli: Any, postmortems: str) -> None:
    code, out, err = cli("postmortem", "7", "--url", postmortems)
    assert (code, out) == (0, MARKDOWN), err
    code, out, err = cli("postmortem", "7", "--format", "json", "--url", postmortems)
    assert code == 0 and json.loads(out) == {"incident": {"id": 7}, "root_cause": None}
    code, out, err = cli("postmortem", "8", "--url", postmortems)
    assert (code, out, err) == (1, "", "controlplane: HTTP 404: incident 8 not found\n")


def test_postmortem_from_a_service_without_the_export_says_so(cli: Any, postmortems: str) -> None:
    code, out, err = cli("postmortem", "7", "--url", f"{postmortems}/elsewhere")
    assert (code, out) == (1, "")
    assert err == (
        f"controlplane: the service at {postmortems}/elsewhere has no GET /api/v1/incidents/7/postmortem"
        " (HTTP 404 Not Found): is it a version without it, or is --url not the control plane?\n"
    )


def test_a_failing_service_exits_3_and_says_so(cli: Any, postmortems: str) -> None:
    code, out, err = cli("postmortem", "9", "--url", postmortems)
    assert (code, out) == (3, "")
    assert err == (
        f"controlplane: the service at {postmortems} failed: HTTP 503: database unavailable (retry after 5 s)\n"
    )


def test_a_service_that_does_not_answer_in_time_exits_3(cli: Any, postmortems: str) -> None:
    code, out, err = cli("postmortem", "10", "--url", postmortems, "--timeout", "0.3")
    assert (code, out, err) == (3, "", f"controlplane: the service at {postmortems} did not answer within 0.3 s\n")
