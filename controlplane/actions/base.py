"""Owns the action contract: the registry, the context a step runs with, and what a step returns.

An action is a plain synchronous function `(ctx, params) -> ActionResult`, declared with
`@action("family.verb", params=Model)` and collected into a registry by `build_registry()`
(actions/builtin.py), one registry per service or test: nothing is global. Its parameter model
is what rule files are checked against at load time; `inverse` names the action that undoes it
(the default rollback); `blast_radius` may refuse a call that would act too widely; `target`
names what it acts on, which keys the circuit breaker and the bulkhead (resilience/), or is
None when the call names nothing the rule files or settings define; `describe_effect` says what
a call did in the operator's words, for the console and the API (playbooks/summary.py); `plan`
says what a call would do, without doing it (a `Plan`; playbooks/planning.py plans whole playbooks).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime
from types import ModuleType
from typing import Any, Generic, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict

from controlplane.actions.ports import ActionPorts
from controlplane.errors import ActionError
from controlplane.errors import BlastRadiusExceeded as BlastRadiusExceeded  # part of the contract actions import
from controlplane.rules.schema import FailoverGroup, Target

P = TypeVar("P", bound=BaseModel)


class Params(BaseModel):
    """Base of action parameter models: unknown keys in a rule file are an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class NoParams(Params):
    pass


@dataclass(frozen=True)
class IncidentView:
    id: int
    key: str
    status: str
    severity: str
    title: str
    group_labels: dict[str, str]


@dataclass(frozen=True)
class AlertView:
    fingerprint: str
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    generator_url: str = ""


@dataclass
class ActionContext:
    """What a running step knows, and what it may reach through `ports` (actions/ports.py).

    `idempotency_key` is stable across retries and resumes of the step; `now` is the service's
    clock; `targets` and `failover` are those of the rule files in force when the step began.
    """

    execution_id: int
    step_index: int
    idempotency_key: str
    rule: str
    incident: IncidentView | None
    alert: AlertView | None
    ports: ActionPorts
    now: Callable[[], datetime]
    step_started_at: datetime  # first start of this step, kept across durable waits and resumes
    dry_run: bool = False
    log: Any = field(default_factory=lambda: structlog.get_logger("controlplane.action"))
    targets: Mapping[str, Target] = field(default_factory=dict)  # from the rule files in force
    failover: Mapping[str, FailoverGroup] = field(default_factory=dict)
    deadline: float | None = None  # time.monotonic() by which this attempt must be done; None: none set
    step: str = ""  # the call as a person counts it, 1-based: "step 2", "rollback of step 2" (step_index is a key)

    def audit(self, action: str, detail: dict[str, Any]) -> None:
        """Record `action` in the audit trail, for this execution and its incident, as done by the rule."""
        self.ports.audit.record(
            actor=f"rule:{self.rule}",
            action=action,
            incident_id=self.incident.id if self.incident else None,
            execution_id=self.execution_id,
            detail=detail,
            now=self.now(),
        )

    def time_left(self, cap: float) -> float:
        """Seconds an outside call may take: `cap`, or less when the step's deadline is nearer.

        Raises once the deadline has passed: a call started then would reach its target after
        the step was recorded failed.
        """
        if self.deadline is None:
            return cap
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ActionError("the step's deadline has passed; no further call is started")
        return min(cap, left)

    def target(self, name: str, kind: str | None = None) -> Target:
        """The named target, or an ActionError an on-call person can act on."""
        found = self.targets.get(name)
        if found is None:
            known = ", ".join(sorted(self.targets)) or "none"
            raise ActionError(f"unknown target {name!r} (defined in rule files: {known})")
        if kind is not None and found.kind != kind:
            raise ActionError(f"target {name!r} is {found.kind}, this action needs a {kind} target")
        return found


@dataclass
class ActionResult:
    """`value` is what templates see as `steps.<id>.value`; `output` is recorded and shown as is.

    A step that must wait (verify.resolved, wait) returns `recheck_at`: the engine releases the
    execution and runs the step again at that time, without holding a worker.
    """

    value: Any = None
    output: dict[str, Any] = field(default_factory=dict)
    recheck_at: datetime | None = None


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What one call would do, decided on the target's current state without changing it.

    `sentence` says it in the operator's words ("scale agents/langgraph 3 → 6 replicas (bounds 1..20)");
    `change` says it as data ({"from": 3, "to": 6, "bounds": [1, 20]}), for a console, an approval or a
    test to compare; `target` is what it acts on, as the rule file names it (None: nothing named).
    `refused` is the bound or blast-radius limit that would refuse the call, in the words the step's
    failure would use; `noop` is True when the target is already as wanted (the call would change
    nothing). A read-only action runs during a plan (its `ran` is the result later steps' templates
    see); a mutating one only reads.
    """

    action: str
    sentence: str
    target: str | None = None
    change: Mapping[str, Any] = field(default_factory=dict)
    refused: str | None = None
    noop: bool = False
    ran: ActionResult | None = None

    def as_dict(self) -> dict[str, Any]:
        """The plan as JSON-ready data (the API's and the console's form)."""
        out: dict[str, Any] = {
            "action": self.action,
            "target": self.target,
            "change": dict(self.change),
            "sentence": self.sentence,
            "refused": self.refused,
            "noop": self.noop,
        }
        if self.ran is not None:
            out["result"] = {"value": self.ran.value, "output": self.ran.output}
        return out


ActionFunc = Callable[[ActionContext, Any], ActionResult]
# What a call would do: reads the target through ctx.ports and never calls a mutating endpoint.
PlanFunc = Callable[[ActionContext, P], Plan]
# The effect a finished call had, from its parameters and its recorded output (`value` and the
# ActionResult's output keys): one short sentence in the operator's words, such as "Disabled graph
# chat on langgraph". Pure: it is called when a step is shown, on what the step's row holds, so a
# row written months ago reads the same and nothing about it has to be stored.
DescribeEffect = Callable[[P, dict[str, Any]], str]


@dataclass(frozen=True)
class ActionSpec(Generic[P]):
    """An action as the registry holds it: its name, parameter model and `func`, then its optional parts.

    `plan` says what a call would change, without changing it (plans, shadow mode, approvals): it
    reads what it needs through the same ports (a ConfigMap key, `GET /graphs`, the incident) and
    never calls a mutating endpoint; every built-in action has one (a test walks the registry).
    The planner (playbooks/planning.py) also runs `blast_radius`, the very check a step runs
    before its call, so a plan and a call cannot disagree on a refusal.

    `describe_effect` is the plan's past tense: the change a call made, from its params and output,
    where a plan will say the change it would make. `reads_only` marks an action that changes
    nothing outside the control plane (a query, a check, a note, a wait): an execution's summary of
    what the automation did leaves it out, its step still shows what it found.
    """

    name: str
    params: type[P]
    func: Callable[[ActionContext, P], ActionResult]
    _: KW_ONLY
    description: str = ""
    inverse: str | None = None
    blast_radius: Callable[[ActionContext, P], str | None] | None = None  # a reason to refuse, or None
    blast_radius_doc: str = ""
    # What it acts on: keys its circuit breaker and bulkhead. It returns None for a name the rule
    # files or settings do not define (the action refuses it), so labels cannot add breakers.
    target: Callable[[ActionContext, P], str | None] | None = None
    describe_effect: DescribeEffect[P] | None = None
    reads_only: bool = False
    plan: PlanFunc[P] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "params": self.params.model_json_schema(),
            "inverse": self.inverse,
            "blast_radius": self.blast_radius_doc or None,
            "reads_only": self.reads_only,
            "plans": self.plan is not None,
        }

    def target_of(self, ctx: ActionContext, params: P) -> str | None:
        """`<action>:<target>`; the action's name when it has no targets; None for an undefined target."""
        if self.target is None:
            return self.name
        target = self.target(ctx, params)
        return None if target is None else f"{self.name}:{target}"


def clip(text: str, limit: int = 80) -> str:
    """`text` on one line and at most `limit` characters, for a description that quotes a message."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


class UnknownAction(KeyError):
    pass


class ActionRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, ActionSpec[Any]] = {}

    def register(self, spec: ActionSpec[Any]) -> None:
        if spec.name in self._specs:
            raise ValueError(f"action {spec.name!r} registered twice")
        self._specs[spec.name] = spec

    def get(self, name: str) -> ActionSpec[Any]:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownAction(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[ActionSpec[Any]]:
        return [self._specs[n] for n in self.names()]


# The attribute `action()` leaves on the functions it declares; `declared_in` collects them.
_SPEC = "action_spec"


def action(
    name: str,
    *,
    params: type[P],
    inverse: str | None = None,
    blast_radius: Callable[[ActionContext, P], str | None] | None = None,
    blast_radius_doc: str = "",
    target: Callable[[ActionContext, P], str | None] | None = None,
    describe_effect: DescribeEffect[P] | None = None,
    reads_only: bool = False,
    plan: PlanFunc[P] | None = None,
    into: ActionRegistry | None = None,
) -> Callable[[Callable[[ActionContext, P], ActionResult]], Callable[[ActionContext, P], ActionResult]]:
    """Declare `func` as action `name`; its docstring's first line is its description.

    The declaration registers nothing by itself: `build_registry()` (actions/builtin.py) collects
    the declared actions of the modules it lists. `into` registers the action there at once (a
    test's own actions).
    """

    def declare(func: Callable[[ActionContext, P], ActionResult]) -> Callable[[ActionContext, P], ActionResult]:
        description = (func.__doc__ or "").strip().splitlines()[0] if func.__doc__ else ""
        spec = ActionSpec(
            name=name,
            params=params,
            func=func,
            description=description,
            inverse=inverse,
            blast_radius=blast_radius,
            blast_radius_doc=blast_radius_doc,
            target=target,
            describe_effect=describe_effect,
            reads_only=reads_only,
            plan=plan,
        )
        setattr(func, _SPEC, spec)
        if into is not None:
            into.register(spec)
        return func

    return declare


def declared_in(module: ModuleType) -> list[ActionSpec[Any]]:
    """The actions declared with `@action` in `module` itself (not ones it imports), in the order written."""
    return [
        getattr(value, _SPEC)
        for value in vars(module).values()
        if callable(value) and getattr(value, "__module__", None) == module.__name__ and hasattr(value, _SPEC)
    ]
