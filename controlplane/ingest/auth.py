"""Owns webhook authentication as Alertmanager's http_config sends it (bearer token or basic auth)."""

from __future__ import annotations

import base64
import binascii
import hmac

from pydantic import SecretStr

from controlplane.errors import Unauthorized


def check_webhook_credentials(authorization: str | None, token: SecretStr | None) -> None:
    """Accept `Bearer <token>` or basic auth whose password is the token; no token configured = open."""
    if token is None:
        return
    expected = token.get_secret_value().encode()
    if not authorization:
        raise Unauthorized("missing Authorization header: send the webhook token as Bearer or basic auth")
    scheme, _, credentials = authorization.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        given = credentials.strip().encode()
    elif scheme == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise Unauthorized("malformed basic credentials") from None
        given = decoded.partition(b":")[2]
    else:
        raise Unauthorized(f"unsupported authorization scheme {scheme!r}: use Bearer or Basic")
    if not hmac.compare_digest(given, expected):
        raise Unauthorized("invalid webhook credentials")
