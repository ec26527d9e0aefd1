"""Owns the resilience primitives actions run under: circuit breakers per target and retry policies."""

from controlplane.resilience.circuit_breaker import (
    STATE_VALUE,
    BreakerSettings,
    BreakerSnapshot,
    CircuitBreaker,
    CircuitBreakers,
    CircuitOpenError,
    State,
    StateListener,
)
from controlplane.resilience.retry import is_retriable, retrying

__all__ = [
    "STATE_VALUE",
    "BreakerSettings",
    "BreakerSnapshot",
    "CircuitBreaker",
    "CircuitBreakers",
    "CircuitOpenError",
    "State",
    "StateListener",
    "is_retriable",
    "retrying",
]
