"""Rules, playbooks, actions and circuit breakers: what the automation knows and how it stands."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from controlplane.api.deps import AdminDep, ReaderDep, ServicesDep
from controlplane.api.errors import error_responses
from controlplane.errors import InvalidInput
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
