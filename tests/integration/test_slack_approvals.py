"""Approvals in Slack: the message with Approve/Reject, signed clicks from the Slack stand-in (genuine, forged,
stale, replayed), who may click, the message updated with the outcome, and an Approve of a change the world
moved away from (the real sample service) refused with the new change; on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from controlplane.config import SettingsError, load_settings
from controlplane.integrations.slack import APPROVE, REJECT
from tests.conftest import ADMIN_TOKEN
from tests.helpers import PASSWORD_HASH, console_app, csrf, log_in, post_alerts, wait_for
from tests.sample_fixture import SampleApp
from tests.standins.slack import TOKEN, Interaction, Message, SlackStandIn

INTERACTIONS = "/api/v1/slack/interactions"
ALICE, BOB, VERA, STRANGER = "U0ALICE01", "U0BOB0001", "U0VERA001", "U0NOBODY1"

RULES = """
rules:
  - name: two-keys
    match: {alertname: NeedsTwo}
    playbook: tell
    guards: {approvals: 2}
playbooks:
  - name: tell
    steps:
      - action: notify.log
        with: {text: "approved in Slack for {{ alert.labels.namespace }}"}
"""


def user(name: str, role: str, slack_user: str) -> dict[str, str]:
    return {"name": name, "role": role, "password_hash": PASSWORD_HASH, "slack_user": slack_user}


@pytest.fixture
def slack() -> Iterator[SlackStandIn]:
    standin = SlackStandIn()
    yield standin
    standin.close()


@pytest.fixture
def app(database_url: str, tmp_path: Path, slack: SlackStandIn) -> Iterator[TestClient]:
    users = [user("alice", "operator", ALICE), user("bob", "admin", BOB), user("vera", "viewer", VERA)]
    with console_app(
        database_url,
        RULES,
        tmp_path,
        users=users,
        worker_poll_seconds=0.05,
        pager_poll_seconds=0.05,
        slack_token=TOKEN,
        slack_api_url=slack.url,
        slack_signing_secret=slack.signing_secret,
    ) as client:
        yield client


def approval_message(client: TestClient, slack: SlackStandIn, namespace: str) -> tuple[int, Message]:
    """An execution that needs two approvals, and the Slack message asking for them."""
    alert = {"fingerprint": f"fp-{namespace}", "labels": {"alertname": "NeedsTwo", "namespace": namespace}}
    return message_for(client, slack, alert)


def message_for(client: TestClient, slack: SlackStandIn, alert: dict[str, Any]) -> tuple[int, Message]:
    """The execution `alert` makes wait for approval, and the Slack message asking for it."""
    post_alerts(client, alert)
    items = client.get("/api/v1/executions", params={"status": "awaiting_approval"}).json()["items"]
    execution_id = items[0]["id"]
    message = wait_for(
        "the approval message in Slack",
        lambda: next((m for m in slack.messages if f"#{execution_id}" in m.text), None),
        10,
    )
    return execution_id, message


def send(client: TestClient, interaction: Interaction) -> Any:
    return client.post(INTERACTIONS, content=interaction.body, headers=interaction.headers)


def status_of(client: TestClient, execution_id: int) -> str:
    return str(client.get(f"/api/v1/executions/{execution_id}").json()["status"])


def shown(message: Message) -> str:
    return repr(message.blocks)


def buttons(message: Message) -> list[dict[str, Any]]:
    return [e for b in message.blocks or [] if b["type"] == "actions" for e in b["elements"]]


def test_the_message_has_buttons_and_two_operators_approve_in_slack(app: TestClient, slack: SlackStandIn) -> None:
    execution_id, message = approval_message(app, slack, "ns-slack")
    assert message.channel == "C0ONCALL001"
    assert "Approval needed" in shown(message) and "0 of 2 approvals" in shown(message)
    # The change approving would make, planned when the message went out (approval_plans.py).
    assert "write to the service log (info): approved in Slack for ns-slack" in shown(message)
    assert [button["action_id"] for button in buttons(message)] == [APPROVE, REJECT]

    assert send(app, slack.click(message, user=ALICE, action_id=APPROVE)).status_code == 200
    wait_for("the message counts alice", lambda: "1 of 2 approvals (alice)" in shown(message), 5)
    assert status_of(app, execution_id) == "awaiting_approval"
    assert [b["type"] for b in message.blocks or []][-1] == "actions"  # still asking for the second

    again = slack.click(message, user=ALICE, action_id=APPROVE)  # alice again, a new genuine request
    assert send(app, again).status_code == 200
    told = wait_for("alice is told why", lambda: slack.responses_to(again), 5)
    assert told[0]["response_type"] == "ephemeral" and "alice already approved" in told[0]["text"]

    assert send(app, slack.click(message, user=BOB, action_id=APPROVE)).status_code == 200
    wait_for("the execution succeeds", lambda: status_of(app, execution_id) == "succeeded", 10)
    wait_for("the message shows the outcome", lambda: "Approved by alice, bob; execution #" in shown(message), 5)
    assert all(b["type"] != "actions" for b in message.blocks or [])  # no buttons once decided
    detail = app.get(f"/api/v1/executions/{execution_id}").json()
    given = [
        (e["actor"], e["detail"].get("via")) for e in detail["timeline"] if e["action"] == "execution.approval_given"
    ]
    assert given == [("user:alice", "slack"), ("user:bob", "slack")]


def test_a_reject_in_slack_cancels_and_the_message_says_so(app: TestClient, slack: SlackStandIn) -> None:
    execution_id, message = approval_message(app, slack, "ns-reject")
    assert send(app, slack.click(message, user=BOB, action_id=REJECT)).status_code == 200
    assert status_of(app, execution_id) == "cancelled"
    wait_for("the message shows the reject", lambda: "rejected by user:bob in Slack" in shown(message), 5)


def test_unknown_slack_users_and_viewers_are_refused_with_a_reason(app: TestClient, slack: SlackStandIn) -> None:
    execution_id, message = approval_message(app, slack, "ns-who")
    stranger = slack.click(message, user=STRANGER, action_id=APPROVE)
    assert send(app, stranger).status_code == 200  # Slack shows its own error on anything else
    told = wait_for("the stranger is told", lambda: slack.responses_to(stranger), 5)
    assert f"slack_user: {STRANGER}" in told[0]["text"] and "not linked to a console user" in told[0]["text"]
    viewer = slack.click(message, user=VERA, action_id=APPROVE)
    send(app, viewer)
    told = wait_for("the viewer is told", lambda: slack.responses_to(viewer), 5)
    assert "vera is a viewer" in told[0]["text"] and "operator role" in told[0]["text"]
    detail = app.get(f"/api/v1/executions/{execution_id}").json()
    assert detail["status"] == "awaiting_approval" and detail["approved_by"] == []


def test_forged_stale_and_replayed_requests_are_refused(app: TestClient, slack: SlackStandIn) -> None:
    execution_id, message = approval_message(app, slack, "ns-forged")
    forged = send(app, slack.click(message, user=BOB, action_id=APPROVE, secret="0" * 31 + "1"))
    assert forged.status_code == 401 and "bad signature" in forged.json()["detail"]
    stale = send(app, slack.click(message, user=BOB, action_id=APPROVE, at=time.time() - 600))
    assert stale.status_code == 401 and "stale request" in stale.json()["detail"]
    unsigned = app.post(
        INTERACTIONS, content=b"payload=%7B%7D", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert unsigned.status_code == 401 and "not signed" in unsigned.json()["detail"]
    assert app.get(f"/api/v1/executions/{execution_id}").json()["approved_by"] == []

    genuine = slack.click(message, user=ALICE, action_id=APPROVE)
    assert send(app, genuine).status_code == 200
    replayed = send(app, genuine)
    assert replayed.status_code == 401 and "replayed request" in replayed.json()["detail"]
    assert app.get(f"/api/v1/executions/{execution_id}").json()["approved_by"] == ["user:alice"]


def test_slack_interactions_without_a_signing_secret_are_not_served(database_url: str, tmp_path: Path) -> None:
    with console_app(database_url, RULES, tmp_path, users=[user("alice", "operator", ALICE)]) as client:
        response = client.post(INTERACTIONS, content=b"payload=%7B%7D")
        assert response.status_code == 404 and "CONTROLPLANE_SLACK_SIGNING_SECRET" in response.text


def test_production_refuses_a_weak_signing_secret_and_reads_it_from_a_file(tmp_path: Path) -> None:
    production = {"environment": "production", "webhook_token": "3c9e0b7a1f5d2e8c4a6b0d9f7e1c3a5b"}
    with pytest.raises(SettingsError, match="slack_signing_secret"):
        load_settings(**production, slack_signing_secret="changeme")
    secret = tmp_path / "signing-secret"
    secret.write_text("e4b1c7d09a3f5e2b8c6d1a0f9e7b3c5d\n")
    settings = load_settings(**production, slack_signing_secret_file=secret)
    assert settings.slack_signing_secret is not None
    assert settings.slack_signing_secret.get_secret_value() == "e4b1c7d09a3f5e2b8c6d1a0f9e7b3c5d"


def test_approving_in_the_console_then_in_slack_is_the_same_person_twice(app: TestClient, slack: SlackStandIn) -> None:
    execution_id, message = approval_message(app, slack, "ns-both")
    log_in(app, "alice")
    token = csrf(app, "/approvals")
    assert app.post(f"/executions/{execution_id}/approve", data={"csrf_token": token}).status_code == 200
    click = slack.click(message, user=ALICE, action_id=APPROVE)
    assert send(app, click).status_code == 200
    told = wait_for("alice is told", lambda: slack.responses_to(click), 5)
    assert "alice already approved" in told[0]["text"]
    wait_for("the message counts the console's approval", lambda: "1 of 2 approvals (alice)" in shown(message), 5)
    assert app.get(f"/api/v1/executions/{execution_id}").json()["approved_by"] == ["user:alice"]


def test_a_slack_user_linked_to_two_console_users_is_refused() -> None:
    with pytest.raises(SettingsError, match="slack_user may belong to one user only"):
        load_settings(console_users=[user("alice", "operator", ALICE), user("mallory", "admin", ALICE)])
    with pytest.raises(SettingsError, match="not a Slack member ID"):
        load_settings(console_users=[user("alice", "operator", "alice@example.com")])


TARGETED = """
targets:
  - {{name: sample, kind: http, url: "{url}/admin", max_disabled_graphs: 2}}
rules:
  - name: disable-failing-graph
    match: {{alertname: GraphBroken}}
    playbook: disable
    guards: {{approvals: 2}}
playbooks:
  - name: disable
    steps:
      - action: graph.disable
        with: {{target: sample, graph: "{{{{ alert.labels.graph_name }}}}"}}
"""


@pytest.fixture
def targeted(database_url: str, tmp_path: Path, slack: SlackStandIn, sample_app: SampleApp) -> Iterator[TestClient]:
    """The app with a rule whose change depends on the real sample service's state (which graphs are enabled)."""
    users = [user("alice", "operator", ALICE), user("bob", "admin", BOB)]
    with console_app(
        database_url,
        TARGETED.format(url=sample_app.url),
        tmp_path,
        users=users,
        worker_poll_seconds=0.05,
        pager_poll_seconds=0.05,
        http_allowed_hosts=["127.0.0.1"],
        slack_token=TOKEN,
        slack_api_url=slack.url,
        slack_signing_secret=slack.signing_secret,
    ) as client:
        yield client


GRAPH_A = {"fingerprint": "fp-graph-a", "labels": {"alertname": "GraphBroken", "graph_name": "a"}}


def test_the_message_shows_the_change_read_from_the_target(targeted: TestClient, slack: SlackStandIn) -> None:
    _, message = message_for(targeted, slack, GRAPH_A)
    assert "disable graph a on sample (3 of 3 enabled; at most 2 disabled)" in shown(message)


def test_an_approve_from_a_message_the_world_moved_away_from_is_refused_with_the_new_change(
    targeted: TestClient, slack: SlackStandIn, sample_app: SampleApp
) -> None:
    execution_id, message = message_for(targeted, slack, GRAPH_A)
    assert "disable graph a on sample (3 of 3 enabled; at most 2 disabled)" in shown(message)

    # The first of two approvals, on the change the message shows; the updated message still shows it.
    assert send(targeted, slack.click(message, user=ALICE, action_id=APPROVE)).status_code == 200
    wait_for("the message counts alice", lambda: "1 of 2 approvals (alice)" in shown(message), 5)
    assert "disable graph a on sample (3 of 3 enabled; at most 2 disabled)" in shown(message)

    sample_app.client.admin("POST", "/graphs/b/disable")  # the world moves while the message waits
    stale = slack.click(message, user=BOB, action_id=APPROVE)  # bob approves what the message showed
    assert send(targeted, stale).status_code == 200
    told = wait_for("bob is told the change moved", lambda: slack.responses_to(stale), 5)
    assert told[0]["response_type"] == "ephemeral"
    assert "no longer the one you approved" in told[0]["text"] and "2 of 3 enabled" in told[0]["text"]
    detail = targeted.get(f"/api/v1/executions/{execution_id}").json()
    assert detail["status"] == "awaiting_approval" and detail["approved_by"] == ["user:alice"]
    assert sample_app.client.graphs()["a"] is True
    wait_for("the message shows the new change", lambda: "(2 of 3 enabled; at most 2 disabled)" in shown(message), 5)
    assert "3 of 3 enabled" not in shown(message) and "1 of 2 approvals (alice)" in shown(message)

    # The message's new buttons approve the new change: it runs.
    assert send(targeted, slack.click(message, user=BOB, action_id=APPROVE)).status_code == 200
    wait_for("graph a is disabled", lambda: sample_app.client.graphs()["a"] is False, 15)
    wait_for("the execution succeeds", lambda: status_of(targeted, execution_id) == "succeeded", 10)
    wait_for("the message shows the outcome", lambda: "Approved by alice, bob; execution #" in shown(message), 5)


def test_an_approve_from_a_message_without_the_plan_digest_is_refused_with_the_change(
    app: TestClient, slack: SlackStandIn
) -> None:
    """A message sent before approvals carried the plan's digest: nobody can tell which change it showed, so
    the click is refused with the change as it is now, and the message updated to approve that."""
    execution_id, message = approval_message(app, slack, "ns-old")
    for button in buttons(message):  # the buttons of an older message: the execution id alone
        button["value"] = str(execution_id)
    old = slack.click(message, user=ALICE, action_id=APPROVE)
    assert send(app, old).status_code == 200
    told = wait_for("alice is told", lambda: slack.responses_to(old), 5)
    assert "write to the service log (info): approved in Slack for ns-old" in told[0]["text"]
    assert app.get(f"/api/v1/executions/{execution_id}").json()["approved_by"] == []
    wait_for("the message's Approve carries more", lambda: buttons(message)[0]["value"] != str(execution_id), 5)

    assert send(app, slack.click(message, user=ALICE, action_id=APPROVE)).status_code == 200
    wait_for("the message counts alice", lambda: "1 of 2 approvals (alice)" in shown(message), 5)
    assert app.get(f"/api/v1/executions/{execution_id}").json()["approved_by"] == ["user:alice"]


def test_an_approve_of_an_execution_decided_elsewhere_says_so_not_approve_again(
    targeted: TestClient, slack: SlackStandIn, sample_app: SampleApp
) -> None:
    execution_id, message = message_for(targeted, slack, GRAPH_A)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert targeted.post(f"/api/v1/executions/{execution_id}/reject", headers=admin).status_code == 200
    sample_app.client.admin("POST", "/graphs/b/disable")  # its plan has moved too: still nothing to approve
    click = slack.click(message, user=ALICE, action_id=APPROVE)  # the message still has its buttons
    assert send(targeted, click).status_code == 200
    told = wait_for("alice is told", lambda: slack.responses_to(click), 5)
    assert f"Execution #{execution_id} cannot be approved any more" in told[0]["text"]
    assert "cancelled" in told[0]["text"] and "Approve it again" not in told[0]["text"]
    wait_for("the message shows the outcome", lambda: not buttons(message), 5)
