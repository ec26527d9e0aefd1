"""The console in a real browser (Debian's chromium through Playwright) against the app on a loopback port.

What only a browser proves: htmx runs under the CSP (no inline code), an incident appears
without a reload, actions update the timeline in place, and the pages look right (the
screenshots land in tests/artifacts/, which git ignores).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.alertmanager_server import AlertmanagerServer
from tests.conftest import make_settings
from tests.e2e.conftest import serve
from tests.helpers import PASSWORD, console_users, post_alerts

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WAIT_MS = 10_000

RULES = """
rules:
  - name: careful-restart
    description: Needs a person to say yes before it acts.
    match: {alertname: NeedsApproval}
    playbook: tell-oncall
    guards: {approval: true, cooldown: 10m, max_runs: {count: 3, per: 1h}}
playbooks:
  - name: tell-oncall
    steps:
      - id: told
        action: notify.log
        with: {text: "approved restart of {{ alert.labels.graph_name }} in {{ alert.labels.namespace }}"}
"""


@dataclass
class Served:
    url: str

    def post_alert(self, namespace: str, **labels: str) -> int:
        alert = {
            "labels": {"alertname": "NeedsApproval", "namespace": namespace, **labels},
            "annotations": {"summary": f"Graph support_bot keeps failing in {namespace}"},
            "fingerprint": f"fp-{namespace}",
        }
        with httpx.Client(base_url=self.url) as client:
            [incident_id] = post_alerts(client, alert)
        return incident_id


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    alertmanager: AlertmanagerServer,
) -> Iterator[Served]:
    """The whole app (workers, scheduler) served by uvicorn in a thread, as `controlplane serve` would."""
    root = tmp_path_factory.mktemp("console")
    (root / "rules").mkdir()
    (root / "rules" / "rules.yaml").write_text(RULES)
    settings = make_settings(
        f"sqlite:///{root}/controlplane.db",
        rules_dir=root / "rules",
        console_users=console_users(viewer="viewer", operator="operator"),
        session_secret="browser-test-session-secret-0123456789",
        console_refresh_seconds=1.0,
        worker_poll_seconds=0.05,
        alertmanager_url=alertmanager.url,
    )
    with serve(settings) as url:
        yield Served(url)


def log_in(browser: Any, served: Served, user: str, **context: Any) -> tuple[Any, list[str]]:
    """A fresh browser context logged in as `user`; also returns the console errors it collects."""
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(served.url + "/incidents")
    assert "/login" in page.url
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/incidents")
    return page, errors


def test_operator_sees_an_incident_arrive_approves_and_silences_it(browser: Any, served: Served) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page, errors = log_in(browser, served, "operator", viewport={"width": 1280, "height": 900})
    page.wait_for_function("() => window.htmx !== undefined")
    page.evaluate("() => { window.notReloaded = true }")

    incident_id = served.post_alert("checkout", team="<script>alert(1)</script>")
    row = page.locator("#incident-list tr", has_text="Graph support_bot keeps failing in checkout")
    row.wait_for()  # arrived by the live refresh...
    assert page.evaluate("() => window.notReloaded") is True  # ...without reloading the page
    page.screenshot(path=str(ARTIFACTS / "console-list.png"), full_page=True)

    row.get_by_role("link").click()
    page.wait_for_url(f"**/incidents/{incident_id}")
    assert page.locator(".chips", has_text="<script>alert(1)</script>").count() > 0  # shown as text
    execution = page.locator("li.execution")
    execution.get_by_text("awaiting approval").wait_for()
    page.evaluate("() => { window.notReloaded = true }")

    execution.get_by_role("button", name="Approve").click()
    page.locator("#flash").get_by_text("approved").wait_for()
    page.locator("li.execution .status-succeeded").first.wait_for()  # the worker ran it; the timeline redrew
    page.locator("li.execution").get_by_text("notify.log", exact=True).wait_for()  # the step's action cell
    assert page.locator("li.execution .run-events").get_by_text("by user:operator").count() >= 1

    page.get_by_role("button", name="Acknowledge").click()
    page.locator(".incident-head .status-acknowledged").wait_for()

    page.select_option("select[name=duration]", "4h")
    page.fill("input[name=comment]", "deploying the fix")
    page.get_by_role("button", name="Silence").click()
    page.locator("#flash").get_by_text("Silenced in Alertmanager").wait_for()
    page.locator(".timeline").get_by_text("incident.silenced").wait_for()
    assert page.input_value("input[name=comment]") == ""  # the form emptied once the server took it

    page.fill("textarea[name=text]", "restarted the pods by hand")
    page.get_by_role("button", name="Add note").click()
    page.locator(".timeline .note", has_text="restarted the pods by hand").wait_for()
    assert page.evaluate("() => window.notReloaded") is True
    page.locator("li.execution details summary").first.click()  # step inputs, for the screenshot
    page.screenshot(path=str(ARTIFACTS / "console-detail.png"), full_page=True)
    assert errors == []  # no CSP violation, no script error


def test_viewer_cannot_approve(browser: Any, served: Served) -> None:
    incident_id = served.post_alert("billing")
    page, errors = log_in(browser, served, "viewer", viewport={"width": 390, "height": 844}, is_mobile=True)
    page.screenshot(path=str(ARTIFACTS / "console-list-phone.png"), full_page=True)
    page.goto(f"{served.url}/incidents/{incident_id}")
    page.locator("li.execution").get_by_text("awaiting approval").wait_for()
    assert page.get_by_role("button", name="Approve").count() == 0
    assert page.get_by_text("needs the operator role").count() == 1
    page.screenshot(path=str(ARTIFACTS / "console-detail-phone.png"), full_page=True)
    # Forcing it with the page's own CSRF token is refused too.
    execution_id = page.locator("li.execution b", has_text="Execution #").first.inner_text().split("#")[1]
    status = page.evaluate(
        """async (id) => {
            const token = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRF-Token"];
            const r = await fetch(`/executions/${id}/approve`, {method: "POST", headers: {"X-CSRF-Token": token}});
            return r.status;
        }""",
        execution_id,
    )
    assert status == 403
    assert page.locator("li.execution").get_by_text("awaiting approval").count() == 1
    assert errors == [] or all("403" in e for e in errors)
