"""Replay of stored alerts through the rules (controlplane/replay/), for the admin token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from controlplane.api.deps import AdminDep, ServicesDep
from controlplane.api.errors import error_responses
from controlplane.durations import Duration
from controlplane.errors import InvalidInput
from controlplane.replay.report import ReplayReport
from controlplane.replay.run import replay
from controlplane.rules.loader import RuleLoadError, load_rules

# 422: FastAPI documents it (a body that is not a ReplayRequest); ours (a range too long) fits its schema too.
router = APIRouter(prefix="/api/v1", tags=["replay"], responses=error_responses(400, 401, 403, 503))
MAX_ALERTS = 200_000  # about 10 s of replay: longer belongs on the command line, with its progress line
MAX_SPAN = timedelta(days=31)


class ReplayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    since: Duration | None = Field(None, description="the last DURATION (e.g. 7d); or give from (and to)")
    start: datetime | None = Field(None, alias="from", description="ISO 8601 start")
    end: datetime | None = Field(None, alias="to", description="ISO 8601 end (default: now)")
    rules_dir: Annotated[
        str | None, Field(description="a rules directory on the server (default: the rules in force)")
    ] = None


@router.post("/replay", summary="Replay stored alerts through the rules; compare with what ran")
def post_replay(_admin: AdminDep, services: ServicesDep, body: ReplayRequest) -> ReplayReport:
    end = _aware(body.end) if body.end else datetime.now(UTC)
    if (body.since is None) == (body.start is None):
        raise InvalidInput("give either since (e.g. 7d) or from (and optionally to)")
    span = body.since if body.since is not None else end - _aware(body.start)  # type: ignore[arg-type]
    if span > MAX_SPAN:
        raise InvalidInput(f"the range is {span.days} days: at most {MAX_SPAN.days} can be replayed here")
    try:
        start = end - span
    except OverflowError:
        raise InvalidInput(f"the range starts before the year 1: {end.isoformat()} - {span}") from None
    if body.rules_dir is None:
        rules, label = services.rules.current, str(services.rules.directory)
    else:
        try:
            rules, label = load_rules(Path(body.rules_dir), services.registry), body.rules_dir
        except RuleLoadError as exc:
            raise InvalidInput(f"rules directory {body.rules_dir}: " + "; ".join(str(e) for e in exc.errors)) from None
    return replay(
        services.engine,
        rules=rules,
        rules_label=label,
        default_group_by=services.settings.incident_group_by,
        start=start,
        end=end,
        max_alerts=MAX_ALERTS,
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
