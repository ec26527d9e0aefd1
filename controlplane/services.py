"""Owns the long-lived parts one running service shares, and their start and stop order."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR
from sqlalchemy import Engine

from controlplane.actions.base import ActionRegistry
from controlplane.actions.builtin import build_registry
from controlplane.audit import audit
from controlplane.config import Settings
from controlplane.db import migrate
from controlplane.db.engine import make_engine, write_transaction
from controlplane.failover.checker import HealthChecker
from controlplane.failover.heartbeats import HeartbeatRegistry
from controlplane.failover.manager import FailoverManager
from controlplane.failover.recovery import RecoveryAttempts
from controlplane.flows import AlertFlows
from controlplane.incidents.service import count_open_incidents
from controlplane.ingest.writer import IngestWriter
from controlplane.integrations.prometheus import PrometheusClient
from controlplane.leader import LEADER_LEASE_SECONDS, LeaderElector
from controlplane.metricrules.evaluator import MetricRuleMetrics
from controlplane.metricrules.scheduler import MetricRuleScheduler
from controlplane.playbooks.approval_plans import RecentPlans
from controlplane.playbooks.approvals import ApprovalTimeouts
from controlplane.playbooks.contexts import ActionContexts, build_ports
from controlplane.playbooks.executor import Executor, utcnow
from controlplane.playbooks.ledger import LedgerSweeps
from controlplane.playbooks.page_sender import page_sender
from controlplane.playbooks.pages import Pager
from controlplane.playbooks.slack_approvals import Planner, SlackApprovals
from controlplane.playbooks.worker import Worker
from controlplane.resilience.bulkhead import Bulkheads
from controlplane.resilience.circuit_breaker import CircuitBreakers, State
from controlplane.retention.prune import Policy
from controlplane.retention.sweeps import RetentionSweeps
from controlplane.rules.holder import RulesHolder
from controlplane.silences.service import ExpiryOnResolve
from controlplane.telemetry import Metrics

log = structlog.get_logger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    metrics: Metrics
    registry: ActionRegistry
    rules: RulesHolder
    breakers: CircuitBreakers
    writer: IngestWriter
    worker: Worker
    scheduler: MetricRuleScheduler
    head_revision: str | None
    silence_expiry: ExpiryOnResolve
    failover: FailoverManager
    health_checker: HealthChecker
    heartbeats: HeartbeatRegistry
    elector: LeaderElector
    approval_timeouts: ApprovalTimeouts
    pager: Pager
    ledger_sweeps: LedgerSweeps
    retention: RetentionSweeps | None  # None: CONTROLPLANE_RETENTION_ENABLED=false, everything is kept
    contexts: ActionContexts  # the service's ports and clock, with the rules in force: what plans read through
    slack_approvals: SlackApprovals | None = None  # None: no signing secret, Slack's buttons are not accepted
    # The approvals page's plans, kept a while: its redraws must not read every target each time.
    recent_plans: RecentPlans = field(default_factory=RecentPlans)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        # The pool grows with the worker threads, by half of them (each holds a connection only for a
        # statement or a short transaction): 31 connections at most with the default 32 threads, so
        # three replicas stay under PostgreSQL's default max_connections of 100.
        engine = make_engine(
            settings.database_url,
            pool_size=5 + settings.worker_threads // 4,
            max_overflow=10 + settings.worker_threads // 4,
        )
        metrics = Metrics()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            metrics.registry.register(collector)
        registry = build_registry()
        rules = RulesHolder(settings.rules_dir, registry)
        breakers = CircuitBreakers(registry=metrics.registry, on_state_change=lambda *a: _audit_breaker(engine, *a))
        expiry = ExpiryOnResolve(engine, settings)
        ports = build_ports(settings, engine)  # once per service: every step and page shares its clients
        # With the rules in force: a plan (the approval message's, the approvals page's) reads the targets they define.
        contexts = ActionContexts(ports=ports, clock=utcnow, rules=lambda: rules.current)
        recent_plans = RecentPlans()
        pager = Pager(
            engine,
            send=page_sender(engine, contexts, registry),
            poll_seconds=settings.pager_poll_seconds,
            counted=lambda kind, outcome: metrics.pages.labels(kind, outcome).inc(),
        )
        executor = Executor(
            engine=engine,
            registry=registry,
            settings=settings,
            breakers=breakers,
            metrics=metrics,
            bulkheads=Bulkheads(),  # per-target call slots (the step timeout bounds the wait for one)
            rules=lambda: rules.current,
            ports=ports,
            paged=pager.wake,
        )
        worker = Worker(
            engine=engine,
            executor=executor,
            instance_id=settings.instance_id,
            threads=settings.worker_threads,
            lease_seconds=settings.worker_lease_seconds,
            poll_seconds=settings.worker_poll_seconds,
            max_claims=settings.max_claims,
        )
        elector = LeaderElector(engine, instance_id=settings.instance_id, lease_seconds=LEADER_LEASE_SECONDS)
        flows = AlertFlows(
            rules=rules,
            default_group_by=settings.incident_group_by,
            metrics=metrics,
            wake=worker.notify,
            expire_silences=expiry.submit,
        )
        writer = IngestWriter(
            engine,
            group_by=settings.incident_group_by,
            metrics=metrics,
            max_batch=settings.ingest_max_batch,
            commit_timeout=settings.ingest_timeout_seconds,
            hook=flows,
        )
        # Metric rules and health checks are leader work: on other replicas their providers
        # are empty, so their jobs are removed; a change of leader resyncs them.
        scheduler = MetricRuleScheduler(
            lambda: rules.current.rules if elector.is_leader else [],
            client=PrometheusClient(settings.prometheus_url),
            engine=engine,
            metrics=MetricRuleMetrics(metrics.registry),
            interval_seconds=settings.metric_rule_interval_seconds,
            group_by=settings.incident_group_by,
            on_ingest=flows.metric_rule_fired,
            evaluated=flows.metric_rule_evaluated,
            fence=elector.fence,
        )
        failover = FailoverManager(
            engine, groups=lambda: rules.current.failover, metrics_registry=metrics.registry, breakers=breakers
        )
        heartbeats = HeartbeatRegistry(engine, lambda: rules.current.failover)
        health_checker = HealthChecker(
            lambda: rules.current.failover if elector.is_leader else {},
            failover,
            fence=elector.fence,
            prometheus=PrometheusClient(settings.prometheus_url, timeout=5.0),  # scored groups' cpu and memory
            heartbeats=heartbeats,
            on_failed=lambda group, endpoint: recovery.start(group, endpoint),
        )
        recovery = RecoveryAttempts(registry, contexts, health_checker.passes, is_leader=lambda: elector.is_leader)
        approval_timeouts = ApprovalTimeouts(
            engine, rules=lambda: rules.current.rules, is_leader=lambda: elector.is_leader, fence=elector.fence
        )
        ledger_sweeps = LedgerSweeps(
            engine,
            is_leader=lambda: elector.is_leader,
            fence=elector.fence,
            counted=lambda rule, outcome: metrics.remediation_outcomes.labels(rule, outcome).inc(),
            interval_seconds=settings.ledger_interval_seconds,
        )
        retention = (
            RetentionSweeps(
                engine,
                policy=Policy(
                    incidents=timedelta(days=settings.retention_incident_days),
                    suppressed=timedelta(days=settings.retention_suppressed_days),
                    alert_audit=timedelta(days=settings.retention_alert_audit_days),
                ),
                rules=lambda: rules.current.rules,
                is_leader=lambda: elector.is_leader,
                fence=elector.fence,
                counted=lambda table, rows: metrics.pruned_rows.labels(table).inc(rows),
                failed=metrics.retention_failures.inc,
                batch_rows=settings.retention_batch_rows,
                archive_dir=settings.archive_dir,
                interval_seconds=settings.retention_interval_seconds,
            )
            if settings.retention_enabled
            else None
        )
        services = cls(
            settings,
            engine,
            metrics,
            registry,
            rules,
            breakers,
            writer,
            worker,
            scheduler,
            migrate.head_revision(engine),
            expiry,
            failover=failover,
            health_checker=health_checker,
            heartbeats=heartbeats,
            elector=elector,
            approval_timeouts=approval_timeouts,
            pager=pager,
            ledger_sweeps=ledger_sweeps,
            retention=retention,
            contexts=contexts,
            slack_approvals=SlackApprovals.build(
                settings.slack_signing_secret.get_secret_value(),
                slack=ports.slack,
                users=settings.console_users,
                incident_url=ports.incident_url,
                api_url=settings.slack_api_url,
                planner=Planner(registry, contexts, recent_plans),
            )
            if settings.slack_signing_secret is not None
            else None,
            recent_plans=recent_plans,
        )
        elector.on_change = services.leadership_changed
        metrics.watch_open_incidents(services.open_incidents_or_none)
        metrics.watch_automation(engine)
        return services

    def start(self) -> None:
        """Migrate, load rules (bad rules stop start-up: better than running without them), start work."""
        before = migrate.current_revision(self.engine)
        migrate.upgrade(self.engine)
        if before != self.head_revision:
            log.info("database.migrated", from_revision=before, to_revision=self.head_revision)
        self.rules.load()
        _warn_if_open(self.settings)
        self.elector.start()
        self.writer.start()
        self.worker.start()
        self.scheduler.start()
        self.health_checker.start()
        self.approval_timeouts.start()
        self.ledger_sweeps.start()
        if self.retention is not None:
            self.retention.start()
        self.pager.start()
        freeze_startup_heap()

    def stop(self) -> None:
        # Step down first: another replica takes the singleton work over at once, and the
        # schedulers drop their jobs while they still run (the step-down resyncs them).
        self.elector.stop(release=True)
        self.health_checker.shutdown(wait=False)
        self.approval_timeouts.shutdown(wait=False)
        self.ledger_sweeps.shutdown(wait=False)
        if self.retention is not None:
            self.retention.shutdown(wait=False)
        self.scheduler.shutdown(wait=False)
        self.writer.stop()
        self.worker.stop()
        self.pager.stop()
        self.silence_expiry.shutdown()
        gc.unfreeze()
        self.engine.dispose()

    def reload_rules(self) -> None:
        """Load the rule files again (raises RuleLoadError and keeps the rules in force on errors)."""
        self.rules.load()
        self.scheduler.resync()
        self.health_checker.resync()

    def leadership_changed(self, _leader: bool, _term: int) -> None:
        """The leader's work (metric rules, health checks) follows the lease: its jobs are added or dropped."""
        self.scheduler.resync()
        self.health_checker.resync()

    def wake_workers(self) -> None:
        self.worker.notify()

    def open_incidents_or_none(self) -> int | None:
        try:
            with self.engine.connect() as conn:
                return count_open_incidents(conn=conn)
        except Exception as exc:  # a scrape must not fail because the database is down
            log.warning("metrics.open_incidents_unavailable", error=str(exc).splitlines()[0])
            return None


def freeze_startup_heap() -> None:
    """Move what start-up made (modules, rules, templates, clients: about a million objects) out of the
    cyclic garbage collector's sight, after collecting start-up's own young garbage.

    Each full collection walked all of it: 80-90 ms with every thread stopped, which was the whole
    p99 of the console's biggest page (156 ms against a p50 of 48) and a pause in ingest. Frozen
    objects are still freed by reference counting; only cycles among them are not collected while
    frozen, which start-up objects, living as long as the service, do not need. `stop` unfreezes
    them, so a process that starts services again (the tests) gets the memory back. The collection
    before is of the young generations only: a full one walked the whole heap of a process that had
    started services before (the test suite, hundreds of times: minutes in all).
    """
    gc.collect(1)
    gc.freeze()


def _warn_if_open(settings: Settings) -> None:
    """Development may run without tokens; say so loudly, once, at start-up (production refuses to start)."""
    open_parts = []
    if settings.webhook_token is None:
        open_parts.append("webhook (POST /api/v1/alerts/alertmanager): anyone can post alerts")
    if settings.read_token is None and settings.admin_token is None:
        open_parts.append("read API (/api/v1): anyone can read incidents, alerts, executions and rules")
    if open_parts:
        log.warning(
            "security.open",
            open=open_parts,
            fix="set CONTROLPLANE_WEBHOOK_TOKEN and CONTROLPLANE_READ_TOKEN (or their _FILE variants)",
        )


def _audit_breaker(engine: Engine, name: str, old: State, new: State) -> None:
    """Circuit transitions go in the audit trail: an on-call person asks why a step was refused."""
    try:
        with write_transaction(engine, sync="normal") as conn:
            audit(
                conn,
                actor="controlplane:circuit-breaker",
                action="circuit.changed",
                incident_id=None,
                detail={"name": name, "from": str(old), "to": str(new)},
                now=datetime.now(UTC),
            )
    except Exception as exc:
        log.warning("circuit.audit_failed", error=str(exc).splitlines()[0])
