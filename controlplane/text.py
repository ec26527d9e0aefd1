"""Owns the rule all text input shares: no NUL characters, which PostgreSQL can store neither in text nor in jsonb.

Refused at every boundary (the URL, forms, JSON bodies, the webhook payload) with a 4xx that
names the field, instead of failing a query or an insert on PostgreSQL as a 500.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

NUL = "\x00"
NUL_REFUSED = "NUL characters (\\u0000) are not allowed"


def _no_nul(value: str) -> str:
    if NUL in value:
        raise ValueError(NUL_REFUSED)
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


def printable(value: str) -> str:
    """The value with NUL replaced (U+FFFD), for what must still be recorded: a failed login's user name."""
    return value.replace(NUL, "\ufffd")
