"""Owns the errors modules share: domain errors, which `controlplane.api.errors` alone maps to HTTP, and ActionError."""

from __future__ import annotations

from typing import Any


class ActionError(Exception):
    """A step failed. `retriable` errors (timeouts, connection errors, 5xx) are retried by the step's policy.

    Raised by actions and by the integration clients they call (kubernetes, admin API, http),
    which is why it lives here: integrations/ must not import actions/.
    """

    def __init__(self, message: str, *, retriable: bool = False, output: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.output = output or {}


class ElsewhereError(ActionError):
    """A system the step reads besides its target failed (k8s.scale's capacity queries to Prometheus).

    Retried by the step's policy like any retriable error, but not counted against the target's
    circuit: a Prometheus outage must not open the circuit of a Kubernetes workload.
    """


class BlastRadiusExceeded(ActionError):
    """The call would act more widely than its bounds allow (ours, or the target's own check); never retried."""


class DomainError(Exception):
    """Base of errors a caller can act on; `message` is safe to show to the client."""

    def __init__(self, message: str, details: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class MalformedInput(DomainError):
    """The input cannot even be read (empty, not JSON)."""


class InvalidInput(DomainError):
    """The input is readable but not what the endpoint accepts."""


class PayloadTooLarge(DomainError):
    """The body is over the configured limit."""


class UnsupportedMediaType(DomainError):
    """The body is not of the content type the endpoint reads."""


class Unauthorized(DomainError):
    """Missing or wrong credentials."""


class Forbidden(DomainError):
    """Authenticated (or not), but not allowed to do this."""


class Conflict(DomainError):
    """The object is not in a state that allows this (e.g. approving a finished execution)."""


class NotFound(DomainError):
    """The requested object does not exist."""


def missing(kind: str, number: int) -> NotFound:
    """An incident or execution that is not there. Retention deletes old ones, so an old link (Slack, a
    postmortem) says so rather than leave on-call wondering whether the service lost it."""
    return NotFound(f"{kind} {number} not found: it never existed, or retention deleted it after its time")


class Unavailable(DomainError):
    """A dependency (the database) cannot serve now; the client should retry."""
