"""Owns the relational schema: alerts, incidents, executions, guard and rule state, the audit trail."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(sqlite.INTEGER(), "sqlite")
JsonDoc = JSON().with_variant(postgresql.JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def to_sqlite(value: datetime | None) -> str | None:
            """SQLite's DATETIME text as SQLAlchemy writes it (naive UTC, "2026-11-24 08:00:00.123456"), in one
            step: a new alert binds fifteen datetimes, and converting then formatting was a tenth of its time."""
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError("naive datetime given; use timezone-aware UTC")
            return value.astimezone(UTC).isoformat(" ", "microseconds")[:26]

        return to_sqlite

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JsonDoc, dict[str, str]: JsonDoc}


class Alert(Base):
    """One firing episode of one alert: the key is (fingerprint, starts_at), as Alertmanager's."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("fingerprint", "starts_at", name="uq_alerts_episode"),
        Index("ix_alerts_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    alertname: Mapped[str] = mapped_column(String(255), index=True)
    status: Mapped[str] = mapped_column(String(16))
    labels: Mapped[dict[str, str]]
    annotations: Mapped[dict[str, str]]
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime | None]
    generator_url: Mapped[str] = mapped_column(Text, default="")
    receiver: Mapped[str] = mapped_column(String(255), default="")
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime]
    receive_count: Mapped[int] = mapped_column(Integer, default=1)


class Incident(Base):
    """Alerts grouped by a key (default alertname + namespace) while any of them fires."""

    __tablename__ = "incidents"
    __table_args__ = (
        Index("ix_incidents_status_id", "status", "id"),
        Index("ix_incidents_severity_id", "severity", "id"),
        Index("ix_incidents_resolved_at", "resolved_at", "id"),  # retention: incidents resolved before a cutoff
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(1024), index=True)
    # Equal to `key` while the incident is not resolved, NULL afterwards: a unique
    # column (NULLs never collide) that allows one unresolved incident per key.
    open_key: Mapped[str | None] = mapped_column(String(1024), unique=True)
    status: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(32))
    title: Mapped[str] = mapped_column(Text)
    group_labels: Mapped[dict[str, str]]
    opened_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    acknowledged_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]


class IncidentAlert(Base):
    """Which alert episodes an incident holds."""

    __tablename__ = "incident_alerts"
    __table_args__ = (Index("ix_incident_alerts_alert", "alert_id"),)

    incident_id: Mapped[int] = mapped_column(BigId, ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True)
    alert_id: Mapped[int] = mapped_column(BigId, ForeignKey("alerts.id", ondelete="CASCADE"), primary_key=True)
    attached_at: Mapped[datetime]


class AuditEvent(Base):
    """Who did what, when, with which detail: the timeline of every incident."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_incident", "incident_id", "id"),
        Index("ix_audit_events_execution", "execution_id", "id"),
        Index("ix_audit_events_at", "at", "id"),  # retention: audit rows older than a cutoff
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    incident_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("incidents.id", ondelete="SET NULL"))
    execution_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("executions.id", ondelete="SET NULL", name="fk_audit_events_execution")
    )
    detail: Mapped[dict[str, Any]]


COUNTED = text("status != 'suppressed'")  # executions that count against cooldown and max_runs
FINISHED_RUN = text("status IN ('succeeded', 'failed', 'rolled_back')")  # runs that ended (playbooks/ledger.py)
SUPPRESSED = text("status = 'suppressed'")  # a storm's suppressed runs, pruned sooner than the rest (retention/)


class Execution(Base):
    """One run of a playbook for one trigger; changes state only through playbooks.state.transition()."""

    __tablename__ = "executions"
    __table_args__ = (
        # The same alert delivered twice (HA pair, retries) creates one execution per rule.
        UniqueConstraint("rule_name", "trigger_key", name="uq_executions_trigger"),
        Index("ix_executions_runnable", "status", "wake_at"),
        # An incident's runs newest first (the console), and its latest one that was not suppressed.
        Index("ix_executions_incident_id", "incident_id", "id"),
        Index("ix_executions_incident_counted", "incident_id", "id", sqlite_where=COUNTED, postgresql_where=COUNTED),
        # The ledger's outcomes of the last days (the Rules page): only runs that ended, not a storm's suppressed ones.
        Index(
            "ix_executions_finished_runs",
            "status",
            "finished_at",
            "rule_name",
            "outcome",
            "dry_run",
            sqlite_where=FINISHED_RUN,
            postgresql_where=FINISHED_RUN,
        ),
        # The guards' queries (playbooks/guards.py). A storm leaves one suppressed row per alert:
        # cooldown and max_runs count only the others, so their indexes leave suppressed rows out.
        Index("ix_executions_rule_status_guard", "rule_name", "status", "guard_key"),
        Index(
            "ix_executions_counted_guard",
            "rule_name",
            "guard_key",
            "created_at",
            sqlite_where=COUNTED,
            postgresql_where=COUNTED,
        ),
        Index("ix_executions_counted_rule", "rule_name", "created_at", sqlite_where=COUNTED, postgresql_where=COUNTED),
        Index("ix_executions_suppressed_created", "created_at", sqlite_where=SUPPRESSED, postgresql_where=SUPPRESSED),
        Index("ix_executions_alert_id", "alert_id"),  # deleting an alert looks its runs up (SET NULL)
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rule_name: Mapped[str] = mapped_column(String(255))
    playbook_name: Mapped[str] = mapped_column(String(255))
    trigger_key: Mapped[str] = mapped_column(String(512))
    guard_key: Mapped[str] = mapped_column(String(1024))
    incident_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("incidents.id", ondelete="SET NULL"))
    alert_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("alerts.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    playbook: Mapped[dict[str, Any]]  # snapshot: a reload never changes a run in flight
    params: Mapped[dict[str, Any]]
    context: Mapped[dict[str, Any]]  # the alert and incident the templates see
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    wake_at: Mapped[datetime | None]  # a waiting execution is runnable again from then
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]
    claims: Mapped[int] = mapped_column(Integer, default=0)
    decided_by: Mapped[str | None] = mapped_column(String(255))
    decided_at: Mapped[datetime | None]
    # Which guard suppressed it (cooldown, max_runs, quarantined, loop_breaker, ...); None when it ran.
    guard: Mapped[str | None] = mapped_column(String(32))
    # The rule's `page_on_failure`, kept when it was created: a reload does not change who hears of its end.
    page_on_failure: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    # The effectiveness ledger (playbooks/ledger.py): resolved | not_resolved | rolled_back | failed | recurred.
    outcome: Mapped[str | None] = mapped_column(String(16))
    outcome_at: Mapped[datetime | None]
    # The rule's `approvals`, kept when it was created: a reload does not change who must still approve.
    # Who approved so far is in the audit trail (`execution.approval_given`), not here.
    approvals_required: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))


class ExecutionStep(Base):
    """One step of an execution (forward or rollback): rendered inputs, output, attempts, error, duration."""

    __tablename__ = "execution_steps"
    __table_args__ = (UniqueConstraint("execution_id", "phase", "index", name="uq_execution_steps_position"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    execution_id: Mapped[int] = mapped_column(BigId, ForeignKey("executions.id", ondelete="CASCADE"))
    phase: Mapped[str] = mapped_column(String(16))  # forward | rollback
    index: Mapped[int] = mapped_column(Integer)
    step_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # running | waiting | succeeded | failed | skipped
    inputs: Mapped[dict[str, Any]]
    output: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[float | None] = mapped_column(Float)


class Page(Base):
    """A human to be told that automation failed (playbooks/pages.py): written in the transaction that
    decided it, sent by any replica afterwards, so a crash between the two loses no page."""

    __tablename__ = "pages"
    __table_args__ = (
        UniqueConstraint("kind", "execution_id", name="uq_pages_kind_execution"),  # each page once
        Index("ix_pages_unsent", "sent_at", "claimed_until"),
        Index("ix_pages_execution_id", "execution_id"),  # deleting an execution or incident looks its pages up
        Index("ix_pages_incident_id", "incident_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))  # execution_failed | approval_expired | quarantined
    execution_id: Mapped[int] = mapped_column(BigId, ForeignKey("executions.id", ondelete="CASCADE"))
    incident_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("incidents.id", ondelete="SET NULL"))
    rule_name: Mapped[str] = mapped_column(String(255))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    claimed_until: Mapped[datetime | None]  # a sender holds it until then; after, another may take it
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    sent_at: Mapped[datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(32))  # the route it went by, or "not_delivered"
    error: Mapped[str | None] = mapped_column(Text)


class Quarantine(Base):
    """A rule stopped for one guard key by its loop breaker: no automatic run until a person lifts it."""

    __tablename__ = "quarantines"
    __table_args__ = (
        Index("ix_quarantines_rule_key", "rule_name", "guard_key", "lifted_at"),
        Index("ix_quarantines_execution_id", "execution_id"),  # deleting an execution or incident looks them up
        Index("ix_quarantines_incident_id", "incident_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rule_name: Mapped[str] = mapped_column(String(255))
    guard_key: Mapped[str] = mapped_column(String(1024))
    execution_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("executions.id", ondelete="SET NULL"))
    incident_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("incidents.id", ondelete="SET NULL"))
    reason: Mapped[str] = mapped_column(Text)
    runs: Mapped[list[int]] = mapped_column(JsonDoc)  # the executions that counted, oldest first
    created_at: Mapped[datetime]
    lifted_at: Mapped[datetime | None]
    lifted_by: Mapped[str | None] = mapped_column(String(255))
    lift_reason: Mapped[str | None] = mapped_column(Text)


class AutomationState(Base):
    """The global switches (one row, id 1): pause everything, or record without acting."""

    __tablename__ = "automation_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    updated_by: Mapped[str] = mapped_column(String(255), default="")
    updated_at: Mapped[datetime]


class MetricRuleState(Base):
    """Pending/firing state of a metric rule, kept in the database so `for:` survives restarts."""

    __tablename__ = "metric_rule_states"

    rule_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # inactive | pending | firing
    active_since: Mapped[datetime | None]
    last_value: Mapped[float | None] = mapped_column(Float)
    last_evaluated_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    consecutive_errors: Mapped[int] = mapped_column(Integer, default=0)


class EndpointState(Base):
    """Health of one endpoint of a failover group, as the health checker last saw it."""

    __tablename__ = "endpoint_states"

    service: Mapped[str] = mapped_column(String(255), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(255), primary_key=True)
    healthy: Mapped[bool] = mapped_column(Boolean, default=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    consecutive_successes: Mapped[int] = mapped_column(Integer, default=0)
    last_checked_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    # A scored group's inputs (failover/scoring.py): cpu and memory in use (0..1), the check's response time.
    cpu_usage: Mapped[float | None] = mapped_column(Float)
    memory_usage: Mapped[float | None] = mapped_column(Float)
    response_seconds: Mapped[float | None] = mapped_column(Float)
    metrics_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class EndpointHeartbeat(Base):
    """A registration of an endpoint that sends heartbeats (failover/heartbeats.py), and its last heartbeat."""

    __tablename__ = "endpoint_heartbeats"

    service: Mapped[str] = mapped_column(String(255), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(255), primary_key=True)
    instance: Mapped[str] = mapped_column(String(255))  # who sent the last one, as it says (host, pod)
    registered_at: Mapped[datetime]
    last_heartbeat_at: Mapped[datetime]
    heartbeats: Mapped[int] = mapped_column(BigInteger, default=0)


class ActiveEndpoint(Base):
    """The endpoint a service's clients should use now (published via the API)."""

    __tablename__ = "active_endpoints"

    service: Mapped[str] = mapped_column(String(255), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(255))
    since: Mapped[datetime]
    changed_by: Mapped[str] = mapped_column(String(255), default="")


class FailoverEvent(Base):
    """node_marked_failed, failover_started/completed, recovery_started/completed (seed 002)."""

    __tablename__ = "failover_events"
    __table_args__ = (Index("ix_failover_events_service", "service", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime]
    service: Mapped[str] = mapped_column(String(255))
    event: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str | None] = mapped_column(String(255))
    from_endpoint: Mapped[str | None] = mapped_column(String(255))
    to_endpoint: Mapped[str | None] = mapped_column(String(255))
    from_region: Mapped[str | None] = mapped_column(String(255))
    to_region: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[dict[str, Any]]


class NotificationThread(Base):
    """The Slack message of an incident, so updates go to its thread (and PagerDuty's dedup key)."""

    __tablename__ = "notification_threads"

    incident_id: Mapped[int] = mapped_column(BigId, ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True)
    channel: Mapped[str] = mapped_column(String(255), primary_key=True)
    ts: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]


class Silence(Base):
    """An Alertmanager silence the control plane created, so it can expire it on rollback or resolve."""

    __tablename__ = "silences"
    __table_args__ = (
        Index("ix_silences_incident", "incident_id"),
        Index("ix_silences_execution_id", "execution_id"),  # deleting an execution looks its silences up
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    silence_id: Mapped[str] = mapped_column(String(64), unique=True)
    incident_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("incidents.id", ondelete="SET NULL"))
    execution_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("executions.id", ondelete="SET NULL"))
    alertmanager_url: Mapped[str] = mapped_column(Text)
    matchers: Mapped[dict[str, Any]]
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    expired_at: Mapped[datetime | None]


class LeaderLease(Base):
    """Who leads singleton work, until when, and the fencing term that grows with every new leader."""

    __tablename__ = "leader_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    term: Mapped[int] = mapped_column(BigInteger)
    acquired_at: Mapped[datetime]
    renewed_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class LoginAttempts(Base):
    """Console login attempts of one throttle key in its current window, counted before the password is checked.

    A key is a digest of the user name with or without the client address, so the table holds no
    names and any name (NUL bytes too) fits. Rows whose window ended are pruned.
    """

    __tablename__ = "login_attempts"
    __table_args__ = (Index("ix_login_attempts_window_start", "window_start"),)

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer)


class ConsoleSession(Base):
    """A logged-in console session: the cookie carries its id, this table only a digest of it.

    Logout deletes the row, so a copied cookie ends with the session; a row past `expires_at`
    or made with another password hash (its fingerprint) logs no one in.
    """

    __tablename__ = "console_sessions"
    __table_args__ = (Index("ix_console_sessions_expires_at", "expires_at"),)

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(128))
    password_fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
