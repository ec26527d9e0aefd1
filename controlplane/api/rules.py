"""Rules, playbooks, actions and circuit breakers: what the automation knows and how it stands."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, Field

from controlplane.api.deps import AdminDep, ConnDep, IdPath, ReaderDep, ServicesDep, WriteConnDep
from controlplane.api.errors import error_responses
from controlplane.errors import InvalidInput
from controlplane.playbooks import ledger, quarantine
from controlplane.rules.loader import RuleLoadError
from controlplane.rules.matchers import shown
from controlplane.rules.schema import Rule

router = APIRouter(prefix="/api/v1", tags=["rules"], responses=error_responses(401), dependencies=[ReaderDep])


class RulesOut(BaseModel):
    directory: str
    loaded_at: datetime | None
    last_reload_errors: list[str]
    rules: list[dict[str, Any]]
    playbooks: list[dict[str, Any]]


def _rule(rule: Rule) -> dict[str, Any]:
    """The rule as its file has it, and its `match:` as matcher text with each operator (`alertname=~"A|B"`)."""
    out = rule.model_dump(mode="json", by_alias=True)
    if rule.match is not None:
        out["matchers"] = [str(m) for m in shown(rule.match)]
    return out


@router.get("/rules", summary="The rules and playbooks in force")
def list_rules(services: ServicesDep) -> RulesOut:
    holder = services.rules
    current = holder.current
    return RulesOut(
        directory=str(holder.directory),
        loaded_at=holder.loaded_at,
        last_reload_errors=holder.last_error,
        rules=[_rule(r) for r in current.rules],
        playbooks=[p.model_dump(mode="json", by_alias=True) for p in current.playbooks.values()],
    )


@router.post(
    "/rules/reload",
    summary="Reload rule files; on any error the rules in force stay",
    responses=error_responses(401, 403, 422),
)
def reload_rules(services: ServicesDep, _actor: AdminDep) -> RulesOut:
    try:
        services.reload_rules()
    except RuleLoadError as exc:
        raise InvalidInput(
            "rule files have errors; the rules in force were kept",
            [{"field": "rules", "error": str(e)} for e in exc.errors],
        ) from None
    return list_rules(services)


@router.get("/actions", summary="Actions playbook steps can use, with their parameters")
def list_actions(services: ServicesDep) -> list[dict[str, Any]]:
    return [spec.describe() for spec in services.registry.specs()]


@router.get("/circuit-breakers", summary="Circuit breakers per action target")
def list_breakers(services: ServicesDep) -> list[dict[str, Any]]:
    return [dict(snapshot) for snapshot in services.breakers.snapshot()]


RuleName = Annotated[str | None, Query(max_length=255, description="Only this rule")]


class OutcomeRecord(BaseModel):
    """One rule's (or rule and key's) finished runs over `period` by outcome; success_rate = resolved / settled."""

    rule: str
    guard_key: str | None
    period: str
    finished: int
    counts: dict[str, int]
    success_rate: float | None


@router.get("/rules/outcomes", summary="The effectiveness ledger: outcomes per rule (and per key) over 24 h and 7 d")
def rule_outcomes(conn: ConnDep, by_key: bool = False, rule: RuleName = None) -> list[OutcomeRecord]:
    found = ledger.records(conn, now=datetime.now(UTC), by_key=by_key, rule=rule)
    return [OutcomeRecord(**record.__dict__) for record in found]


class QuarantineOut(BaseModel):
    id: int
    rule_name: str
    guard_key: str
    execution_id: int | None
    incident_id: int | None
    reason: str
    runs: list[int]
    created_at: datetime
    lifted_at: datetime | None
    lifted_by: str | None
    lift_reason: str | None


@router.get("/quarantines", summary="Rules the loop breaker stopped, per key, not lifted yet")
def list_quarantines(conn: ConnDep, rule: RuleName = None) -> list[QuarantineOut]:
    return [QuarantineOut.model_validate(row) for row in quarantine.active(conn, rule=rule)]


class LiftIn(BaseModel):
    reason: str = Field(default="", max_length=2000)


@router.post(
    "/quarantines/{quarantine_id}/lift",
    summary="Let the rule act on the key again (audited)",
    responses=error_responses(403, 404, 409),
)
def lift_quarantine(
    conn: WriteConnDep, actor: AdminDep, quarantine_id: IdPath, body: Annotated[LiftIn | None, Body()] = None
) -> QuarantineOut:
    row = quarantine.lift(conn, quarantine_id, actor=actor, reason=(body or LiftIn()).reason, now=datetime.now(UTC))
    return QuarantineOut.model_validate(row)
