"""Owns what a person reads about an execution: each step's effect in the operator's words, and one summary line.

Both are built when shown, from the rows as stored (the steps' inputs and outputs, the
execution's status, reason and times) and each action's `describe_effect` (actions/base.py):
nothing is stored for them, so executions recorded before this existed read the same way.
Step numbers here are 1-based, as people count; the stored `index` stays 0-based.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from controlplane.actions.base import ActionRegistry, UnknownAction, clip
from controlplane.actions.builtin import build_registry
from controlplane.durations import spoken
from controlplane.incidents.schemas import AuditEventOut
from controlplane.playbooks.schemas import ExecutionOut, StepOut

VERIFY = "verify.resolved"  # its success is the outcome "resolved N min later", not one more effect
REASON_CHARS = 240  # a failure's reason in the summary; the step shows all of it


@cache
def builtin_registry() -> ActionRegistry:
    """The built-in actions, to describe steps where no service's registry is at hand (a flow's answer).

    Only their describe functions are read, and those are pure: sharing this one registry shares no state.
    """
    return build_registry()


def step_label(step: StepOut) -> str:
    """`step 2 (graph.disable)`, or `rollback of step 2 (graph.enable)`: the step as a person counts it."""
    prefix = "rollback of step" if step.phase == "rollback" else "step"
    return f"{prefix} {step.index + 1} ({step.action})"


def step_effect(step: StepOut, registry: ActionRegistry | None = None) -> str | None:
    """The effect a succeeded step had, as its action describes it; None for a step that did not succeed."""
    if step.status != "succeeded":
        return None
    registry = registry or builtin_registry()
    fallback = f"Ran {step.action}"
    try:
        spec = registry.get(step.action)
    except UnknownAction:
        return fallback  # an action this version no longer has
    if spec.describe_effect is None:
        return fallback
    try:
        return spec.describe_effect(spec.params.model_validate(step.inputs), step.output) or fallback
    except Exception:  # a row an older version wrote, with other inputs: still shown, less eloquently
        return fallback


def described(steps: Sequence[StepOut], registry: ActionRegistry | None = None) -> list[StepOut]:
    """The steps with their `effect` filled in."""
    return [step.model_copy(update={"effect": step_effect(step, registry)}) for step in steps]


def summarize(
    execution: ExecutionOut,
    steps: Sequence[StepOut],
    registry: ActionRegistry | None = None,
    events: Sequence[AuditEventOut] = (),
) -> str:
    """One line: what the succeeded steps did, then how the execution ended or where it stands.

    "Disabled graph chat on langgraph; paged on-call via PagerDuty (critical); resolved 3 min later".
    Steps that only read (a query, a check, a note, a wait) are left out: their steps show what they found.
    """
    registry = registry or builtin_registry()
    status = execution.status
    paged = [page] if (page := _page(events)) else []
    if status == "suppressed":
        return _sentence([f"not run: {execution.reason}" if execution.reason else "not run (suppressed)", *paged])
    if status == "awaiting_approval":
        return _sentence(["waiting for approval"])
    forward = sorted((s for s in steps if s.phase == "forward"), key=lambda s: s.index)
    if execution.dry_run:
        would = [_would(s) for s in forward if s.output.get("dry_run") and "result" not in s.output.get("plan", {})]
        shown = "; ".join(would) if would else "nothing yet"
        ended = "" if status == "dry_run" else f"; {_outcome(execution, forward, [], registry)}"
        return _sentence([f"shadow run, nothing was changed: would {shown}{ended}", *paged])
    parts = [effect for s in forward if (effect := _summarized(s, registry)) is not None]
    parts.append(_outcome(execution, forward, [s for s in steps if s.phase == "rollback"], registry))
    return _sentence([*parts, *paged])


def _would(step: StepOut) -> str:
    """What a shadow run's step would have done: its plan's sentence, or the call it would have made."""
    plan = step.output.get("plan") or {}
    return str(plan.get("sentence") or f"call {step.output.get('would_call') or step.action}")


_PAGED = {
    "pagerduty": "paged on-call via PagerDuty",
    "slack": "told on-call on Slack",
    "log": "paged nobody: the page went to the service log only",
}


def _page(events: Sequence[AuditEventOut]) -> str | None:
    """What became of the page about this execution's failure (playbooks/pages.py), from its audit trail."""
    for event in events:
        if ":page:" not in str(event.detail.get("idempotency_key", "")):
            continue
        if event.action == "notify.sent":
            return _PAGED.get(str(event.detail.get("via")), "paged on-call")
        if event.action == "notify.failed":
            return f"the page to on-call failed: {clip(str(event.detail.get('error', '')), REASON_CHARS)}"
    return None


def _summarized(step: StepOut, registry: ActionRegistry) -> str | None:
    """The step's effect if the summary names it: a change or a message, not a read, nor the verification."""
    if step.status != "succeeded" or step.action == VERIFY:
        return None
    try:
        if registry.get(step.action).reads_only:
            return None
    except UnknownAction:
        pass
    return step_effect(step, registry)


def _outcome(execution: ExecutionOut, forward: list[StepOut], rollback: list[StepOut], registry: ActionRegistry) -> str:
    status = execution.status
    if status == "succeeded":
        verified = next((s for s in forward if s.action == VERIFY and s.status == "succeeded"), None)
        if verified is None or verified.finished_at is None:
            return "done"
        since = execution.started_at or verified.started_at
        return f"resolved {spoken(verified.finished_at - since)} later"
    if status in ("failed", "rolled_back"):
        failed = next((s for s in reversed(forward) if s.status == "failed"), None)
        text = (
            f"failed at {step_label(failed)}: {clip(failed.error or 'no reason recorded', REASON_CHARS)}"
            if failed is not None
            else f"failed: {clip(execution.reason, REASON_CHARS)}"
        )
        undone = [e for s in sorted(rollback, key=lambda s: -s.index) if (e := step_effect(s, registry))]
        if undone:
            text += "; rolled back: " + ", ".join(_continued(e) for e in undone)
        broken = [s for s in rollback if s.status == "failed"]
        if broken:
            text += "; " + "; ".join(f"{step_label(s)} failed: {clip(s.error or '', REASON_CHARS)}" for s in broken)
        return text
    if status == "cancelled":
        return f"cancelled: {execution.reason}" if execution.reason else "cancelled"
    if status in ("running", "waiting"):
        # A waiting step is claimed again at each recheck: for that moment the run is `running`, its step still
        # `waiting`, then `running` while it looks. To the reader it is waiting all along.
        current = next((s for s in forward if s.status in ("running", "waiting")), None)
        if current is None:
            return f"{status} at step {execution.current_step + 1}"
        if current.action == VERIFY:
            return f"waiting for the incident to resolve (verify.resolved, step {current.index + 1})"
        if current.status == "waiting" or status == "waiting":
            return f"waiting at {step_label(current)}"
        return f"running {step_label(current)}"
    if status == "pending":
        return "approved, about to start" if execution.decided_by else "about to start"
    return status.replace("_", " ")


def _continued(text: str) -> str:
    """A sentence as the continuation of a line: `Paged on-call` -> `paged on-call`, `PagerDuty ...` stays."""
    first = text.split(" ", 1)[0]
    if first[:1].isupper() and first[1:].islower():
        return text[:1].lower() + text[1:]
    return text


def _sentence(parts: list[str]) -> str:
    line = "; ".join([parts[0], *(_continued(p) for p in parts[1:])]) if parts else ""
    return line[:1].upper() + line[1:]
