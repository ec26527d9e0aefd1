"""Owns the console's form bodies and their CSRF check: a per-session token in a hidden field or an htmx header.

The cookie is SameSite=Lax, which already keeps it off cross-site POSTs in current browsers;
the token is the second lock, for older browsers and for same-site attackers (another app on
a sibling subdomain). The login form has a token too (the session exists before login), so a
foreign page cannot log a victim into the attacker's account.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qsl

from fastapi import Request

from controlplane.errors import Forbidden, InvalidInput
from controlplane.text import NUL, NUL_REFUSED, printable
from controlplane.web.auth import Session

FIELD = "csrf_token"
HEADER = "x-csrf-token"


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form body, bounded in size; no multipart (the console never uploads files)."""
    if request.method != "POST":
        return {}
    body = await request.body()  # bounded by the app's max_body_size while it streams (413 past it)
    if not body:
        return {}
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise InvalidInput("send the form as application/x-www-form-urlencoded")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=64)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"unreadable form: {exc}") from None
    return dict(pairs)


async def read_text_form(request: Request) -> dict[str, str]:
    """`read_form`, refusing a NUL in any field (422): notes, reasons and comments end up in the database."""
    form = await read_form(request)
    for name, value in form.items():
        if NUL in name or NUL in value:
            raise InvalidInput(f"{printable(name)}: {NUL_REFUSED}")
    return form


def check(session: Session, request: Request, form: dict[str, str]) -> None:
    """Raise Forbidden unless the request carries this session's token (header or form field)."""
    given = request.headers.get(HEADER) or form.get(FIELD, "")
    if not given or not hmac.compare_digest(given.encode(), session.csrf.encode()):
        raise Forbidden("the form's security token is missing or out of date: reload the page and try again")
