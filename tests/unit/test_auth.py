"""Webhook credentials as Alertmanager's http_config sends them."""

from __future__ import annotations

import base64

import pytest
from pydantic import SecretStr

from controlplane.errors import Unauthorized
from controlplane.ingest.auth import check_webhook_credentials

TOKEN = SecretStr("s3cret-token-value-xyz")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "header",
    [
        "Bearer s3cret-token-value-xyz",
        "bearer  s3cret-token-value-xyz ",
        basic("alertmanager", TOKEN.get_secret_value()),
    ],
)
def test_accepted_credentials(header: str) -> None:
    check_webhook_credentials(header, TOKEN)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing Authorization"),
        ("", "missing Authorization"),
        ("Bearer wrong", "invalid webhook credentials"),
        ("Bearer", "invalid webhook credentials"),
        (basic("alertmanager", "wrong"), "invalid webhook credentials"),
        ("Basic !!notbase64!!", "malformed basic"),
        ("Token s3cret-token-value-xyz", "unsupported authorization scheme"),
    ],
)
def test_refused_credentials(header: str | None, message: str) -> None:
    with pytest.raises(Unauthorized, match=message):
        check_webhook_credentials(header, TOKEN)


def test_no_token_configured_means_open() -> None:
    check_webhook_credentials(None, None)
