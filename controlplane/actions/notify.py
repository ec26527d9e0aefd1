"""Notification actions that need no outside service: `notify.log`."""

from __future__ import annotations

from typing import Literal

from controlplane.actions.base import ActionContext, ActionResult, Params, action


class LogParams(Params):
    text: str
    level: Literal["info", "warning", "error"] = "info"


@action("notify.log", params=LogParams)
def notify_log(ctx: ActionContext, params: LogParams) -> ActionResult:
    """Write a message to the service log (and the step output), for playbooks without a pager."""
    getattr(ctx.log, params.level)("notify.log", text=params.text, rule=ctx.rule)
    return ActionResult(value=params.text, output={"level": params.level})
