"""Two-person approval in a real browser: the approvals page and the incident page say how many have approved
and who, and the execution runs only after a second person. Screenshots land in tests/artifacts/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.e2e.conftest import serve
from tests.e2e.test_console_browser import ARTIFACTS, Served, log_in
from tests.helpers import console_users, post_alerts

pytestmark = pytest.mark.slow

RULES = """
rules:
  - name: restart-two-keys
    description: Restarts a deployment; two people must say yes.
    match: {alertname: NeedsTwo}
    playbook: tell-oncall
    guards: {approvals: 2}
playbooks:
  - name: tell-oncall
    steps:
      - action: notify.log
        with: {text: "restart approved for {{ alert.labels.namespace }}"}
"""


@pytest.fixture
def served(tmp_path: Any) -> Iterator[Served]:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.yaml").write_text(RULES)
    settings = make_settings(
        f"sqlite:///{tmp_path}/controlplane.db",
        rules_dir=tmp_path / "rules",
        console_users=console_users(alice="operator", bob="operator"),
        session_secret="browser-test-session-secret-0123456789",
        console_refresh_seconds=1.0,
        worker_poll_seconds=0.05,
    )
    with serve(settings) as url:
        yield Served(url)


def test_two_operators_approve_and_the_pages_show_the_count(browser: Any, served: Served) -> None:
    alert = {
        "labels": {"alertname": "NeedsTwo", "namespace": "agents"},
        "annotations": {"summary": "Graph support_bot keeps failing in agents"},
        "fingerprint": "fp-two",
    }
    with httpx.Client(base_url=served.url) as client:
        [incident_id] = post_alerts(client, alert)
    ARTIFACTS.mkdir(exist_ok=True)

    page, _ = log_in(browser, served, "alice")
    page.goto(served.url + "/approvals")
    page.get_by_role("button", name="Approve").click()
    page.get_by_text("Your approval of execution #1 is counted: 1 of 2 approvals (alice).").wait_for()
    page.locator(".card.approval").get_by_text("1 of 2 approvals (alice)").wait_for()
    page.screenshot(path=str(ARTIFACTS / "approvals-one-of-two.png"), full_page=True)
    page.get_by_role("button", name="Approve").click()  # alice again: refused, said in the flash
    page.get_by_text("alice already approved").wait_for()
    page.goto(f"{served.url}/incidents/{incident_id}")
    page.get_by_text("1 of 2 approvals (alice)").wait_for()
    page.screenshot(path=str(ARTIFACTS / "incident-one-of-two.png"), full_page=True)

    page, more_errors = log_in(browser, served, "bob")
    page.goto(served.url + "/approvals")
    page.get_by_role("button", name="Approve").click()
    page.get_by_text("Nothing is waiting for approval").wait_for()
    page.goto(f"{served.url}/incidents/{incident_id}")
    page.get_by_text("succeeded").first.wait_for()
    assert more_errors == []  # alice's page logged the refused second approval's 409, as it should
