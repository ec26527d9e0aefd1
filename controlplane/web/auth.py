"""Owns who may use the console: users and roles, password checks, the signed session, login throttling.

Users come from settings (`console_users` or `console_users_file`) with argon2 hashes. Make a
hash with `controlplane hash-password`, or without the CLI:

    python -c 'import getpass, argon2; print(argon2.PasswordHasher().hash(getpass.getpass()))'

Or a trusted auth proxy names the user in `console_auth_header` (and the role in
`console_role_header`); the proxy must drop those headers from what clients send.

The session is a cookie signed with `session_secret` (itsdangerous), so any replica can read
it and nothing is stored server-side; the price is that logout only clears the cookie: a
stolen cookie stays valid until it expires (`session_max_age_seconds`) or the user's password
changes (the session carries a fingerprint of the hash it was made with).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import get_args

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request

from controlplane.config import ConsoleRole, ConsoleUser, Settings

ROLES: tuple[ConsoleRole, ...] = get_args(ConsoleRole)
_RANK = {role: rank for rank, role in enumerate(ROLES)}
COOKIE = "cp_session"


def hash_password(password: str) -> str:
    """An argon2id hash for `console_users` (argon2-cffi's recommended parameters)."""
    return PasswordHasher().hash(password)


@dataclass(frozen=True)
class User:
    name: str
    role: ConsoleRole

    def can(self, role: ConsoleRole) -> bool:
        """Roles are ordered viewer < operator < admin; a higher role may do what a lower one may."""
        return _RANK[self.role] >= _RANK[role]


@dataclass(frozen=True)
class Session:
    """What the cookie holds: a CSRF token always (also before login), the user once logged in."""

    csrf: str
    user: str | None = None
    pw: str | None = None  # fingerprint of the password hash the user logged in with

    @classmethod
    def fresh(cls) -> Session:
        return cls(csrf=secrets.token_urlsafe(32))


def _fingerprint(user: ConsoleUser) -> str:
    return hashlib.sha256(user.password_hash.get_secret_value().encode()).hexdigest()[:16]


class Authenticator:
    """Checks passwords and reads and writes sessions, against the users configured at start-up."""

    def __init__(self, settings: Settings) -> None:
        self.users = {user.name: user for user in settings.console_users}
        secret = settings.session_secret.get_secret_value() if settings.session_secret else secrets.token_urlsafe(48)
        self._serializer = URLSafeTimedSerializer(secret, salt="controlplane.console.session")
        self.max_age = settings.session_max_age_seconds
        self.auth_header = settings.console_auth_header
        self.role_header = settings.console_role_header
        self.default_role = settings.console_default_role
        self._hasher = PasswordHasher()
        # Verified against for unknown users, so a wrong name costs as long as a wrong password.
        self._dummy_hash = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("unused")

    @property
    def enabled(self) -> bool:
        return bool(self.users or self.auth_header)

    def check_password(self, name: str, password: str) -> User | None:
        user = self.users.get(name)
        stored = user.password_hash.get_secret_value() if user else self._dummy_hash
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        return User(user.name, user.role) if user else None

    def login(self, user: User) -> Session:
        """A new session for `user`, with a new CSRF token (a token seen before login is not reused)."""
        return Session(csrf=secrets.token_urlsafe(32), user=user.name, pw=_fingerprint(self.users[user.name]))

    def encode(self, session: Session) -> str:
        return self._serializer.dumps({"c": session.csrf, "u": session.user, "p": session.pw})

    def decode(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        return Session(csrf=data["c"], user=data.get("u"), pw=data.get("p"))

    def user_of(self, session: Session, headers: Mapping[str, str]) -> User | None:
        """The proxy's user when configured and present, else the session's (if still valid)."""
        if self.auth_header and (name := headers.get(self.auth_header.lower(), "").strip()):
            configured = self.users.get(name)
            given = headers.get(self.role_header.lower(), "").strip().lower() if self.role_header else ""
            role: ConsoleRole = (
                given if given in _RANK else configured.role if configured else self.default_role  # type: ignore[assignment]
            )
            return User(name, role)
        if session.user is None:
            return None
        user = self.users.get(session.user)
        if user is None or session.pw != _fingerprint(user):
            return None  # removed, or the password changed since this session began
        return User(user.name, user.role)

    def logout(self) -> Session:
        """A fresh anonymous session: the old cookie is replaced, its CSRF token dropped."""
        return Session.fresh()


def console_user(request: Request) -> User | None:
    """The console user a request is logged in as (session cookie or auth proxy), e.g. for the JSON API."""
    console = getattr(request.app.state, "console", None)
    if console is None:
        return None
    auth: Authenticator = console.auth
    session = auth.decode(request.cookies.get(COOKIE))
    return auth.user_of(session or Session.fresh(), request.headers)


class LoginThrottle:
    """Failed logins per (user, client address) in a sliding window.

    In memory: each replica counts its own failures, so N replicas allow N times the attempts
    (every failure is still in the audit trail as `console.login_failed`). Bounded: stale keys
    are dropped when the table grows.
    """

    _MAX_KEYS = 10_000

    def __init__(self, max_failures: int, window_seconds: float) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: tuple[str, str], now: float | None = None) -> float | None:
        """Seconds until `key` may try again, or None when it may try now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._failures.get(key)
            if not times:
                return None
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) < self.max_failures:
                return None
            return times[0] + self.window - now

    def failed(self, key: tuple[str, str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if len(self._failures) >= self._MAX_KEYS:
                self._failures = {k: v for k, v in self._failures.items() if v and v[-1] > now - self.window}
            self._failures.setdefault(key, deque(maxlen=self.max_failures)).append(now)

    def succeeded(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures.pop(key, None)
