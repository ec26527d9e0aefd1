"""Owns the service's settings: the only module that reads the environment."""

from __future__ import annotations

import os
import re
import socket
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from controlplane.defaults import RULES_DIR as DEFAULT_RULES_DIR

ENV_PREFIX = "CONTROLPLANE_"
_ALLOWED_HOST = re.compile(r"(?:[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")
_PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "token", "password", "example"}


class SettingsError(Exception):
    """Settings could not be loaded; the message says which and why."""


def http_url(value: str) -> str:
    """An absolute http(s) URL to build links on (`https://controlplane.example.com`, maybe with a path), without
    its trailing slash. Raises ValueError for anything else: a link built on `controlplane.example.com` or on
    a URL with a query would not open, and nobody would notice until on-call clicks it."""
    url = value.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = urlsplit("")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{value!r} is not an http(s) URL such as https://controlplane.example.com")
    return url.rstrip("/")


ConsoleRole = Literal["viewer", "operator", "admin"]
NotifyRoute = Literal["pagerduty", "slack", "log"]
_DEFAULT_NOTIFY_ROUTES: dict[str, NotifyRoute] = {"critical": "pagerduty", "warning": "slack", "*": "log"}


class ConsoleUser(BaseModel):
    """One console login. The hash comes from `controlplane hash-password` (argon2id); never the password."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=128, pattern=r"^[^\s:]+$")
    role: ConsoleRole = "viewer"
    password_hash: SecretStr
    # Their Slack member ID (U…/W…, "Copy member ID" in Slack): Approve/Reject clicked in Slack count as theirs.
    slack_user: str | None = None

    @field_validator("password_hash")
    @classmethod
    def _argon2(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("$argon2"):
            raise ValueError("password_hash must be an argon2 hash: make one with `controlplane hash-password`")
        return value

    @field_validator("slack_user")
    @classmethod
    def _slack_member_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[UW][A-Z0-9]{2,30}", value):
            raise ValueError(
                f"slack_user {value!r} is not a Slack member ID: use one like U0123ABCD (Slack profile, Copy member ID)"
            )
        return value


class Settings(BaseSettings):
    """Every knob of the service. Environment: CONTROLPLANE_<FIELD> (upper case)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    environment: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///./controlplane.db"
    # Alertmanager's http_config sends this as `Authorization: Bearer <token>`,
    # or as the password of basic auth. Unset means the webhook is open (development only).
    webhook_token: SecretStr | None = None
    webhook_token_file: Path | None = None
    # Unset: the default rules shipped in the package (with its dashboards/ and alerting/ beside them).
    rules_dir: Path = DEFAULT_RULES_DIR
    prometheus_url: str = "http://127.0.0.1:9090"
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8080, ge=1, le=65535)
    # Client connections (controlplane.connections). The cap keeps open sockets well below a 1024
    # file-descriptor limit, leaving room for the database pool, target calls and log files; a
    # connection over it is answered 503 (Alertmanager retries). A connection that has not sent a
    # whole request head within the header timeout, or whose body stalls that long, is closed.
    max_connections: int = Field(default=256, ge=1, le=65536)
    request_header_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    request_body_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    public_url: str | None = None
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    # A comma-separated list in the environment: CONTROLPLANE_INCIDENT_GROUP_BY=alertname,namespace
    incident_group_by: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["alertname", "namespace"], min_length=1
    )
    # How long a webhook waits for its alerts to be committed before answering 503
    # (Alertmanager retries 5xx, and ingest is idempotent, so a late commit is harmless).
    ingest_timeout_seconds: float = Field(default=5.0, gt=0)
    ingest_max_batch: int = Field(default=256, ge=1)
    # Playbook execution.
    instance_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", min_length=1)
    worker_lease_seconds: float = Field(default=30.0, ge=1)  # a claim not heartbeated this long is taken over
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    # Executions in flight per replica: a pool sized for I/O, since steps mostly wait on the network
    # (a waiting `verify.*` step holds no thread). The database pool grows with it (services.py).
    worker_threads: int = Field(default=32, ge=1, le=256)
    max_claims: int = Field(default=3, ge=1)  # an execution whose worker died this often is failed
    metric_rule_interval_seconds: float = Field(default=30.0, gt=0)
    # How often each replica looks for pages to send (a failure on this replica sends at once).
    pager_poll_seconds: float = Field(default=1.0, gt=0)
    # How often the leader settles the ledger's outcomes (resolved / not_resolved, playbooks/ledger.py).
    ledger_interval_seconds: float = Field(default=30.0, gt=0)
    # Hosts http.request and notify.webhook may call: `host` (any port) or `host:port`; empty: none.
    http_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Bearer tokens of the JSON API: the admin token may change things (reload rules, approve, pause) and
    # read; the read token may only read. A logged-in console session may read too. With neither token
    # set in development, the read API is open (a warning says so at start-up).
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = None
    read_token: SecretStr | None = None
    read_token_file: Path | None = None
    # Bearer token of POST /api/v1/endpoints/heartbeat, held by the endpoints that send heartbeats: it may
    # send heartbeats and nothing else (the admin token is accepted too). With neither set in development,
    # heartbeats are accepted without one; in production the route then refuses every heartbeat (403).
    heartbeat_token: SecretStr | None = None
    heartbeat_token_file: Path | None = None
    # Kubernetes API for k8s.* actions and kubernetes targets: in-cluster config, a kubeconfig,
    # or an explicit API URL (+ token file), which is also how tests point at a stand-in.
    kube_config: Literal["auto", "in-cluster", "kubeconfig"] = "auto"
    kube_api_url: str | None = None
    kube_token_file: Path | None = None
    # Paging. Tokens come from files or the environment, never from rule files.
    slack_token: SecretStr | None = None
    slack_token_file: Path | None = None
    slack_channel: str = "#oncall"
    # Verifies Slack's interactive requests (Approve/Reject buttons): the app's "Signing Secret".
    slack_signing_secret: SecretStr | None = None
    slack_signing_secret_file: Path | None = None
    slack_api_url: str = "https://slack.com/api/"
    pagerduty_routing_key: SecretStr | None = None
    pagerduty_routing_key_file: Path | None = None
    pagerduty_url: str = "https://events.pagerduty.com"
    # Severity routing (seed 002): where notify.oncall sends, by incident severity.
    notify_routes: dict[str, NotifyRoute] = Field(default_factory=lambda: _DEFAULT_NOTIFY_ROUTES.copy())
    alertmanager_url: str = "http://127.0.0.1:9093"
    # Web console. Users come from this list (JSON in the environment) or a YAML/JSON file, or a
    # trusted auth proxy names the user in a header (the proxy must drop that header from clients).
    console_users: list[ConsoleUser] = Field(default_factory=list)
    console_users_file: Path | None = None
    console_auth_header: str | None = None  # e.g. X-Forwarded-User
    console_role_header: str | None = None  # e.g. X-Forwarded-Role; else the user's configured role, else the default
    console_default_role: ConsoleRole = "viewer"
    console_refresh_seconds: float = Field(default=5.0, gt=0)  # how often open pages poll for changes
    # Login attempts per user name and client address (4x this per user name from any address) ...
    console_login_max_failures: int = Field(default=5, ge=1)
    console_login_window_seconds: float = Field(default=300.0, gt=0)  # ... in a window of this length
    # Signs the console's session cookie; unset in development: a random one per process.
    session_secret: SecretStr | None = None
    session_secret_file: Path | None = None
    session_max_age_seconds: int = Field(default=12 * 3600, ge=60)
    # Proxies (IP addresses or networks, "*" for any) whose X-Forwarded-Proto and X-Forwarded-For are
    # believed: the console's cookie is Secure behind an HTTPS proxy, and logins are throttled per real client.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    # Retention (controlplane/retention/): the leader deletes resolved incidents with their alerts, audit
    # rows, executions and steps this long after they resolved; a storm's suppressed executions and the
    # alerts' audit rows sooner. Never what an open incident, a running execution or a guard still needs.
    retention_enabled: bool = True
    retention_incident_days: float = Field(default=90.0, ge=1)
    retention_suppressed_days: float = Field(default=14.0, ge=1)
    retention_alert_audit_days: float = Field(default=30.0, ge=1)
    retention_interval_seconds: float = Field(default=600.0, gt=0)
    # Rows of one kind (executions, alerts, audit rows) per transaction; an execution's children go with it.
    retention_batch_rows: int = Field(default=500, ge=1, le=10_000)
    # Set: what retention deletes is first appended to DIR/controlplane-archive-YYYY-MM-DD.jsonl.gz.
    archive_dir: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    @field_validator("incident_group_by", "http_allowed_hosts", "forwarded_allow_ips", mode="before")
    @classmethod
    def _split_labels(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else http_url(value)

    @field_validator("http_allowed_hosts")
    @classmethod
    def _host_or_host_port(cls, value: list[str]) -> list[str]:
        for entry in value:
            match = _ALLOWED_HOST.fullmatch(entry)
            if match is None or not 0 < int(match["port"] or 1) < 65536:
                raise ValueError(f"{entry!r} is not `host` or `host:port` (an IPv6 address in brackets)")
        return [entry.lower() for entry in value]

    @model_validator(mode="after")
    def _resolve_secret_files(self) -> Settings:
        for secret in _SECRETS:
            path: Path | None = getattr(self, f"{secret}_file")
            if path is None:
                continue
            if getattr(self, secret) is not None:
                raise ValueError(f"set {secret} or {secret}_file, not both")
            try:
                value = path.read_text().strip()
            except OSError as exc:
                raise ValueError(f"{secret}_file {path}: {exc.strerror}") from exc
            if not value:
                raise ValueError(f"{secret}_file {path} is empty")
            setattr(self, secret, SecretStr(value))
        return self

    @model_validator(mode="after")
    def _strong_tokens_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        if self.webhook_token is None:
            raise ValueError("webhook_token (or webhook_token_file) is required in production")
        for name in ("webhook_token", "admin_token", "read_token", "heartbeat_token", "slack_signing_secret"):
            _refuse_weak(name, getattr(self, name))
        password = urlsplit(self.database_url).password
        if password is not None and unquote(password).lower() in _PLACEHOLDER_SECRETS:
            # The Secret template's URL, applied unedited: say so instead of failing to connect.
            raise ValueError("database_url: the password looks like a placeholder: use the database user's real one")
        return self

    @model_validator(mode="after")
    def _resolve_console(self) -> Settings:
        path = self.console_users_file
        if path is not None:
            if self.console_users:
                raise ValueError("set console_users or console_users_file, not both")
            try:
                doc = yaml.safe_load(path.read_text())  # JSON is YAML too
            except OSError as exc:
                raise ValueError(f"console_users_file {path}: {exc.strerror}") from exc
            except yaml.YAMLError as exc:
                raise ValueError(f"console_users_file {path}: not YAML or JSON ({exc})") from None
            users = doc.get("users") if isinstance(doc, dict) else doc
            try:
                self.console_users = TypeAdapter(list[ConsoleUser]).validate_python(users or [])
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"console_users_file {path}: users.{where}: {first['msg']}") from None
        names = [user.name for user in self.console_users]
        if len(set(names)) != len(names):
            raise ValueError("console_users: user names must be unique")
        linked = [user.slack_user for user in self.console_users if user.slack_user]
        if len(set(linked)) != len(linked):  # a click must count as one person, and the same one every time
            raise ValueError("console_users: each slack_user may belong to one user only")
        if self.environment != "production":
            return self
        if self.session_secret is None and not self.is_sqlite:
            # Several replicas can share this database; each would sign cookies with its own random
            # secret, and a user would be logged out whenever a request reached another replica.
            raise ValueError(
                "session_secret (or session_secret_file) is required in production on PostgreSQL: replicas share"
                " the database, and a random secret per replica logs users out at every request that reaches another"
            )
        if self.session_secret is None and (self.console_users or self.console_auth_header):
            raise ValueError("session_secret (or session_secret_file) is required in production for the console")
        # A guessable secret lets anyone forge an admin session cookie.
        _refuse_weak("session_secret", self.session_secret)
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


# Secrets that may come from a file instead: <name>_file holds the value (surrounding whitespace dropped).
_SECRETS = (
    "webhook_token",
    "admin_token",
    "read_token",
    "heartbeat_token",
    "slack_token",
    "slack_signing_secret",
    "pagerduty_routing_key",
    "session_secret",
)
MIN_SECRET_LENGTH = 32


def _refuse_weak(name: str, secret: SecretStr | None) -> None:
    """Production refuses a secret someone could guess: short, a placeholder word, or one character repeated."""
    if secret is None:
        return
    value = secret.get_secret_value().strip()
    if value.lower() in _PLACEHOLDER_SECRETS or len(value) < MIN_SECRET_LENGTH or len(set(value)) == 1:
        raise ValueError(
            f"{name} looks like a placeholder: use at least {MIN_SECRET_LENGTH} random characters"
            " (e.g. `openssl rand -hex 32`)"
        )


def _unknown_env_keys() -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    return sorted(key for key in os.environ if key.startswith(ENV_PREFIX) and key not in known)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus overrides; raise SettingsError with a readable message."""
    unknown = _unknown_env_keys()
    if unknown:
        raise SettingsError(f"unknown setting(s) in the environment: {', '.join(unknown)}")
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SourceError as exc:
        raise SettingsError(f"invalid settings: {exc}") from None
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            lines.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}" if err["loc"] else err["msg"])
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
