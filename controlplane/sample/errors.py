"""Owns the sample service's domain errors: what it refuses, and the HTTP status the admin API answers for each."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class SampleError(Exception):
    """A request the service refuses; `status_code` is what the admin API answers."""

    status_code = 400

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.detail = detail


class UnknownGraph(SampleError):
    status_code = 404


class UnknownTool(SampleError):
    status_code = 404


class Refused(SampleError):
    """The request conflicts with the service's state or a bound the caller sent (409)."""

    status_code = 409


def unknown(kind: str, name: str, known: Iterable[str]) -> str:
    """The message naming what does not exist and what does, e.g. "no graph named 'x' (graphs: a, b)"."""
    return f"no {kind} named {name!r} ({kind}s: {', '.join(known)})"
