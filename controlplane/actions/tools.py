"""Owns the tool actions of an http target: `tool.disable` / `tool.enable`, a breaker for a failing or looping tool.

They read the target's tools through the admin API's `GET /llm` (llm.py `read_llm`) and change them
with `POST /tools/{tool}/disable|enable`, with the step's idempotency key. `max_disabled_tools` on
the target bounds tool.disable, checked before the step and in the plan by `disable_tool_refusal`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controlplane.actions.base import ActionContext, ActionError, ActionResult, Params, Plan, action
from controlplane.actions.graph import TIMEOUT_SECONDS, target_name
from controlplane.actions.llm import ToolName, llm_target, read_llm, refusal_of
from controlplane.rules.schema import Target


class ToolParams(Params):
    target: str = "default"
    tool: ToolName


def disable_tool_refusal(target: Target, tool: str, disabled: list[str]) -> str | None:
    """Why disabling `tool` would leave more tools disabled than the target allows, or None."""
    if tool in disabled:
        return None  # already disabled: nothing changes
    if len(disabled) + 1 > target.max_disabled_tools:
        return (
            f"disabling tool {tool!r} would make {len(disabled) + 1} disabled tools on target {target.name!r}, "
            f"over its max_disabled_tools of {target.max_disabled_tools} "
            f"(already disabled: {', '.join(disabled) or 'none'})"
        )
    return None


def _tool_refusal(ctx: ActionContext, params: ToolParams) -> str | None:
    target = llm_target(ctx, params.target, "tool.disable")
    return disable_tool_refusal(target, params.tool, read_llm(ctx, target).disabled_tools())


def _tool_described(verb: str, state: str) -> Callable[[ToolParams, dict[str, Any]], str]:
    def describe(params: ToolParams, output: dict[str, Any]) -> str:
        tool, target = output.get("tool", params.tool), output.get("target", params.target)
        if output.get("changed") is False:
            return f"Tool {tool} was already {state} on {target}; left as it was"
        return f"{verb} tool {tool} on {target}"

    return describe


def _tool_planner(enabled: bool) -> Callable[[ActionContext, ToolParams], Plan]:
    name, verb, state = ("tool.enable", "enable", "enabled") if enabled else ("tool.disable", "disable", "disabled")

    def plan(ctx: ActionContext, params: ToolParams) -> Plan:
        target = llm_target(ctx, params.target, name)
        view = read_llm(ctx, target)
        if params.tool not in view.tools:
            raise ActionError(
                f"no tool named {params.tool!r} on target {target.name!r} (tools: {', '.join(view.tools)})"
            )
        disabled = view.disabled_tools()
        noop = (params.tool not in disabled) == enabled
        after = [t for t in disabled if t != params.tool] if enabled else sorted({*disabled, params.tool})
        counts = f"{len(disabled)} of {len(view.tools)} disabled; at most {target.max_disabled_tools} disabled"
        if noop:
            sentence = f"leave tool {params.tool} on {target.name}: already {state} ({counts})"
        else:
            sentence = f"{verb} tool {params.tool} on {target.name} ({counts})"
        change = {
            "tool": params.tool,
            "from": "disabled" if params.tool in disabled else "enabled",
            "to": state,
            "disabled_before": disabled,
            "disabled_after": disabled if noop else after,
            "max_disabled_tools": target.max_disabled_tools,
        }
        refused = None if enabled else disable_tool_refusal(target, params.tool, disabled)
        return Plan(action=name, target=target.name, change=change, sentence=sentence, refused=refused, noop=noop)

    return plan


def _set_tool(ctx: ActionContext, params: ToolParams, *, enabled: bool) -> ActionResult:
    verb = "enable" if enabled else "disable"
    target = llm_target(ctx, params.target, f"tool.{verb}")
    answer = ctx.ports.admin_api.request(
        target,
        "POST",
        f"/tools/{params.tool}/{verb}",
        idempotency_key=ctx.idempotency_key,
        timeout=ctx.time_left(TIMEOUT_SECONDS),
    )
    changed = bool(answer.get("changed"))
    after = "enabled" if enabled else "disabled"
    before = ("disabled" if enabled else "enabled") if changed else after
    return ActionResult(
        value=params.tool,
        output={
            "target": target.name,
            "tool": params.tool,
            "before": before,
            "after": after,
            "changed": changed,
            "disabled_tools": list(answer.get("disabled", [])),
        },
    )


@action(
    "tool.disable",
    params=ToolParams,
    inverse="tool.enable",
    blast_radius=refusal_of(_tool_refusal),
    blast_radius_doc="at most the target's max_disabled_tools disabled at once",
    target=target_name,
    describe_effect=_tool_described("Disabled", "disabled"),
    plan=_tool_planner(enabled=False),
)
def disable_tool(ctx: ActionContext, params: ToolParams) -> ActionResult:
    """Stop a graph's agents calling one tool (a breaker for a failing or looping tool); one already off is left."""
    return _set_tool(ctx, params, enabled=False)


@action(
    "tool.enable",
    params=ToolParams,
    inverse="tool.disable",
    target=target_name,
    describe_effect=_tool_described("Enabled", "enabled"),
    plan=_tool_planner(enabled=True),
)
def enable_tool(ctx: ActionContext, params: ToolParams) -> ActionResult:
    """Let agents call a tool again; one already enabled is left as it is."""
    return _set_tool(ctx, params, enabled=True)
