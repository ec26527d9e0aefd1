"""Owns what a plan is asked for: a rule by name, and either an alert's labels (and annotations) or an incident.

The API (`POST /api/v1/rules/{rule}/plan`) and the CLI (`controlplane plan`) both come here: it
finds the rule and its playbook in the rules in force, builds the alert and incident a run
would see, and hands them to `plan_playbook` (planning.py). It reads the incident from the
database and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Engine

from controlplane.actions.base import ActionRegistry, AlertView, IncidentView
from controlplane.errors import InvalidInput, NotFound
from controlplane.incidents import service as incidents
from controlplane.playbooks.contexts import ActionContexts
from controlplane.playbooks.planning import ExecutionPlan, plan_playbook
from controlplane.rules.loader import RuleSet


def plan_rule(
    *,
    registry: ActionRegistry,
    contexts: ActionContexts,
    rules: RuleSet,
    rule_name: str,
    engine: Engine,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    incident_id: int | None = None,
) -> tuple[ExecutionPlan, bool | None]:
    """The plan of `rule_name` for an alert with `labels`, or for incident `incident_id` (and its newest alert),
    and whether the rule matches that alert's labels (None for a metric rule: it matches no labels)."""
    rule = rules.rule(rule_name)
    if rule is None:
        raise NotFound(f"no rule {rule_name!r} in the rules in force")
    playbook = rules.playbooks[rule.playbook]
    if (labels is None) == (incident_id is None):
        raise InvalidInput("give an alert's `labels` or an `incident_id`, not both")
    incident, alert = None, None
    if incident_id is not None:
        incident, alert = _incident(engine, incident_id)
    else:
        alert = AlertView(
            fingerprint="plan",
            status="firing",
            labels=dict(labels or {}),
            annotations=dict(annotations or {}),
            starts_at=contexts.clock().isoformat(),
        )
    matches = None if rule.match is None or alert is None else rule in rules.match(alert.labels)
    planned = plan_playbook(
        registry=registry, contexts=contexts, rule=rule, playbook=playbook, alert=alert, incident=incident
    )
    return planned, matches


def _incident(engine: Engine, incident_id: int) -> tuple[IncidentView, AlertView | None]:
    with engine.connect() as conn:
        row = incidents.incident_row(conn=conn, incident_id=incident_id)
        page = incidents.incident_alerts(conn=conn, incident_id=incident_id, limit=1, order="firing_first")
    incident = IncidentView(
        id=row["id"],
        key=row["key"],
        status=row["status"],
        severity=row["severity"],
        title=row["title"],
        group_labels=dict(row["group_labels"]),
    )
    if not page.items:
        return incident, None
    newest = page.items[0]
    alert = AlertView(
        fingerprint=newest.fingerprint,
        status=newest.status,
        labels=newest.labels,
        annotations=newest.annotations,
        starts_at=newest.starts_at.isoformat(),
        generator_url=newest.generator_url,
    )
    return incident, alert
