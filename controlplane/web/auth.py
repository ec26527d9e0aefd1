"""Owns who may use the console: users and roles, password checks, sessions, login throttling.

Users come from settings (`console_users` or `console_users_file`) with argon2 hashes. Make a
hash with `controlplane hash-password`, or without the CLI:

    python -c 'import getpass, argon2; print(argon2.PasswordHasher().hash(getpass.getpass()))'

Or a trusted auth proxy names the user in `console_auth_header` (and the role in
`console_role_header`); the proxy must drop those headers from what clients send.

The cookie is signed with `session_secret` (itsdangerous) and holds the CSRF token, and once
logged in a random session id. The database holds a digest of that id with the user, the
fingerprint of the password hash and the expiry: logout deletes the row, so a copied cookie
dies with the session on every replica, and a changed password ends the user's sessions.
Sessions before login stay in the cookie only, so strangers cannot fill the table.

Logins are counted in the database before the password is checked, in one atomic statement
per key, so the throttle holds across threads, processes and (on PostgreSQL) replicas.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import get_args

from argon2 import Parameters, PasswordHasher, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import Column, ColumnElement, Connection, Engine, case, delete, select
from starlette.requests import Request

from controlplane.config import ConsoleRole, ConsoleUser, Settings
from controlplane.db.tables import console_sessions_t, dialect_insert, login_attempts_t
from controlplane.errors import Unavailable

ROLES: tuple[ConsoleRole, ...] = get_args(ConsoleRole)
_RANK = {role: rank for rank, role in enumerate(ROLES)}
COOKIE = "cp_session"

# At most this many argon2 checks at once: each takes the hash's memory_cost (64 MiB with
# argon2-cffi's defaults), and the deployment's limit is 512 MiB. A login that finds no slot
# free within the wait is told to retry (503) rather than queueing without bound.
CHECK_SLOTS = 2
CHECK_SLOT_WAIT_SECONDS = 2.0
BUSY_RETRY_AFTER_SECONDS = 1


def hash_password(password: str) -> str:
    """An argon2id hash for `console_users` (argon2-cffi's recommended parameters)."""
    return PasswordHasher().hash(password)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def _prune(conn: Connection, key: Column[str], ended: ColumnElement[bool]) -> None:
    """Delete the rows whose time is over, skipping rows another transaction holds (PostgreSQL): a prune
    never waits, so it cannot deadlock with logins that lock their own rows. The next prune takes them."""
    doomed = select(key).where(ended).with_for_update(skip_locked=True)
    conn.execute(delete(key.table).where(key.in_(doomed)))


@dataclass(frozen=True)
class User:
    name: str
    role: ConsoleRole

    def can(self, role: ConsoleRole) -> bool:
        """Roles are ordered viewer < operator < admin; a higher role may do what a lower one may."""
        return _RANK[self.role] >= _RANK[role]

    @property
    def actor(self) -> str:
        """Who did it, in the audit trail."""
        return f"user:{self.name}"


@dataclass(frozen=True)
class Session:
    """What the cookie holds: a CSRF token always (also before login), the session id once logged in."""

    csrf: str
    sid: str | None = None  # the database holds its digest (console_sessions.id_hash)

    @classmethod
    def fresh(cls) -> Session:
        return cls(csrf=secrets.token_urlsafe(32))


def _fingerprint(user: ConsoleUser) -> str:
    return hashlib.sha256(user.password_hash.get_secret_value().encode()).hexdigest()[:16]


def _dummy_hasher(users: list[ConsoleUser]) -> PasswordHasher:
    """A hasher with the parameters most users' hashes have, so checking a name nobody has costs the same."""
    found: list[Parameters] = []
    for user in users:
        try:
            found.append(extract_parameters(user.password_hash.get_secret_value()))
        except InvalidHashError:
            continue
    if not found:
        return PasswordHasher()
    return PasswordHasher.from_parameters(max(found, key=found.count))


class Authenticator:
    """Checks passwords and reads and writes sessions, against the users configured at start-up."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.users = {user.name: user for user in settings.console_users}
        self.engine = engine
        secret = settings.session_secret.get_secret_value() if settings.session_secret else secrets.token_urlsafe(48)
        self._serializer = URLSafeTimedSerializer(secret, salt="controlplane.console.session")
        self.max_age = settings.session_max_age_seconds
        self.auth_header = settings.console_auth_header
        self.role_header = settings.console_role_header
        self.default_role = settings.console_default_role
        self._hasher = PasswordHasher()
        self._slots = threading.BoundedSemaphore(CHECK_SLOTS)
        # Verified against for unknown users, so a wrong name costs as long as a wrong password.
        # Without users there is no name to give away, and nothing to make at start-up.
        self._dummy_hash = _dummy_hasher(settings.console_users).hash("unused") if self.users else None

    @property
    def enabled(self) -> bool:
        return bool(self.users or self.auth_header)

    def check_password(self, name: str, password: str) -> User | None:
        """The user when the password is theirs. Raises Unavailable when no check slot frees up in time."""
        user = self.users.get(name)
        stored = user.password_hash.get_secret_value() if user else self._dummy_hash
        if stored is None:
            return None
        if not self._slots.acquire(timeout=CHECK_SLOT_WAIT_SECONDS):
            raise Unavailable("too many logins are being checked right now: try again in a moment")
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        finally:
            self._slots.release()
        return User(user.name, user.role) if user else None

    def login(self, conn: Connection, *, user: User, now: datetime) -> Session:
        """A new session for `user`, stored; with a new CSRF token (a token seen before login is not reused)."""
        # Expired sessions are pruned here: only logins (which are throttled) add rows.
        _prune(conn, console_sessions_t.c.id_hash, console_sessions_t.c.expires_at <= now)
        sid = secrets.token_urlsafe(32)
        conn.execute(
            console_sessions_t.insert().values(
                id_hash=_digest(sid),
                user_name=user.name,
                password_fingerprint=_fingerprint(self.users[user.name]),
                created_at=now,
                expires_at=now + timedelta(seconds=self.max_age),
            )
        )
        return Session(csrf=secrets.token_urlsafe(32), sid=sid)

    def logout(self, conn: Connection, *, session: Session) -> None:
        """End the session on every replica: a copy of its cookie logs no one in any more."""
        if session.sid is not None:
            conn.execute(delete(console_sessions_t).where(console_sessions_t.c.id_hash == _digest(session.sid)))

    def encode(self, session: Session) -> str:
        return self._serializer.dumps({"c": session.csrf, "s": session.sid})

    def decode(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age)
        except BadSignature:  # also SignatureExpired
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        sid = data.get("s")
        return Session(csrf=data["c"], sid=sid if isinstance(sid, str) else None)

    def proxy_user(self, headers: Mapping[str, str]) -> User | None:
        """The user the trusted auth proxy names, when one is configured and the header is present."""
        if not self.auth_header or not (name := headers.get(self.auth_header.lower(), "").strip()):
            return None
        configured = self.users.get(name)
        given = headers.get(self.role_header.lower(), "").strip().lower() if self.role_header else ""
        role: ConsoleRole = given if given in _RANK else configured.role if configured else self.default_role
        return User(name, role)

    def session_user(self, session: Session, *, now: datetime) -> User | None:
        """The user of a live session: one lookup by primary key; None when logged out, expired or re-passworded."""
        if session.sid is None:
            return None
        query = select(console_sessions_t.c.user_name, console_sessions_t.c.password_fingerprint).where(
            console_sessions_t.c.id_hash == _digest(session.sid), console_sessions_t.c.expires_at > now
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        user = self.users.get(row.user_name) if row else None
        if row is None or user is None or row.password_fingerprint != _fingerprint(user):
            return None  # ended, expired, the user removed, or the password changed since this session began
        return User(user.name, user.role)


def console_user(request: Request) -> User | None:
    """The console user a request carries (the trusted auth proxy's header, or a live session cookie).

    For the JSON API, which accepts a console session as a read credential. A session is no
    proof of intent: anything that changes state must also check the CSRF token (web/csrf.py).
    """
    console = getattr(request.app.state, "console", None)
    if console is None:
        return None
    auth: Authenticator = console.auth
    session = auth.decode(request.cookies.get(COOKIE))
    proxied = auth.proxy_user(request.headers)
    return proxied or (auth.session_user(session, now=datetime.now(UTC)) if session is not None else None)


class LoginThrottle:
    """Login attempts per (user name, client address), and per user name from any address, in the database.

    Each attempt is counted before its password is checked, by one upsert per key that returns
    the new count, so concurrent attempts cannot all slip under the limit: the row lock
    (PostgreSQL) or the write lock (SQLite) orders them. The name-only key allows
    `PER_NAME_FACTOR` times as many attempts and counts only those the address key let through,
    so rotating addresses buys little and one noisy address cannot lock the user out. A window
    starts with a key's first attempt and lasts `window_seconds`; a successful login clears
    its keys; rows of ended windows are pruned, so the table stays bounded.
    """

    PER_NAME_FACTOR = 4
    _PRUNE_EVERY = timedelta(seconds=60)

    def __init__(self, max_failures: int, window_seconds: float) -> None:
        self.max_failures = max_failures
        self.window = timedelta(seconds=window_seconds)
        self._next_prune: datetime | None = None

    @staticmethod
    def _keys(name: str, address: str) -> tuple[str, str]:
        name = name.lower()
        return _digest(f"{name}\x00{address}"), _digest(name)

    def attempt(self, conn: Connection, *, name: str, address: str, now: datetime) -> int | None:
        """Count one attempt (run it in a write transaction). Seconds to wait when over the limit: the
        password must then not be checked. None when it may be checked."""
        by_address, by_name = self._keys(name, address)
        wait = self._count(conn, by_address, self.max_failures, now)
        if wait is None:
            wait = self._count(conn, by_name, self.max_failures * self.PER_NAME_FACTOR, now)
        if self._next_prune is None or now >= self._next_prune:
            self._next_prune = now + self._PRUNE_EVERY
            _prune(conn, login_attempts_t.c.key, login_attempts_t.c.window_start <= now - self.window)
        return wait

    def succeeded(self, conn: Connection, *, name: str, address: str) -> None:
        for key in self._keys(name, address):  # one at a time, in the order `attempt` locks them: no deadlock
            conn.execute(delete(login_attempts_t).where(login_attempts_t.c.key == key))

    def _count(self, conn: Connection, key: str, limit: int, now: datetime) -> int | None:
        ended = login_attempts_t.c.window_start <= now - self.window
        stmt = dialect_insert(conn, login_attempts_t).values(key=key, window_start=now, attempts=1)
        stmt = stmt.on_conflict_do_update(
            index_elements=["key"],
            set_={
                "attempts": case((ended, 1), else_=login_attempts_t.c.attempts + 1),
                "window_start": case((ended, stmt.excluded.window_start), else_=login_attempts_t.c.window_start),
            },
        ).returning(login_attempts_t.c.attempts, login_attempts_t.c.window_start)
        attempts, window_start = conn.execute(stmt).one()
        if attempts <= limit:
            return None
        return max(1, math.ceil((window_start + self.window - now).total_seconds()))
