"""Owns logging in to and out of the console: the throttle, the password check, the audit trail and the session.

No HTTP here: the routes turn the outcome into the login page, a redirect and the cookie.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from sqlalchemy import Engine

from controlplane.audit import audit
from controlplane.db.engine import write_transaction
from controlplane.errors import Unavailable
from controlplane.web.auth import Authenticator, LoginThrottle, Session, User

log = structlog.get_logger("controlplane.console")


@dataclass(frozen=True)
class LoginOutcome:
    """A logged-in `user` with their new `session`; or no user: throttled (`retry_after` seconds) or refused."""

    user: User | None = None
    session: Session | None = None
    retry_after: int | None = None


def log_in(
    *,
    engine: Engine,
    auth: Authenticator,
    throttle: LoginThrottle,
    name: str,
    password: str,
    address: str,
    clock: Callable[[], datetime],
) -> LoginOutcome:
    """One login attempt. Raises Unavailable when no password check frees up in time (not counted as refused).

    `clock` is read when the attempt is counted and again when it is recorded: the check between
    may wait for a slot, and the session's expiry counts from when it is made.
    """
    # Counted (and committed) before the password is checked: concurrent guesses each see the others.
    with write_transaction(engine) as conn:
        wait = throttle.attempt(conn, name=name, address=address, now=clock())
    if wait is not None:
        # Not audited: under a guessing attack that would write a row per request; the log has it.
        log.warning("console.login_throttled", user=name, address=address)
        return LoginOutcome(retry_after=wait)
    try:
        user = auth.check_password(name, password)
    except Unavailable:
        log.warning("console.login_busy", user=name, address=address)
        raise
    session = None
    with write_transaction(engine) as conn:
        now = clock()
        audit(
            conn,
            actor=user.actor if user else "console",
            action="console.login" if user else "console.login_failed",
            incident_id=None,
            detail={"user": name, "address": address},
            now=now,
        )
        if user is not None:
            throttle.succeeded(conn, name=name, address=address)
            session = auth.login(conn, user=user, now=now)
    return LoginOutcome(user=user, session=session)


def log_out(*, engine: Engine, auth: Authenticator, user: User, session: Session, now: datetime) -> None:
    """End `session` on every replica, audited."""
    with write_transaction(engine) as conn:
        audit(conn, actor=user.actor, action="console.logout", incident_id=None, detail={}, now=now)
        auth.logout(conn, session=session)
