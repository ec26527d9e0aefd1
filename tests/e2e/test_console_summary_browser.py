"""The incident page after a playbook ran, in a real browser: what the automation did is readable at a glance.

A playbook disables a graph on the sample service, pages on-call through the PagerDuty stand-in
and verifies the incident resolves. Without expanding anything the page shows the execution's
summary line and each step's effect, its verification's polls as one line with a count, and
times as UTC with the viewer's local time (added by console.js under the CSP) and how long ago.
Screenshots land in tests/artifacts/ (git ignores it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings
from tests.e2e.conftest import serve
from tests.e2e.test_console_browser import ARTIFACTS, Served, log_in
from tests.helpers import console_users, post_alerts
from tests.sample_fixture import SampleApp
from tests.standins.pagerduty import ROUTING_KEY, PagerDutyStandIn

pytestmark = pytest.mark.slow

RULES = """
targets:
  - {{name: langgraph, kind: http, url: "{sample}/admin"}}
rules:
  - name: high-error-rate
    description: A graph fails more than 5% of its executions.
    match: {{alertname: LangGraphHighErrorRate, severity: "=~critical|page"}}
    playbook: disable-problem-graph
playbooks:
  - name: disable-problem-graph
    steps:
      - id: disabled
        action: graph.disable
        with: {{target: langgraph, graph: "{{{{ alert.labels.graph_name }}}}"}}
        rollback: graph.enable
      - action: notify.oncall
        with: {{text: "Disabled graph {{{{ alert.labels.graph_name }}}}"}}
      - action: verify.resolved
        with: {{within: 2m, poll: 200ms}}
"""
ALERT = {
    "labels": {"alertname": "LangGraphHighErrorRate", "graph_name": "a", "namespace": "agents"},
    "annotations": {"summary": "Error rate above 5% for graph a"},
    "fingerprint": "fp-graph-a",
}


@pytest.fixture(scope="module")
def pagerduty_api() -> Iterator[PagerDutyStandIn]:
    standin = PagerDutyStandIn()
    yield standin
    standin.close()


@pytest.fixture
def served(tmp_path: Any, sample_app: SampleApp, pagerduty_api: PagerDutyStandIn) -> Iterator[Served]:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.yaml").write_text(RULES.format(sample=sample_app.url))
    settings = make_settings(
        f"sqlite:///{tmp_path}/controlplane.db",
        rules_dir=tmp_path / "rules",
        console_users=console_users(viewer="viewer"),
        session_secret="browser-test-session-secret-0123456789",
        console_refresh_seconds=1.0,
        worker_poll_seconds=0.05,
        pagerduty_routing_key=ROUTING_KEY,
        pagerduty_url=pagerduty_api.url,
    )
    with serve(settings) as url:
        yield Served(url)


def test_the_incident_page_says_what_the_automation_did(browser: Any, served: Served, sample_app: SampleApp) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    with httpx.Client(base_url=served.url) as client:
        [incident_id] = post_alerts(client, ALERT)
    # Berlin: local time differs from UTC, so the page must show both.
    page, errors = log_in(
        browser, served, "viewer", viewport={"width": 1280, "height": 900}, timezone_id="Europe/Berlin"
    )
    page.goto(f"{served.url}/incidents/{incident_id}")
    execution = page.locator("li.execution")
    summary = execution.locator(".summary")
    summary.get_by_text("waiting for the incident to resolve").wait_for()
    repeat = execution.locator(".run-events .repeat")
    repeat.wait_for()
    page.wait_for_function(
        "() => /\\u00d7([5-9]|\\d\\d)/.test(document.querySelector('.run-events .repeat').textContent)"
    )

    with httpx.Client(base_url=served.url) as client:
        post_alerts(client, {**ALERT, "status": "resolved", "endsAt": "2026-11-24T08:20:00Z"})
    summary.get_by_text("resolved", exact=False).filter(has_text="later").wait_for()  # the live block redrew
    text = summary.inner_text()
    assert re.fullmatch(
        r"Disabled graph a on langgraph; paged on-call via PagerDuty \(critical\); resolved \d+ s later", text
    ), text
    assert summary.is_visible()
    assert page.locator("details[open]").count() == 0  # nothing had to be expanded to read it
    effects = execution.locator(".steps .effect").all_inner_texts()
    assert effects[:2] == ["Disabled graph a on langgraph", "Paged on-call via PagerDuty (critical)"]
    assert effects[2].startswith("Verified the incident resolved after ")
    assert execution.locator('td[data-label="Step"]').all_inner_texts() == ["1 disabled", "2", "3"]

    # The verification's polls: one line with their count, in place of one line each.
    waiting = execution.locator(".run-events li", has_text="execution.waiting")
    assert waiting.count() == 1
    assert re.search(
        r"last .*execution\.waiting \u00d7\d+ in \d+ s by rule:high-error-rate: step 3 \(verify.resolved\)",
        waiting.inner_text(),
    )

    # Times: UTC, the viewer's local time (Berlin is UTC+1 in winter) and how long ago.
    opened = page.locator(".facts time").first
    shown = opened.inner_text()
    match = re.fullmatch(
        r"(\d{4}-\d\d-\d\d) (\d\d):(\d\d):\d\d UTC \((\d\d):(\d\d) local\) · (just now|\d+ min ago)", shown
    )
    assert match, shown
    assert (int(match[4]) - int(match[2])) % 24 == 1 and match[5] == match[3]
    assert all("local)" in t for t in execution.locator("time").all_inner_texts())  # redrawn blocks too
    # An execution's own lines give the time of day: its head gives the date.
    line_time = execution.locator(".run-events time").first.inner_text()
    assert re.fullmatch(r"\d\d:\d\d:\d\d UTC \(\d\d:\d\d local\) · (just now|\d+ min ago)", line_time), line_time

    page.screenshot(path=str(ARTIFACTS / "console-incident-summary.png"), full_page=True)
    phone, phone_errors = log_in(browser, served, "viewer", viewport={"width": 390, "height": 844}, is_mobile=True)
    phone.goto(f"{served.url}/incidents/{incident_id}")
    phone.locator("li.execution .summary").wait_for()
    phone.screenshot(path=str(ARTIFACTS / "console-incident-summary-phone.png"), full_page=True)
    page.goto(f"{served.url}/incidents")
    page.screenshot(path=str(ARTIFACTS / "console-incidents-times.png"), full_page=True)
    page.goto(f"{served.url}/rules")
    assert page.locator(".matchers li", has_text="severity").inner_text() == "severity=~critical|page"
    page.screenshot(path=str(ARTIFACTS / "console-rules-matchers.png"), full_page=True)
    assert errors == [] and phone_errors == []  # no CSP violation, no script error
