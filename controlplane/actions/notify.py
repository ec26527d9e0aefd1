"""Notification actions that need no outside service: `notify.log`."""

from __future__ import annotations

from typing import Any, Literal

from controlplane.actions.base import ActionContext, ActionResult, Params, action, clip
from controlplane.actions.notify_plans import log_plan


class LogParams(Params):
    text: str
    level: Literal["info", "warning", "error"] = "info"


def _logged(params: LogParams, _output: dict[str, Any]) -> str:
    return f"Wrote to the service log: {clip(params.text)}"


@action(
    "notify.log",
    params=LogParams,
    describe_effect=_logged,
    plan=lambda _ctx, params: log_plan("notify.log", params.text, params.level),
)
def notify_log(ctx: ActionContext, params: LogParams) -> ActionResult:
    """Write a message to the service log (and the step output), for playbooks without a pager."""
    getattr(ctx.log, params.level)("notify.log", text=params.text, rule=ctx.rule)
    return ActionResult(value=params.text, output={"level": params.level})
