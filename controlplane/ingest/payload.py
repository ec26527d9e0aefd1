"""Owns the Alertmanager webhook payload (version 4) as a validated model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from controlplane.errors import InvalidInput, MalformedInput
from controlplane.text import Text

AlertStatus = Literal["firing", "resolved"]


def _in_utc(value: datetime) -> datetime:
    """The instant in UTC; one outside years 1-9999 there (e.g. 0001-01-01T00:00:00+01:00) is refused."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range: must fall within the years 1 to 9999 in UTC") from None


# RFC 3339 as Alertmanager sends it: an offset is required (a naive time would be guessed as local).
Timestamp = Annotated[AwareDatetime, AfterValidator(_in_utc)]

# What the database stores has limits (controlplane/db/models.py); past them the payload is refused
# here, naming the field, rather than failing its transaction (PostgreSQL) as a 500 retried forever.
MAX_ALERTNAME = 255  # alerts.alertname
MAX_SEVERITY = 32  # incidents.severity
MAX_RECEIVER = 200  # alerts.receiver, and audit_events.actor "alertmanager:<receiver>" (255)


class AlertmanagerAlert(BaseModel):
    """One alert of a notification. Unknown fields are accepted: newer Alertmanagers add some."""

    model_config = ConfigDict(extra="allow", frozen=True)

    status: AlertStatus
    labels: dict[Text, Text] = Field(min_length=1)
    annotations: dict[Text, Text] = Field(default_factory=dict)
    startsAt: Timestamp
    # Firing alerts carry 0001-01-01T00:00:00Z here; normalised to None by `ends_at`.
    endsAt: Timestamp | None = None
    generatorURL: Text = ""
    fingerprint: Text = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _storable_labels(self) -> AlertmanagerAlert:
        for name, limit in (("alertname", MAX_ALERTNAME), ("severity", MAX_SEVERITY)):
            if len(self.labels.get(name, "")) > limit:
                raise ValueError(f"label {name!r} is longer than {limit} characters")
        return self

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def ends_at(self) -> datetime | None:
        if self.endsAt is None or self.endsAt.year <= 1:
            return None
        return self.endsAt


class AlertmanagerNotification(BaseModel):
    """What Alertmanager's webhook_config POSTs: all current alerts of one group."""

    model_config = ConfigDict(extra="allow", frozen=True)

    version: Literal["4"]
    groupKey: str
    truncatedAlerts: int = Field(default=0, ge=0)
    status: AlertStatus
    receiver: Text = Field(max_length=MAX_RECEIVER)
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[AlertmanagerAlert] = Field(min_length=1)


def parse_notification(body: bytes) -> AlertmanagerNotification:
    """Validate a raw webhook body; raise MalformedInput / InvalidInput saying exactly what is wrong."""
    if not body.strip():
        raise MalformedInput("empty body: expected an Alertmanager webhook payload (JSON, version 4)")
    try:
        return AlertmanagerNotification.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        if any(err["type"] == "json_invalid" for err in errors):
            raise MalformedInput(f"body is not valid JSON: {errors[0]['msg']}") from None
        details = [{"field": ".".join(str(p) for p in err["loc"]) or "(body)", "error": err["msg"]} for err in errors]
        version = next((d for d in details if d["field"] == "version"), None)
        if version is not None:
            message = 'unsupported payload version: this endpoint takes Alertmanager webhook payload version "4"'
        else:
            message = "not a valid Alertmanager webhook payload: " + "; ".join(
                f"{d['field']}: {d['error']}" for d in details[:5]
            )
        raise InvalidInput(message, details) from None
