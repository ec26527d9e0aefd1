"""Owns how a silence the control plane created is shown: on the console's incident page and in postmortems."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class SilenceOut(BaseModel):
    silence_id: str
    matchers: dict[str, Any]
    created_by: str
    created_at: datetime
    ends_at: datetime
    expired_at: datetime | None
