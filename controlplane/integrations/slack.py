"""Owns talking to Slack's Web API: an incident's Block Kit message and the replies in its thread.

Calls go through the real `slack_sdk.WebClient` pointed at `settings.slack_api_url`. Its own
retry handlers are turned off: the notify actions retry with one bounded policy of their own,
and two nested retry loops would multiply the wait. `SlackError.retriable` sorts Slack's
answers: rate limits, 5xx and network errors may pass on another try; `invalid_auth`,
`channel_not_found` and other API errors will not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

# Block Kit limits: a header's plain text, a section's text.
_HEADER_MAX = 150
_SECTION_MAX = 3000


class SlackError(Exception):
    """A Slack call failed. `code` is Slack's error string (`ratelimited`, `invalid_auth`, ...)."""

    def __init__(
        self,
        message: str,
        *,
        retriable: bool,
        code: str = "",
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.code = code
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class SlackMessage:
    channel: str  # the channel ID Slack answered with: chat.update needs it, not the name
    ts: str


@dataclass(frozen=True)
class IncidentCard:
    """What the root message of an incident shows."""

    id: int
    title: str
    severity: str
    status: str
    summary: str
    url: str | None = None
    runbook_url: str | None = None  # an absolute http(s) URL (actions/paging.py)


def escape(text: str) -> str:
    """Slack mrkdwn escaping: alert labels are untrusted, and `<!channel>` in one must not ping a channel."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link_target(url: str) -> str:
    """A URL inside mrkdwn's `<url|text>`: a `|` or `>` in it would end the link early, so they are
    percent-encoded (the same URL to the server), and `&` is escaped as Slack asks."""
    return escape(url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E"))


def incident_text(card: IncidentCard) -> str:
    """The plain fallback shown in notifications and by clients that cannot render blocks."""
    return escape(f"[{card.severity}] {card.title} ({card.status})")


def incident_blocks(card: IncidentCard) -> list[dict[str, Any]]:
    link = f"<{card.url}|#{card.id}>" if card.url else f"#{card.id}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": card.title[:_HEADER_MAX] or f"Incident #{card.id}"}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Severity*\n{escape(card.severity)}"},
                {"type": "mrkdwn", "text": f"*Status*\n{escape(card.status)}"},
                {"type": "mrkdwn", "text": f"*Incident*\n{link}"},
            ],
        },
    ]
    if card.runbook_url:
        blocks[1]["fields"].append({"type": "mrkdwn", "text": f"*Runbook*\n<{_link_target(card.runbook_url)}|open>"})
    if card.summary.strip():  # Slack rejects a section with empty text
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": escape(card.summary)[:_SECTION_MAX]}})
    return blocks


# The buttons' action_id. Their value: the execution id; Approve's also carries the digest of the change the
# message shows, `<id>:<digest>` (integrations/slack_interactions.py reads it back), so that a click approves
# that change and no other (playbooks/approval_plans.py).
APPROVE, REJECT = "execution.approve", "execution.reject"


@dataclass(frozen=True)
class ApprovalCard:
    """What the message asking for an approval shows; `outcome` set once decided (the buttons then go)."""

    execution_id: int
    rule: str
    playbook: str
    reason: str
    progress: str  # "0 of 2 approvals"
    incident_id: int | None = None
    incident_title: str | None = None
    url: str | None = None  # the incident's page in the console
    change: str | None = None  # what it would do (its plan), when known
    plan_digest: str | None = None  # the digest of that plan: Approve approves this change only
    outcome: str | None = None  # "Approved by alice, bob", "Rejected by carol", "execution is cancelled"


def approval_text(card: ApprovalCard) -> str:
    state = card.outcome or f"needs approval ({card.progress})"
    return escape(f"Execution #{card.execution_id} of rule {card.rule}: {state}")


def approval_blocks(card: ApprovalCard) -> list[dict[str, Any]]:
    """Block Kit: what would run and why, then Approve/Reject buttons, or the outcome once decided."""
    incident = f"#{card.incident_id} {card.incident_title or ''}".strip() if card.incident_id else "none"
    incident = f"<{_link_target(card.url)}|{escape(incident)}>" if card.url and card.incident_id else escape(incident)
    title = (
        f"Approval needed: execution #{card.execution_id}"
        if card.outcome is None
        else f"Execution #{card.execution_id}"
    )
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:_HEADER_MAX]}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Rule*\n{escape(card.rule)}"},
                {"type": "mrkdwn", "text": f"*Playbook*\n{escape(card.playbook)}"},
                {"type": "mrkdwn", "text": f"*Incident*\n{incident}"},
                {"type": "mrkdwn", "text": f"*Approvals*\n{escape(card.progress)}"},
            ],
        },
    ]
    if card.change:  # the plan: what approving would change
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": escape(card.change)[:_SECTION_MAX]}})
    if card.reason.strip():
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": escape(card.reason)[:_SECTION_MAX]}]})
    if card.outcome is not None:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*{escape(card.outcome)}*"}})
        return blocks
    value = str(card.execution_id)
    approve = f"{value}:{card.plan_digest}" if card.plan_digest else value
    blocks.append(
        {
            "type": "actions",
            "block_id": f"approval-{value}",
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE,
                    "value": approve,
                    "style": "primary",
                    "text": {"type": "plain_text", "text": "Approve"},
                },
                {
                    "type": "button",
                    "action_id": REJECT,
                    "value": value,
                    "style": "danger",
                    "text": {"type": "plain_text", "text": "Reject"},
                    "confirm": {
                        "title": {"type": "plain_text", "text": "Reject?"},
                        "text": {"type": "plain_text", "text": f"Reject execution #{value}? It will not run."},
                        "confirm": {"type": "plain_text", "text": "Reject"},
                        "deny": {"type": "plain_text", "text": "Keep waiting"},
                    },
                },
            ],
        }
    )
    return blocks


class SlackClient:
    def __init__(self, token: str, *, base_url: str, timeout: float = 10.0) -> None:
        self._timeout = max(1, round(timeout))
        self._client = WebClient(
            token=token,
            base_url=base_url if base_url.endswith("/") else base_url + "/",
            timeout=max(1, round(timeout)),
            retry_handlers=[],
        )

    def post(
        self, *, channel: str, text: str, blocks: list[dict[str, Any]] | None = None, thread_ts: str | None = None
    ) -> SlackMessage:
        """chat.postMessage; with `thread_ts`, a reply in that message's thread."""
        args: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False}
        if blocks is not None:
            args["blocks"] = blocks
        if thread_ts is not None:
            args["thread_ts"] = thread_ts
        data = self._call("chat.postMessage", lambda: self._client.chat_postMessage(**args))
        return SlackMessage(channel=str(data["channel"]), ts=str(data["ts"]))

    def update(self, *, channel: str, ts: str, text: str, blocks: list[dict[str, Any]]) -> SlackMessage:
        """chat.update of a message this token posted; `channel` must be the channel ID."""
        data = self._call(
            "chat.update", lambda: self._client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks)
        )
        return SlackMessage(channel=str(data["channel"]), ts=str(data["ts"]))

    def respond(self, response_url: str, text: str) -> None:
        """Answer the person who clicked, them alone (ephemeral), at the interaction's `response_url`."""
        response = WebhookClient(response_url, timeout=self._timeout, retry_handlers=[]).send(
            text=escape(text), response_type="ephemeral", replace_original=False
        )
        if response.status_code != 200:
            raise SlackError(f"response_url: HTTP {response.status_code} {response.body[:200]}", retriable=False)

    @staticmethod
    def _call(method: str, call: Any) -> dict[str, Any]:
        try:
            return dict(call().data)
        except SlackApiError as exc:
            raise _api_error(method, exc) from None
        except (OSError, TimeoutError) as exc:  # urllib's URLError is an OSError: refused, reset, DNS, timeout
            raise SlackError(f"{method}: {type(exc).__name__}: {exc}", retriable=True) from None


def _api_error(method: str, exc: SlackApiError) -> SlackError:
    response = exc.response
    status = response.status_code
    data = response.data if isinstance(response.data, dict) else {}
    code = str(data.get("error") or "")
    retry_after: float | None = None
    header = (response.headers or {}).get("Retry-After") or (response.headers or {}).get("retry-after")
    if header is not None:
        try:
            retry_after = float(header if isinstance(header, str) else header[0])
        except (TypeError, ValueError, IndexError):
            retry_after = None
    # Slack answers API errors with 200 and ok=false; rate limits with 429; its own trouble with 5xx
    # (whose body may be an HTML page, which slack_sdk turns into a long error string).
    retriable = status == 429 or status >= 500 or code in ("ratelimited", "internal_error", "fatal_error")
    shown = code if len(code) <= 200 else code[:200] + "..."
    return SlackError(
        f"{method}: {shown or 'error'} (HTTP {status})",
        retriable=retriable,
        code=code,
        status=status,
        retry_after=retry_after,
    )
