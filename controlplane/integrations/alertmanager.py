"""Owns talking to Alertmanager's API v2 about silences: create, read, list and expire.

Facts checked against Alertmanager 0.25 (Debian 12): expiring an already expired silence
answers 200; expiring an unknown id answers 500 with the body "silence not found" (newer
releases answer 404); a silence whose matchers all match the empty string is refused with 400.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

CREATED_BY = "controlplane"


class AlertmanagerError(Exception):
    """A silence call failed. `retriable`: Alertmanager was unreachable or failed; otherwise the request is wrong."""

    def __init__(self, message: str, *, retriable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.status = status


class Matcher(BaseModel):
    """One label matcher, with the wire names of the API."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    name: str
    value: str
    is_regex: bool = Field(default=False, alias="isRegex")
    is_equal: bool = Field(default=True, alias="isEqual")


class SilenceInfo(BaseModel):
    """A silence as Alertmanager reports it."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    id: str
    state: Literal["active", "pending", "expired"]
    matchers: list[Matcher]
    created_by: str = Field(alias="createdBy")
    comment: str = ""
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime = Field(alias="endsAt")

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> SilenceInfo:
        return cls.model_validate({**data, "state": data.get("status", {}).get("state")})


def equality_matchers(labels: dict[str, str]) -> list[Matcher]:
    return [Matcher(name=name, value=value) for name, value in sorted(labels.items())]


class AlertmanagerClient:
    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout

    def create_silence(
        self,
        *,
        matchers: list[Matcher],
        starts_at: datetime,
        ends_at: datetime,
        comment: str,
        created_by: str = CREATED_BY,
    ) -> str:
        """POST /api/v2/silences; returns the new silence's id."""
        body = {
            "matchers": [m.model_dump(by_alias=True) for m in matchers],
            "startsAt": _rfc3339(starts_at),
            "endsAt": _rfc3339(ends_at),
            "createdBy": created_by,
            "comment": comment,
        }
        data = self._request("POST", "/api/v2/silences", json=body).json()
        return str(data["silenceID"])

    def get(self, silence_id: str) -> SilenceInfo:
        return SilenceInfo.from_api(self._request("GET", f"/api/v2/silence/{silence_id}").json())

    def list_silences(self) -> list[SilenceInfo]:
        return [SilenceInfo.from_api(item) for item in self._request("GET", "/api/v2/silences").json()]

    def firing_alerts(self, labels: dict[str, str]) -> list[dict[str, Any]]:
        """GET /api/v2/alerts: the active, unsilenced alerts whose labels equal `labels` (a read only)."""
        params = [("active", "true"), ("silenced", "false"), ("inhibited", "false")]
        params += [("filter", f"{name}={json_string(value)}") for name, value in sorted(labels.items())]
        return list(self._request("GET", "/api/v2/alerts", params=params).json())

    def expire(self, silence_id: str) -> bool:
        """DELETE /api/v2/silence/{id}. False when Alertmanager no longer knows it (it was garbage-collected)."""
        try:
            self._request("DELETE", f"/api/v2/silence/{silence_id}")
        except AlertmanagerError as exc:
            if exc.status == 404 or (exc.status == 500 and "silence not found" in str(exc)):
                return False
            raise
        return True

    def _request(self, method: str, path: str, json: Any = None, params: Any = None) -> httpx.Response:
        url = self.url + path
        try:
            response = httpx.request(
                method, url, json=json, params=params, timeout=self._timeout, follow_redirects=False
            )
        except httpx.TransportError as exc:
            raise AlertmanagerError(f"{method} {url}: {type(exc).__name__}: {exc}", retriable=True) from None
        if response.is_success:
            return response
        status = response.status_code
        raise AlertmanagerError(
            f"{method} {url} answered {status}: {response.text.strip()[:500]}",
            retriable=(status >= 500 and "silence not found" not in response.text) or status == 429,
            status=status,
        )


def json_string(value: str) -> str:
    """A matcher value quoted as Alertmanager's filter syntax reads it (`"..."` with escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _rfc3339(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime given; use timezone-aware UTC")
    return value.isoformat()
