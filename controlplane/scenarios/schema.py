"""Owns the scenario file format of `controlplane test` and reading one with every value's line kept.

A scenario says, in the manner of `promtool test rules`: what arrives when (alerts over a fake clock,
`at: 0s`, `at: 2m`), what Prometheus answers (for `prometheus.*` steps and metric rules), how the
targets are at the start (graphs, checkpoint storage, replicas), what people do (approvals), and what
the control plane must make of it (`expect`: incidents, executions with their guard decisions and
step plans, pages). An example, beside the rules it tests (`rules/tests/high-error-rate.yaml`):

    name: one failing graph is disabled, a second alert within the cooldown is suppressed
    targets:
      langgraph: {graphs: [chat, search, summarize]}
    prometheus:
      - query: 'sum by (graph_name) (rate(langgraph_executions_total{status="error"}[5m]))'
        result: [{labels: {graph_name: chat}, value: 0.4}]
    alerts:
      - at: 0s
        labels: {alertname: LangGraphHighErrorRate, severity: critical, namespace: agents}
    expect:
      executions:
        - {at: 0s, rule: high-error-rate, decision: run}
          steps: [...]

Expected items are compared on the keys they give (a key left out is not checked); a string value
written `=~regex` must match the whole actual value. Lists (incidents, executions, pages, steps) are
compared item by item, in order, and must have as many items as the scenario gives.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from controlplane.durations import Duration
from controlplane.rules.schema import LlmModel, ServiceLevel
from controlplane.rules.source import RuleFileError, Source, read_source
from controlplane.sample.bodies import LLMError
from controlplane.sample.degradation import FEATURES
from controlplane.sample.llm import DEFAULT_MODELS, DEFAULT_TOOLS, MODEL_ID

START = datetime(2026, 1, 1, tzinfo=UTC)  # the fake clock's 0s, unless a scenario says `start`
LIMIT = timedelta(days=7)  # how far a scenario's clock may run: a test, not a simulation of a quarter


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sample(_Strict):
    """One series of an instant-vector answer."""

    labels: dict[str, str] = Field(default_factory=dict)
    value: float


class Answer(_Strict):
    """What Prometheus answers to `query` from `at` on (until a later answer to the same query)."""

    query: str
    at: Duration = timedelta(0)
    result: list[Sample] = Field(default_factory=list)


class AlertIn(_Strict):
    """An Alertmanager notification's alert, arriving at `at` (firing, or resolved: it ends then)."""

    at: Duration
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    status: Literal["firing", "resolved"] = "firing"

    @field_validator("labels")
    @classmethod
    def _named(cls, labels: dict[str, str]) -> dict[str, str]:
        if not labels.get("alertname"):
            raise ValueError("an alert needs an `alertname` label")
        return labels


class Approval(_Strict):
    """An operator approves (or rejects) the execution of `rule` that waits for approval, at `at`."""

    at: Duration
    rule: str
    by: str = "operator"
    reject: bool = False


class Limits(_Strict):
    """A graph's caps: concurrent runs and tokens per minute (None: no cap)."""

    concurrency: int | None = Field(default=None, ge=1)
    token_budget: int | None = Field(default=None, ge=1)


class HttpTarget(_Strict):
    """An `http` target (the admin API contract, as the sample service implements it), as it is at 0s.

    Its LLM side (`GET /llm`): the `models` it offers, in order (`provider/model`); each graph's model
    (`graph_models`, default: the first); the models failing and how (`unhealthy: {model: overloaded}`);
    its `tools` and which are `disabled_tools`; graphs' caps (`limits`). Its service `level` (`GET
    /degradation`) and the `degraded_features` switched off (sample/degradation.py's features).
    """

    graphs: list[str] = Field(min_length=1)
    disabled: list[str] = Field(default_factory=list)
    storage: Literal["primary", "backup"] = "primary"
    broken_storage: list[Literal["primary", "backup"]] = Field(default_factory=list)
    corrupted: dict[Literal["primary", "backup"], int] = Field(default_factory=dict)
    models: list[LlmModel] = Field(default_factory=lambda: list(DEFAULT_MODELS), min_length=1)
    graph_models: dict[str, str] = Field(default_factory=dict)
    unhealthy: dict[str, LLMError] = Field(default_factory=dict)
    tools: list[str] = Field(default_factory=lambda: list(DEFAULT_TOOLS))
    disabled_tools: list[str] = Field(default_factory=list)
    limits: dict[str, Limits] = Field(default_factory=dict)
    level: ServiceLevel = "full"
    degraded_features: list[str] = Field(default_factory=list)

    @field_validator("models")
    @classmethod
    def _modelled(cls, models: list[str]) -> list[str]:
        for model in models:  # what the sample service can hold (its model part has no '/')
            if not re.fullmatch(MODEL_ID, model):
                raise ValueError(f"{model!r}: the scenario's sample service takes models matching {MODEL_ID}")
        return models

    @model_validator(mode="after")
    def _known(self) -> HttpTarget:
        for what, names, known, among in (
            ("disabled graphs", self.disabled, self.graphs, "graphs"),
            ("graphs of `graph_models`", self.graph_models, self.graphs, "graphs"),
            ("graphs of `limits`", self.limits, self.graphs, "graphs"),
            ("models of `graph_models`", self.graph_models.values(), self.models, "models"),
            ("models of `unhealthy`", self.unhealthy, self.models, "models"),
            ("disabled tools", self.disabled_tools, self.tools, "tools"),
            ("degraded features", self.degraded_features, FEATURES, "the sample's features"),
        ):
            unknown = sorted(set(names) - set(known))
            if unknown:
                raise ValueError(f"{what} {unknown} are not in `{among}`")
        if self.level == "degraded" and not self.degraded_features:
            raise ValueError("level `degraded` needs `degraded_features` (the features switched off)")
        if self.level == "full" and self.degraded_features:
            raise ValueError("level `full` has no `degraded_features`: give level `degraded` or `minimal`")
        return self


class KubernetesTarget(_Strict):
    """A `kubernetes` target's workload, HPA and ConfigMap keys, as they are at 0s."""

    replicas: int = Field(ge=0)
    hpa: tuple[int, int] | None = None  # (min, max)
    configmap: dict[str, str] = Field(default_factory=dict)


class Notify(_Strict):
    """Which notification routes are configured (a plan says "not configured" for the others)."""

    slack: bool = True
    pagerduty: bool = True
    slack_channel: str = "#oncall"
    routes: dict[str, Literal["pagerduty", "slack", "log"]] | None = None  # default: the service's


class Expect(_Strict):
    """What must come of it; a list left out is not checked, an empty list means none."""

    incidents: list[dict[str, Any]] | None = None
    executions: list[dict[str, Any]] | None = None
    pages: list[dict[str, Any]] | None = None


class Scenario(_Strict):
    name: str | None = None
    rules: str | None = None  # the rules directory, relative to this file (default: the one above it)
    enable: list[str] = Field(default_factory=list)  # rules to test as if `enabled: true` (not switched on yet)
    start: datetime = START
    group_by: list[str] | None = None  # the service's default incident grouping
    until: Duration | None = None  # how long the clock runs (default: 1h after the last event)
    # By target name; checked against the target's kind in the rules (HttpTarget or KubernetesTarget).
    targets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    prometheus: list[Answer] = Field(default_factory=list)
    notify: Notify = Notify()
    alerts: list[AlertIn] = Field(min_length=1)
    approvals: list[Approval] = Field(default_factory=list)
    expect: Expect

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @model_validator(mode="after")
    def _bounded(self) -> Scenario:
        latest = max([a.at for a in self.alerts] + [a.at for a in self.approvals] + [self.until or timedelta(0)])
        if latest > LIMIT:
            raise ValueError(f"a scenario runs at most {LIMIT.days} days of fake time")
        return self


class ScenarioFile(BaseModel):
    """One parsed file: its scenarios (one document, or a `scenarios:` list) and the source that locates lines."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    path: Path
    source: Any  # rules.source.Source: keeps every value's line
    scenarios: list[tuple[tuple[str | int, ...], Scenario]]

    def line(self, at: tuple[str | int, ...]) -> int:
        return int(self.source.locate(at)[0])


def read_scenarios(path: Path) -> tuple[ScenarioFile | None, list[RuleFileError]]:
    """Parse a scenario file; on any problem, None and `file:line: message` errors."""
    errors: list[RuleFileError] = []
    source = read_source(path, errors)
    if source is None:
        return None, errors
    data = source.data
    if isinstance(data, dict) and "scenarios" in data:
        items = data["scenarios"]
        if not isinstance(items, list) or not items or set(data) != {"scenarios"}:
            source.error(("scenarios",), "`scenarios` is a list of scenarios, and the only key beside them")
            return None, errors
        located: list[tuple[tuple[str | int, ...], Any]] = [(("scenarios", i), item) for i, item in enumerate(items)]
    else:
        located = [((), data)]
    parsed = []
    for at, raw in located:
        if not isinstance(raw, dict):
            source.error(at, "a scenario is a mapping (name, targets, alerts, expect, ...)")
            continue
        try:
            parsed.append((at, Scenario.model_validate(raw)))
        except ValidationError as exc:
            report(source, at, exc)
    if errors:
        return None, errors
    return ScenarioFile(path=path, source=source, scenarios=parsed), errors


def report(source: Source, at: tuple[str | int, ...], exc: ValidationError) -> None:
    """Each of pydantic's errors as `file:line: where: message`, located under `at`."""
    for err in exc.errors():
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        source.error((*at, *err["loc"]), message)  # Source.error names where (`alerts[0].at`)
