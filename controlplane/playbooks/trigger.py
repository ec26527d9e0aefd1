"""Owns turning new firing alerts into executions: rule matching, guard decision, one row per trigger."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from controlplane.actions.base import AlertView, IncidentView
from controlplane.audit import PendingAudits, audit
from controlplane.db.tables import alerts_t, executions_t, incidents_t, links_t
from controlplane.incidents.keys import incident_key
from controlplane.playbooks import ledger, pages, quarantine
from controlplane.playbooks.guards import Automation, Decision, GuardSession, automation
from controlplane.rules.schema import Playbook, Rule


@dataclass(frozen=True)
class Triggered:
    execution_id: int
    rule: str
    status: str
    reason: str
    guard: str | None


class RuleSource(Protocol):
    """What the trigger needs of the loaded rules (a RuleSet satisfies it)."""

    @property
    def playbooks(self) -> Mapping[str, Playbook]: ...

    def match(self, labels: Mapping[str, str]) -> list[Rule]: ...


# Built once (see ingest/store.py): the per-alert cost of a storm is mostly statement building.
_NEW_FIRING_ALERTS = (
    select(
        alerts_t,
        incidents_t.c.id.label("incident_id"),
        incidents_t.c.key.label("incident_key"),
        incidents_t.c.status.label("incident_status"),
        incidents_t.c.severity,
        incidents_t.c.title,
        incidents_t.c.group_labels,
    )
    .join(links_t, links_t.c.alert_id == alerts_t.c.id)
    .join(incidents_t, incidents_t.c.id == links_t.c.incident_id)
    .where(alerts_t.c.id.in_(bindparam("alert_ids", expanding=True)), alerts_t.c.status == "firing")
    .order_by(alerts_t.c.id)
)
_INSERT_EXECUTIONS = {  # one or many; which went in is told by (rule_name, trigger_key)
    dialect.__name__.rsplit(".", 1)[-1]: dialect.insert(executions_t)
    .on_conflict_do_nothing(index_elements=["rule_name", "trigger_key"])
    .returning(executions_t.c.id, executions_t.c.rule_name, executions_t.c.trigger_key)
    for dialect in (postgresql, sqlite)
}


def trigger_for_alerts(
    conn: Connection,
    *,
    alert_ids: Sequence[int],
    rules: RuleSource,
    default_group_by: Sequence[str],
    now: datetime | None = None,
    only: Rule | None = None,
) -> list[Triggered]:
    """Create an execution for every (matching rule, new firing alert), inside the ingest transaction.

    Creating it in the same transaction as the alert means an acknowledged alert always has
    its executions: a crash cannot store one without the other. With `only`, that rule is
    the trigger instead of the alert rules that match (a metric rule's own synthetic alert).
    """
    if not alert_ids:
        return []
    now = now or datetime.now(UTC)
    rows = conn.execute(_NEW_FIRING_ALERTS, {"alert_ids": list(alert_ids)}).all()
    matches = [(row, [only] if only is not None else rules.match(row.labels)) for row in rows]
    matches = [(row, matched) for row, matched in matches if matched]
    if not matches:
        return []
    executions = _Executions(conn, now)
    executions.guarding.lock(rule.name for _, matched in matches for rule in matched)
    state = automation(conn)
    for row, matched in matches:
        alert = AlertView(
            fingerprint=row.fingerprint,
            status=row.status,
            labels=row.labels,
            annotations=row.annotations,
            starts_at=row.starts_at.isoformat(),
            generator_url=row.generator_url,
        )
        incident = IncidentView(
            id=row.incident_id,
            key=row.incident_key,
            status=row.incident_status,
            severity=row.severity,
            title=row.title,
            group_labels=row.group_labels,
        )
        for rule in matched:
            executions.add(
                rule=rule,
                playbook=rules.playbooks[rule.playbook],
                trigger_key=f"{row.fingerprint}@{row.starts_at.isoformat()}",
                guard_key=incident_key(row.labels, rule.group_by or default_group_by),
                incident=incident,
                alert=alert,
                alert_id=row.id,
                state=state,
            )
    return executions.finish()


def _fields(view: AlertView | IncidentView | None) -> dict[str, Any] | None:
    """A view's fields for the execution's context: what dataclasses.asdict gives, without its deep copy
    of every label (a fifth of a storm alert's time); the rows they come from are read for this alone."""
    return None if view is None else dict(vars(view))


class _Executions:
    """The executions one transaction creates: one per (rule, trigger), none for a redelivery.

    One that runs (or waits for approval) is inserted at once: the guards of the next trigger
    count it. One that is suppressed is never read by a guard, so a storm's many are inserted
    together at the end, with their audit rows, in one statement each.
    """

    def __init__(self, conn: Connection, now: datetime) -> None:
        self.conn = conn
        self.now = now
        self.guarding = GuardSession(conn)
        self._pending = PendingAudits()
        self._suppressed: list[tuple[int, dict[str, Any], Decision]] = []
        self._made: list[tuple[int, Triggered]] = []  # (order of add(), what was made)
        self._seen: set[tuple[str, str]] = set()  # (rule, guard key) met in this transaction

    def add(
        self,
        *,
        rule: Rule,
        playbook: Playbook,
        trigger_key: str,
        guard_key: str,
        incident: IncidentView | None,
        alert: AlertView | None,
        alert_id: int | None,
        state: Automation,
    ) -> None:
        if (rule.name, guard_key) not in self._seen:
            # The key fired again: its resolved runs did not last. Before the guards decide, so the
            # loop breaker counts them.
            self._seen.add((rule.name, guard_key))
            ledger.mark_recurred(self.conn, rule=rule.name, guard_key=guard_key, now=self.now)
        decision = self.guarding.decide(rule=rule, guard_key=guard_key, now=self.now, state=state)
        suppressed = decision.status == "suppressed"
        values = {
            "rule_name": rule.name,
            "playbook_name": playbook.name,
            "trigger_key": trigger_key,
            "guard_key": guard_key,
            "incident_id": incident.id if incident else None,
            "alert_id": alert_id,
            "status": decision.status,
            "reason": decision.reason,
            "dry_run": decision.dry_run,
            # A suppressed execution never runs: a storm of them need not carry a playbook copy each.
            "playbook": {} if suppressed else playbook.model_dump(mode="json", by_alias=True),
            "params": {**playbook.params, **rule.params},
            "context": {"alert": _fields(alert), "incident": _fields(incident)},
            "created_at": self.now,
            "updated_at": self.now,
            "started_at": None,
            "finished_at": self.now if suppressed else None,
            "wake_at": None,
            "current_step": 0,
            "lease_owner": None,
            "lease_expires_at": None,
            "claims": 0,
            "decided_by": None,
            "decided_at": None,
            "guard": decision.guard,
            "page_on_failure": rule.page_on_failure,
            "approvals_required": rule.guards.approvals if rule.guards.approval else 1,
            "outcome": None,
            "outcome_at": None,
        }
        order = len(self._suppressed) + len(self._made)
        if suppressed:
            self._suppressed.append((order, values, decision))
            return
        inserted = self.conn.execute(_INSERT_EXECUTIONS[self.conn.dialect.name], values).first()
        if inserted is not None:  # None: a redelivery, this trigger has its execution already
            self.guarding.started(rule, guard_key, inserted.id, decision.dry_run)
            self._made.append((order, self._record(inserted.id, values, decision)))
            if decision.status == "awaiting_approval":  # ask in Slack, after the commit (pages.py)
                pages.record(
                    self.conn,
                    kind="approval_requested",
                    execution_id=inserted.id,
                    incident_id=incident.id if incident else None,
                    rule=rule.name,
                    reason=decision.reason,
                    now=self.now,
                )

    def finish(self) -> list[Triggered]:
        """Insert the suppressed ones, write the audit rows; what was made, in the order added."""
        if self._suppressed:
            rows = self.conn.execute(
                _INSERT_EXECUTIONS[self.conn.dialect.name], [values for _, values, _ in self._suppressed]
            )
            ids = {(r.rule_name, r.trigger_key): r.id for r in rows}
            for order, values, decision in self._suppressed:
                execution_id = ids.get((values["rule_name"], values["trigger_key"]))
                if execution_id is not None:
                    self._made.append((order, self._record(execution_id, values, decision)))
                    if decision.guard == "loop_breaker":
                        self._quarantine(execution_id, values, decision)
        self._pending.flush(self.conn)
        return [made for _, made in sorted(self._made, key=lambda pair: pair[0])]

    def _quarantine(self, execution_id: int, values: dict[str, Any], decision: Decision) -> None:
        """The loop breaker tripped on this trigger: quarantine the key and, unless the rule opted out, page."""
        quarantine.quarantine(
            self.conn,
            rule=values["rule_name"],
            guard_key=values["guard_key"],
            execution_id=execution_id,
            incident_id=values["incident_id"],
            reason=decision.reason,
            runs=decision.runs,
            now=self.now,
        )
        if values["page_on_failure"]:
            pages.record(
                self.conn,
                kind="quarantined",
                execution_id=execution_id,
                incident_id=values["incident_id"],
                rule=values["rule_name"],
                reason=decision.reason,
                now=self.now,
            )

    def _record(self, execution_id: int, values: dict[str, Any], decision: Decision) -> Triggered:
        rule = values["rule_name"]
        audit(
            self.conn,
            actor=f"rule:{rule}",
            action="execution.suppressed" if decision.status == "suppressed" else "execution.created",
            incident_id=values["incident_id"],
            execution_id=execution_id,
            detail={
                "playbook": values["playbook_name"],
                "status": decision.status,
                "reason": decision.reason,
                "guard": decision.guard,
                "dry_run": decision.dry_run,
                "trigger": values["trigger_key"],
            },
            now=self.now,
            pending=self._pending,
        )
        return Triggered(execution_id, rule, decision.status, decision.reason, decision.guard)
