"""Owns talking to PagerDuty's Events API v2: trigger, acknowledge and resolve one alert per incident.

The dedup key is derived from the incident, so every event about one incident lands on one
PagerDuty alert however often it is sent (retries, replicas, repeated playbooks): PagerDuty
is idempotent for us. It answers 202 when it accepted an event, 400 for an event it will
never accept, 429 when we send too fast and 5xx for its own trouble.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx

EventAction = Literal["trigger", "acknowledge", "resolve"]
Severity = Literal["critical", "error", "warning", "info"]
_SEVERITIES: frozenset[str] = frozenset({"critical", "error", "warning", "info"})
_SUMMARY_MAX = 1024  # PagerDuty truncates longer summaries; we do it ourselves so the cut is visible


class PagerDutyError(Exception):
    """An event was not accepted. `retriable`: PagerDuty was unreachable, throttled us or failed itself."""

    def __init__(
        self, message: str, *, retriable: bool, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.status = status
        self.retry_after = retry_after


def dedup_key(incident_id: int) -> str:
    return f"controlplane-incident-{incident_id}"


def severity_of(severity: str) -> Severity:
    """PagerDuty's severity for an alert's: its own four pass; anything else unknown pages as `error`.

    An unknown label (`high`, `page`) reaching PagerDuty was routed there on purpose, so it must
    not sink to `info`; `none`/empty means the alert carried no severity at all.
    """
    value = severity.strip().lower()
    if value in _SEVERITIES:
        return value  # type: ignore[return-value]
    return "info" if value in ("", "none") else "error"


class PagerDutyClient:
    def __init__(self, routing_key: str, *, url: str, timeout: float = 10.0) -> None:
        self._routing_key = routing_key
        self._endpoint = url.rstrip("/") + "/v2/enqueue"
        self._timeout = timeout

    def send(
        self,
        *,
        action: EventAction,
        dedup_key: str,
        summary: str = "",
        source: str = "controlplane",
        severity: Severity = "error",
        custom_details: dict[str, Any] | None = None,
        links: list[dict[str, str]] | None = None,
        client_url: str | None = None,
    ) -> dict[str, Any]:
        """Enqueue one event; returns PagerDuty's answer (`status`, `message`, `dedup_key`)."""
        event: dict[str, Any] = {"routing_key": self._routing_key, "event_action": action, "dedup_key": dedup_key}
        if action == "trigger":  # acknowledge and resolve only need the key
            if len(summary) > _SUMMARY_MAX:
                summary = summary[: _SUMMARY_MAX - 3] + "..."
            event["payload"] = {
                "summary": summary or dedup_key,
                "source": source,
                "severity": severity,
                "custom_details": custom_details or {},
            }
            event["client"] = "controlplane"
            if client_url:
                event["client_url"] = client_url
            if links:
                event["links"] = links
        try:
            response = httpx.post(self._endpoint, json=event, timeout=self._timeout, follow_redirects=False)
        except httpx.TransportError as exc:
            raise PagerDutyError(f"POST {self._endpoint}: {type(exc).__name__}: {exc}", retriable=True) from None
        try:
            body: Any = response.json()
        except ValueError:
            body = {"message": response.text[:500]}
        if response.status_code == 202:
            return body if isinstance(body, dict) else {}
        detail = body.get("message", "") if isinstance(body, dict) else ""
        errors = body.get("errors") if isinstance(body, dict) else None
        if errors:
            detail = f"{detail}: {'; '.join(map(str, errors))}"
        status = response.status_code
        raise PagerDutyError(
            f"PagerDuty answered {status} to {action}: {detail}".rstrip(": "),
            retriable=status == 429 or status >= 500,
            status=status,
            retry_after=_retry_after(response),
        )


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
