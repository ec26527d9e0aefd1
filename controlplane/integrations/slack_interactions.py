"""Owns what Slack sends to `POST /api/v1/slack/interactions`: its signature, freshness and uniqueness, and the click.

Slack signs each request with the app's signing secret (`X-Slack-Signature`, over `v0:<timestamp>:<body>`)
and stamps it (`X-Slack-Request-Timestamp`); slack_sdk's `SignatureVerifier` checks both. On top of it a
request older than MAX_AGE is refused as stale (with its own message, so a skewed clock is told apart from
a forgery), and one seen before as a replay: each replica remembers the signatures of the last MAX_AGE,
at most REMEMBERED of them (a replay past that is stale anyway).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, ValidationError
from slack_sdk.signature import Clock, SignatureVerifier

from controlplane.integrations.slack import APPROVE, REJECT

MAX_AGE = 300  # seconds: Slack's own advice, and what SignatureVerifier allows
REMEMBERED = 10_000


class InteractionRefused(Exception):
    """Not a genuine, fresh, first-time Slack interaction (`status` 401), or not one this service handles (400)."""

    def __init__(self, message: str, *, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class _Clock(Clock):
    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now

    def now(self) -> float:
        return self._now()


class InteractionVerifier:
    """Checks one request's signature, age and uniqueness; remembers it once accepted."""

    def __init__(self, signing_secret: str, *, clock: Callable[[], float] = time.time) -> None:
        self._verifier = SignatureVerifier(signing_secret, clock=_Clock(clock))
        self._clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # signature -> its timestamp, oldest first
        self._lock = threading.Lock()

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        timestamp = headers.get("x-slack-request-timestamp") or ""
        signature = headers.get("x-slack-signature") or ""
        if not timestamp or not signature:
            raise InteractionRefused("not signed: X-Slack-Signature and X-Slack-Request-Timestamp are required")
        try:
            stamped = int(timestamp)
        except ValueError:
            raise InteractionRefused("X-Slack-Request-Timestamp is not a Unix time") from None
        now = self._clock()
        if abs(now - stamped) > MAX_AGE:
            raise InteractionRefused(
                f"stale request: its timestamp is {abs(int(now - stamped))}s off this server's clock,"
                f" more than {MAX_AGE}s (a replay, or a clock out of sync)"
            )
        if not self._verifier.is_valid(body, timestamp, signature):
            raise InteractionRefused("bad signature: not signed with this app's signing secret")
        with self._lock:
            while self._seen and (len(self._seen) >= REMEMBERED or next(iter(self._seen.values())) < now - MAX_AGE):
                self._seen.popitem(last=False)
            if signature in self._seen:
                raise InteractionRefused("replayed request: this signed request was received before")
            self._seen[signature] = stamped


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _User(_Loose):
    id: str


class _Action(_Loose):
    action_id: str
    value: str = ""


class _Container(_Loose):
    channel_id: str | None = None
    message_ts: str | None = None


class _Payload(_Loose):
    type: str
    user: _User
    actions: list[_Action] = []
    container: _Container = _Container()
    response_url: str | None = None


@dataclass(frozen=True)
class Click:
    """A person clicked Approve or Reject on an approval message."""

    slack_user: str
    decision: Literal["approve", "reject"]
    execution_id: int
    seen: str | None  # the digest of the change the message showed (Approve); None from a message without one
    channel: str | None  # where the message is, to update it (chat.update)
    message_ts: str | None
    response_url: str | None  # where to answer that person alone (ephemeral)


# A button's value (integrations/slack.py): the execution id, then on Approve the digest of the change shown.
_VALUE = re.compile(r"(?P<id>[0-9]{1,18})(?::(?P<seen>[0-9a-f]{16}))?")


def parse_click(body: bytes) -> Click:
    """The click in a verified request's form body (`payload=<JSON>`, as Slack sends it)."""
    fields = parse_qs(body.decode("utf-8", "replace"))
    if "payload" not in fields:
        raise InteractionRefused("no `payload` field: Slack sends interactions as a form with one", status=400)
    try:
        payload = _Payload.model_validate(json.loads(fields["payload"][0]))
    except (ValueError, ValidationError) as exc:
        raise InteractionRefused(
            f"payload is not a Slack interaction: {str(exc).splitlines()[0]}", status=400
        ) from None
    decisions = {APPROVE: "approve", REJECT: "reject"}
    action = next((a for a in payload.actions if a.action_id in decisions), None)
    value = _VALUE.fullmatch(action.value) if action is not None else None
    if payload.type != "block_actions" or action is None or value is None:
        raise InteractionRefused("not an Approve or Reject click on an approval message", status=400)
    return Click(
        slack_user=payload.user.id,
        decision="approve" if decisions[action.action_id] == "approve" else "reject",
        execution_id=int(value["id"]),
        seen=value["seen"],
        channel=payload.container.channel_id,
        message_ts=payload.container.message_ts,
        response_url=payload.response_url,
    )
