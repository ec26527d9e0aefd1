"""Plain helpers the tests share: polling with a deadline, a clock the test moves by hand, alert payloads."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx

from tests.conftest import TOKEN, WEBHOOK, load_payload

T = TypeVar("T")
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)  # where a test's clock starts unless it says otherwise


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float,
    *,
    interval: float = 0.05,
    retry_on: tuple[type[Exception], ...] = (),
    details: Callable[[], str] | None = None,
) -> T:
    """Poll `check` until it returns something truthy, and return that; fail once `timeout` seconds have passed.

    `retry_on`: exceptions that mean "not yet" (a server between restarts); the last one is named on failure.
    `details`: what else to say on failure (the servers' logs).
    """
    deadline = time.monotonic() + timeout
    while True:
        error: Exception | None = None
        try:
            value = check()
        except retry_on as exc:
            value, error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            message = f"not within {timeout:g}s: {what}"
            if error is not None:
                message += f" (last error: {error!r})"
            if details is not None:
                message += f"\n{details()}"
            raise AssertionError(message)
        time.sleep(interval)


class Clock:
    """A clock that moves only when the test says: by `advance()`, or by `step` at every reading."""

    def __init__(self, start: datetime = T0, *, step: timedelta = timedelta(0)) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        self.now += self.step
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def monotonic(self) -> float:
        """This clock in seconds, for what reads `time.monotonic()` (circuit breakers)."""
        return self.now.timestamp()


def sample_notification(*alerts: Mapping[str, Any]) -> dict[str, Any]:
    """The sample notification (tests/data/alertmanager_firing.json) carrying `alerts` in place of its own.

    Each alert is the sample's first with the given `labels` and `annotations` laid over the sample's,
    and any other field given (fingerprint, status, endsAt, ...) in place of the sample's. No alerts:
    the sample's first alone.
    """
    payload = load_payload("alertmanager_firing.json")
    template = payload["alerts"][0]
    payload["alerts"] = [
        {
            **template,
            **alert,
            "labels": {**template["labels"], **alert.get("labels", {})},
            "annotations": {**template["annotations"], **alert.get("annotations", {})},
        }
        for alert in alerts or [{}]
    ]
    return payload


def post_alerts(client: httpx.Client, *alerts: Mapping[str, Any]) -> list[int]:
    """Post the sample notification carrying `alerts` (see sample_notification) to the webhook; the incident ids."""
    response = client.post(WEBHOOK, json=sample_notification(*alerts), headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    return response.json()["incident_ids"]  # type: ignore[no-any-return]


def post_alert(client: httpx.Client, **labels: str) -> list[int]:
    """Post one alert with `labels` over the sample's, its fingerprint made of them; the incident ids."""
    fingerprint = "fp-" + "-".join(f"{k}{v}" for k, v in sorted(labels.items()))
    return post_alerts(client, {"labels": labels, "fingerprint": fingerprint})
