"""Owns the rule-file format (rules/*.yaml): rules, guards, playbooks and steps as validated data."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from controlplane import durations

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,127}$"
# A model as `provider/model` (OpenTelemetry's gen_ai_provider_name and gen_ai_request_model, joined):
# `anthropic/claude-sonnet-4`, `openai/gpt-4o`, `bedrock/anthropic.claude-3:1`; the model part may hold '/'.
LLM_MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}$"
LLM_TARGET_FIELDS = ("llm_models", "min_llm_concurrency", "min_token_budget", "max_disabled_tools")
ServiceLevel = Literal["full", "degraded", "minimal"]  # seed 001's graceful degradation, best first
DEFAULT_APPROVAL_TIMEOUT = timedelta(hours=1)


def error_at(message: str, *at: str | int) -> PydanticCustomError:
    """A model-level validation error that points at a field inside the model.

    Pydantic locates a model validator's error at the model itself; the loader appends `at`
    (kept in the error's context) so `controlplane check` reports the offending line.
    """
    return PydanticCustomError("value_error", message.replace("{", "{{").replace("}", "}}"), {"at": at})


def _bounded_duration(value: object) -> object:
    # timedelta raises OverflowError, which pydantic does not turn into a validation error.
    try:
        return durations.parse_duration(value)
    except OverflowError:
        raise ValueError(f"duration {value!r} is too large") from None


Duration = Annotated[durations.Duration, BeforeValidator(_bounded_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class MaxRuns(_Strict):
    count: int = Field(ge=1)
    per: Duration


class LoopBreaker(_Strict):
    """Quarantine a rule for one guard key after `runs` runs within `within` without a lasting fix."""

    runs: int = Field(default=3, ge=1, le=1000)
    within: Duration = timedelta(hours=1)

    @field_validator("within")
    @classmethod
    def _within_positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s: the window the loop breaker counts runs in")
        return value


def _loop_breaker_off(value: object) -> object:
    # `loop_breaker: false` (or `off`) turns it off; `true` keeps the defaults.
    if value is False or value == "off":
        return None
    return {} if value is True else value


class Guards(_Strict):
    """Limits on how often and how widely a rule acts. Checked in the database, so they hold across replicas."""

    cooldown: Duration | None = None  # per (rule, group key): no new run this soon after the last
    max_runs: MaxRuns | None = None  # per rule, over a sliding window
    max_concurrent: int | None = Field(default=None, ge=1)  # per rule, executions not yet finished
    approval: bool = False  # wait in awaiting_approval until a person approves
    # How many distinct people must approve; giving it (even 1) implies `approval: true`.
    approvals: int = Field(default=1, ge=1, le=5)
    # With approval: cancelled when nobody decides in time, so a late click does not act on a stale alert.
    approval_timeout: Duration = DEFAULT_APPROVAL_TIMEOUT
    dry_run: bool = False  # record what would run, call nothing
    # On by default: a fix that does not last must not run forever. `loop_breaker: false` turns it off.
    loop_breaker: Annotated[LoopBreaker | None, BeforeValidator(_loop_breaker_off)] = LoopBreaker()

    @field_validator("approval_timeout")
    @classmethod
    def _approval_timeout_positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s: an execution waits this long for approval, then is cancelled")
        return value

    @model_validator(mode="before")
    @classmethod
    def _approvals_imply_approval(cls, data: Any) -> Any:
        if isinstance(data, dict) and "approvals" in data:
            if data.get("approval", True) is False:
                raise ValueError("`approvals` asks for approval: drop `approval: false`")
            data = {**data, "approval": True}
        return data


class MetricCondition(_Strict):
    """A PromQL condition evaluated on a schedule instead of an Alertmanager alert."""

    query: str = Field(min_length=1)
    above: float | None = None
    below: float | None = None
    for_: Duration = Field(default=timedelta(0), alias="for")
    labels: dict[str, str] = Field(default_factory=dict)  # labels of the incident it opens
    interval: Duration | None = None  # default: the service's metric-rule interval

    @model_validator(mode="after")
    def _one_threshold(self) -> MetricCondition:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of `above` or `below`")
        return self


class RetryPolicy(_Strict):
    attempts: int = Field(default=3, ge=1, le=10)
    initial: Duration = timedelta(seconds=1)
    max: Duration = timedelta(seconds=60)
    jitter: Duration = timedelta(seconds=1)


class RollbackSpec(_Strict):
    action: str
    with_: dict[str, Any] | None = Field(default=None, alias="with")  # default: the step's own inputs


class Step(_Strict):
    id: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    action: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    when: str | None = None  # Jinja expression; the step is skipped when it is false
    timeout: Duration | None = None
    retry: RetryPolicy | None = None
    rollback: RollbackSpec | None = None
    on_failure: Literal["continue", "abort", "escalate"] = "abort"

    @field_validator("rollback", mode="before")
    @classmethod
    def _rollback_shorthand(cls, value: object) -> object:
        return {"action": value} if isinstance(value, str) else value


class Playbook(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    params: dict[str, Any] = Field(default_factory=dict)  # defaults, overridden by the rule's params
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_step_ids(self) -> Playbook:
        seen: set[str] = set()
        for index, step in enumerate(self.steps):
            if step.id is not None:
                if step.id in seen:
                    raise error_at(f"duplicate step id {step.id!r}", "steps", index, "id")
                seen.add(step.id)
        return self


class Rule(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    enabled: bool = True
    # Alertmanager matcher semantics: `label: value` is equality; a value starting with
    # `=~`, `!~`, `!=` or `=` uses that operator; regexes are anchored (^...$).
    match: dict[str, str] | None = None
    when: MetricCondition | None = None
    group_by: list[str] | None = None  # labels of the guard key; default: the incident grouping
    playbook: str
    params: dict[str, Any] = Field(default_factory=dict)
    guards: Guards = Field(default_factory=Guards)

    @property
    def shadow(self) -> bool:
        """Runs are recorded, never acted on: `mode: shadow`, or its older spelling `guards.dry_run: true`."""
        return self.mode == "shadow" or self.guards.dry_run

    # `shadow`: the rule matches and its guards decide as if it were live, and each run is recorded with
    # what it would have done, acting on nothing and paging nobody. `guards.dry_run: true` is the same.
    mode: Literal["live", "shadow"] = "live"
    # An execution that ends failed or rolled back, an approval that expires, a loop breaker that trips:
    # each pages on-call once (routed by severity). `false` opts the rule out, for rules that page themselves.
    page_on_failure: bool = True

    @model_validator(mode="after")
    def _one_trigger(self) -> Rule:
        if (self.match is None) == (self.when is None):
            raise ValueError("give exactly one of `match` (alert rule) or `when` (metric rule)")
        if self.match is not None and not self.match:
            raise error_at("`match` needs at least one label matcher", "match")
        return self


def _llm_model(value: str) -> str:
    if not re.match(LLM_MODEL_PATTERN, value):
        raise ValueError(f"{value!r} is not `provider/model` (e.g. anthropic/claude-sonnet-4, openai/gpt-4o)")
    return value


LlmModel = Annotated[str, AfterValidator(_llm_model)]


class Target(_Strict):
    """Where remediation acts: a LangGraph deployment's admin API (`http`) or its Kubernetes objects.

    Steps name a target (`with: {target: prod}`); the blast-radius bounds live here, next to
    what they protect, so no rule can ask for more than the target allows.
    """

    name: str = Field(pattern=NAME_PATTERN)
    kind: Literal["http", "kubernetes"]
    url: str | None = None  # http: base URL of the service's admin API
    token_file: str | None = None  # http: file holding the admin API's bearer token (never the token itself)
    namespace: str | None = None  # kubernetes
    deployment: str | None = None  # kubernetes: what k8s.scale / k8s.rollout_restart act on
    kind_of_workload: Literal["Deployment", "StatefulSet"] = "Deployment"
    configmap: str | None = None  # kubernetes: holds `disabled_graphs` and `checkpoint_storage`
    hpa: str | None = None  # kubernetes: the HorizontalPodAutoscaler k8s.patch_hpa edits
    max_disabled_graphs: int = Field(default=1, ge=0)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=20, ge=1)
    # http: the LLM actions (actions/llm.py, tools.py, canary.py) and their bounds.
    llm_models: list[LlmModel] = Field(default_factory=list)  # llm.failover's order
    min_llm_concurrency: int = Field(default=1, ge=1)  # llm.limit never caps a graph's concurrent runs below it
    min_token_budget: int = Field(default=1000, ge=1)  # llm.limit never sets a token budget (per minute) below it
    max_disabled_tools: int = Field(default=1, ge=0)  # tool.disable never leaves more tools disabled
    # http: service.degrade never brings the service below this level (actions/degradation.py). `minimal` by
    # default: every level is the service's own designed fallback (features answer a basic answer, not an
    # error), the seed's service went there unattended, and with two dependencies down the alternative is
    # errors from both features. Set `degraded` (or `full`: never degraded automatically) where a level
    # must wait for a person.
    min_service_level: ServiceLevel = "minimal"

    @model_validator(mode="after")
    def _complete(self) -> Target:
        if self.kind == "http" and not self.url:
            raise error_at("an http target needs `url`", "url")
        if self.kind == "kubernetes" and not self.namespace:
            raise error_at("a kubernetes target needs `namespace`", "namespace")
        if self.kind == "kubernetes":
            for name in LLM_TARGET_FIELDS:
                if name in self.model_fields_set:
                    raise error_at(
                        f"`{name}` is for http targets: the LLM actions act through the service's admin API", name
                    )
        seen: set[str] = set()
        for index, model in enumerate(self.llm_models):
            if model in seen:
                raise error_at(f"llm_models lists {model!r} twice", "llm_models", index)
            seen.add(model)
        if self.min_replicas > self.max_replicas:
            raise error_at("min_replicas is above max_replicas", "min_replicas")
        return self


class Endpoint(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    url: str
    region: str = ""
    priority: int = 0  # lower is preferred
    # How its health is known: probed at the group's health_path, heartbeats it sends
    # (POST /api/v1/endpoints/heartbeat), or both (both must pass).
    checks: Literal["http", "heartbeat", "both"] = "http"


class Recovery(_Strict):
    """What is tried on an endpoint marked failed, before a human is paged (seed 003): an action of the registry.

    Attempt n runs `action` with `with`, then waits `waits[n-1]` (the last wait repeats) and looks
    at the endpoint: healthy again stops the attempts; after the last one fails, on-call is paged.
    """

    action: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    attempts: int = Field(default=3, ge=1, le=10)
    waits: list[Duration] = Field(
        default_factory=lambda: [timedelta(seconds=10), timedelta(seconds=20), timedelta(seconds=40)],
        min_length=1,
        max_length=10,
    )
    severity: Literal["critical", "warning", "info"] = "critical"  # of the page (routed like notify.oncall)


class FailoverScore(_Strict):
    """Choose the next endpoint by seed 003's score instead of priority (failover/scoring.py).

    `cpu` and `memory`: PromQL answering one series per endpoint, its name in the `label` label,
    the share in use (0..1); evaluated by the health checker each round, with each probe's own
    response time. Metrics older than `max_age` are ignored.
    """

    cpu: str = Field(min_length=1)
    memory: str = Field(min_length=1)
    label: str = Field(default="endpoint", min_length=1)
    max_age: Duration = timedelta(seconds=60)


class FailoverGroup(_Strict):
    """Endpoints of one service; the failover manager keeps one of them active (seed 002/003 semantics)."""

    service: str = Field(pattern=NAME_PATTERN)
    endpoints: list[Endpoint] = Field(min_length=1)
    health_path: str = "/health"
    interval: Duration = timedelta(seconds=10)
    timeout: Duration = timedelta(seconds=5)
    failure_threshold: int = Field(default=3, ge=1, le=10)
    recovery_threshold: int = Field(default=2, ge=1, le=10)
    auto_failback: bool = True
    score: FailoverScore | None = None  # unset: the next endpoint is the healthy one of lowest priority
    # An endpoint checked by heartbeat fails a check when its last heartbeat is older than this (seed 003: 10 s);
    # a registration without a heartbeat for `heartbeat_expiry` is removed.
    heartbeat_timeout: Duration = timedelta(seconds=10)
    heartbeat_expiry: Duration = timedelta(hours=24)
    recovery: Recovery | None = None


class RuleFile(_Strict):
    rules: list[Rule] = Field(default_factory=list)
    playbooks: list[Playbook] = Field(default_factory=list)
    targets: list[Target] = Field(default_factory=list)
    failover: list[FailoverGroup] = Field(default_factory=list)
