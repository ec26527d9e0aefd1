"""What the console and the API say a playbook did, on SQLite and PostgreSQL, against the real sample service.

An alert disables a graph on the sample service, pages on-call through the PagerDuty stand-in and
verifies the incident resolves: the execution's summary line says so in the operator's words
(API and incident page alike, outside anything collapsed), steps are counted from 1, the
verification's polls fold into one timeline line, times read as UTC and relative, and regex
matchers show their operator on the Rules and Approvals pages and in the rules API.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy import func, select

from controlplane.db.engine import make_engine
from controlplane.db.tables import audit_t
from tests.helpers import console_app, console_users, log_in, post_alerts, wait_for
from tests.sample_fixture import SampleApp
from tests.standins.pagerduty import ROUTING_KEY, PagerDutyStandIn

RULES = """
targets:
  - {{name: sample, kind: http, url: "{sample}/admin"}}
rules:
  - name: disable-failing-graph
    match: {{alertname: GraphFailing, severity: "=~critical|page", namespace: "!~test-.*"}}
    playbook: disable-and-verify
  - name: broken-playbook
    match: {{alertname: GraphBroken}}
    playbook: acts-on-nothing
  - name: careful
    match: {{alertname: NeedsApproval, team: "!=infra"}}
    playbook: acts-on-nothing
    guards: {{approval: true}}
playbooks:
  - name: disable-and-verify
    steps:
      - action: graph.disable
        with: {{target: sample, graph: "{{{{ alert.labels.graph_name }}}}"}}
        rollback: graph.enable
      - action: notify.oncall
        with: {{text: "Disabled graph {{{{ alert.labels.graph_name }}}}"}}
      - id: verify
        action: verify.resolved
        with: {{within: 1m, poll: 100ms}}
  - name: acts-on-nothing
    steps:
      - action: notify.log
        with: {{text: "about to disable {{{{ alert.labels.graph_name }}}}"}}
      - action: graph.disable
        with: {{target: "{{{{ alert.labels.site }}}}", graph: "{{{{ alert.labels.graph_name }}}}"}}
"""


@pytest.fixture
def app(
    database_url: str, tmp_path: Path, sample_app: SampleApp, pagerduty_api: PagerDutyStandIn
) -> Iterator[TestClient]:
    with console_app(
        database_url,
        RULES.format(sample=sample_app.url),
        tmp_path,
        users=console_users(viewer="viewer"),
        worker_poll_seconds=0.05,
        pagerduty_routing_key=ROUTING_KEY,
        pagerduty_url=pagerduty_api.url,
    ) as client:
        yield client


def alert(alertname: str, graph: str, labels: dict[str, str] | None = None, **fields: Any) -> dict[str, Any]:
    """The sample alert as `alertname` on `graph`, with more `labels` and other fields (status, endsAt)."""
    return {
        "labels": {"alertname": alertname, "graph_name": graph, **(labels or {})},
        "fingerprint": f"fp-{alertname}-{graph}",
        **fields,
    }


def execution_of(client: TestClient, incident_id: int) -> dict[str, Any]:
    [item] = client.get("/api/v1/executions", params={"incident_id": incident_id}).json()["items"]
    return client.get(f"/api/v1/executions/{item['id']}").json()  # type: ignore[no-any-return]


def waits(database_url: str, execution_id: int) -> int:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(audit_t)
                    .where(audit_t.c.execution_id == execution_id, audit_t.c.action == "execution.waiting")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def run_block(page: str, execution_id: int) -> str:
    """The incident page's block of one execution (its <li class="execution">)."""
    start = page.index(f"<b>Execution #{execution_id}</b>")
    return page[start : page.index("</li>\n", page.index('<ul class="run-events">', start))]


def test_a_playbook_run_reads_as_what_it_did(app: TestClient, database_url: str, sample_app: SampleApp) -> None:
    [incident_id] = post_alerts(app, alert("GraphFailing", "a"))
    run = wait_for("the run verifies", lambda: (d := execution_of(app, incident_id))["status"] == "waiting" and d, 10)
    wait_for("three polls", lambda: waits(database_url, run["id"]) >= 3, 10)
    detail = execution_of(app, incident_id)
    assert detail["summary"] == (
        "Disabled graph a on sample; paged on-call via PagerDuty (critical); "
        "waiting for the incident to resolve (verify.resolved, step 3)"
    )
    assert [s["effect"] for s in detail["steps"]] == [
        "Disabled graph a on sample",
        "Paged on-call via PagerDuty (critical)",
        None,  # still waiting
    ]
    assert [s["index"] for s in detail["steps"]] == [0, 1, 2]  # stored as they were: only what is read changes
    assert sample_app.client.graphs()["a"] is False

    log_in(app, "viewer")
    page = app.get(f"/incidents/{incident_id}").text
    block = run_block(page, detail["id"])
    # The summary is on the page, outside the collapsed inputs and output.
    summary = re.search(r'<p class="summary">([^<]*)</p>', block)
    assert summary is not None and html.unescape(summary.group(1)) == detail["summary"]
    assert block.index('class="summary"') < block.index("<details>")
    assert '<div class="effect">Disabled graph a on sample</div>' in block
    # Steps are counted from 1 in the table and in the messages.
    assert re.findall(r'<td data-label="Step">(\d+)', block) == ["1", "2", "3"]
    assert "step 3 (verify) waits until " in block
    # The polls are one line: how many, over how long, the last one's time.
    polls = waits(database_url, detail["id"])
    assert block.count("<b>execution.waiting</b>") == 1
    folded = re.search(r'<span class="repeat" title="(\d+) times from [^"]+">\u00d7(\d+) in \d+ (s|min)</span>', block)
    assert folded is not None and int(folded.group(1)) == int(folded.group(2)) >= min(polls, 3)
    assert re.search(r'<li><span class="muted">last</span> <time [^>]+>.*?</time> <b>execution.waiting</b>', block)
    # Times are UTC and relative (the browser adds local time), not "3 min ago" alone: the execution's head...
    head = page[: page.index(f"<b>Execution #{detail['id']}</b>")]
    assert re.search(
        r'<time datetime="[^"]+"><span class="utc">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</span>'
        r'<span class="local"></span><span class="sep"> · </span>'
        r'<span class="ago">(just now|\d+ min ago)</span></time></span>\s*<span class="what">$',
        head,
    )
    # ...and under it, since it gives the date, the execution's own lines give the time of day.
    events = block[block.index('<ul class="run-events">') :]
    assert re.search(r'<time datetime="[^"]+" data-short><span class="utc">\d\d:\d\d:\d\d UTC</span>', events)
    assert not re.search(r'<span class="utc">\d{4}-', events)

    post_alerts(app, alert("GraphFailing", "a", status="resolved", endsAt="2026-11-24T08:20:00Z"))
    done = wait_for(
        "the run succeeds", lambda: (d := execution_of(app, incident_id))["status"] == "succeeded" and d, 10
    )
    assert re.fullmatch(
        r"Disabled graph a on sample; paged on-call via PagerDuty \(critical\); resolved \d+ s later", done["summary"]
    )
    assert done["steps"][2]["effect"].startswith("Verified the incident resolved after ")
    block = run_block(app.get(f"/incidents/{incident_id}").text, done["id"])
    assert escape(done["summary"]) in block


def test_a_failed_run_names_its_step_from_one_and_why(app: TestClient) -> None:
    [incident_id] = post_alerts(app, alert("GraphBroken", "b", {"site": "nowhere"}))
    paged = "; paged on-call via PagerDuty"  # the page about the failure, sent after it was committed
    failed = wait_for(
        "the run fails and on-call is paged",
        lambda: (d := execution_of(app, incident_id))["summary"].endswith(paged) and d,
        10,
    )
    why = "unknown target 'nowhere' (defined in rule files: sample)"
    assert failed["summary"] == (
        f"Wrote to the service log: about to disable b; failed at step 2 (graph.disable): {why}{paged}"
    )
    assert failed["reason"] == f"step 2 (graph.disable) failed: {why}"
    log_in(app, "viewer")
    block = run_block(app.get(f"/incidents/{incident_id}").text, failed["id"])
    assert escape(failed["summary"]) in block
    assert "step 2 (graph.disable): " + escape(why) in block  # the step.failed line of its timeline


def test_regex_matchers_show_their_operator(app: TestClient) -> None:
    rules = {r["name"]: r for r in app.get("/api/v1/rules").json()["rules"]}
    assert rules["disable-failing-graph"]["matchers"] == [
        'alertname="GraphFailing"',
        'severity=~"critical|page"',
        'namespace!~"test-.*"',
    ]
    assert rules["disable-failing-graph"]["match"]["severity"] == "=~critical|page"  # the file's own syntax stays
    log_in(app, "viewer")
    page = app.get("/rules").text
    assert '<span class="k">severity</span><span class="op">=~</span><span class="v">critical|page</span>' in page
    assert '<span class="k">namespace</span><span class="op">!~</span><span class="v">test-.*</span>' in page
    assert "==~" not in page and "=!~" not in page

    post_alerts(app, alert("NeedsApproval", "c", {"team": "agents"}))
    wait_for(
        "an approval waits",
        lambda: app.get("/api/v1/executions", params={"status": "awaiting_approval"}).json()["items"],
        10,
    )
    page = app.get("/approvals").text
    assert '<span class="k">team</span><span class="op">!=</span><span class="v">infra</span>' in page
