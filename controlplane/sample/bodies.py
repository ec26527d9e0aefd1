"""Owns the sample admin API's request bodies: each validated at the boundary, before the service sees it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Backend = Literal["primary", "backup"]
LLMError = Literal["rate_limited", "quota_exhausted", "overloaded", "timeout"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DisableRequest(_Body):
    """Optional bounds the caller wants enforced atomically with the disable (the control plane sends both)."""

    max_disabled: int | None = Field(default=None, ge=0)
    keep_one_enabled: bool = False


class DegradeRequest(_Body):
    """Go down to `level` with `features` off as well (never up: a lower level already set stays)."""

    level: Literal["degraded", "minimal"]
    features: list[str] = Field(default_factory=list, max_length=100)


class RestoreRequest(_Body):
    """Go up: `features` back on; `level: degraded` leaves minimal (features kept off); an empty body: full."""

    level: Literal["full", "degraded"] | None = None
    features: list[str] | None = Field(default=None, max_length=100)


class SwitchRequest(_Body):
    backend: Backend


class CleanupRequest(_Body):
    backend: Backend | None = None  # None: every backend


class ModelRequest(_Body):
    """Move a graph to another `provider/model` of the catalogue."""

    model: str = Field(min_length=3, max_length=200)


class LimitsRequest(_Body):
    """A graph's caps; None leaves one as it is, 0 removes it."""

    concurrency: int | None = Field(default=None, ge=0, le=10_000)
    token_budget: int | None = Field(default=None, ge=0, le=1_000_000_000)

    @model_validator(mode="after")
    def _something(self) -> LimitsRequest:
        if self.concurrency is None and self.token_budget is None:
            raise ValueError("set `concurrency` or `token_budget` (0 removes a cap)")
        return self


class CanaryRequest(_Body):
    runs: int = Field(default=5, ge=1, le=20)


class FaultRequest(_Body):
    """One or more faults, each on its subject.

    A graph: error_rate, latency_seconds, interrupt_rate, token_multiplier, loop_tool ("" stops the loop).
    A model (`provider/model`): llm_error with error_rate (default 1), ttft_seconds.
    A tool: error_rate. Also a storage backend or a dependency (`broken`), `backlog` (extra runs per tick),
    `checkpointer_check_fails` and `healthy` (False: /health answers 503).
    `error_rate` belongs to the one subject named among graph, model and tool.
    """

    graph: str | None = None
    error_rate: float | None = Field(default=None, ge=0, le=1)
    latency_seconds: float | None = Field(default=None, ge=0, le=3600)
    interrupt_rate: float | None = Field(default=None, ge=0, le=1)
    token_multiplier: float | None = Field(default=None, gt=0, le=1000)
    loop_tool: str | None = None
    model: str | None = None
    llm_error: LLMError | None = None
    ttft_seconds: float | None = Field(default=None, ge=0, le=3600)
    tool: str | None = None
    backlog: int | None = Field(default=None, ge=0, le=10_000)
    checkpointer_check_fails: bool | None = None
    storage: Backend | None = None
    dependency: str | None = None
    broken: bool | None = None
    healthy: bool | None = None

    @model_validator(mode="after")
    def _subjects(self) -> FaultRequest:
        subjects = [s for s in ("graph", "model", "tool") if getattr(self, s) is not None]
        graph_only = {
            "latency_seconds": self.latency_seconds,
            "interrupt_rate": self.interrupt_rate,
            "token_multiplier": self.token_multiplier,
            "loop_tool": self.loop_tool,
        }
        if self.error_rate is not None and len(subjects) != 1:
            raise ValueError("error_rate needs exactly one `graph`, `model` or `tool`")
        if self.graph is not None and self.error_rate is None and all(v is None for v in graph_only.values()):
            raise ValueError(
                "a graph fault needs error_rate, latency_seconds, interrupt_rate, token_multiplier or loop_tool"
            )
        for name, value in graph_only.items():
            if value is not None and self.graph is None:
                raise ValueError(f"{name} needs `graph`")
        if self.model is not None and self.error_rate is not None and self.llm_error is None:
            raise ValueError("error_rate on a model needs llm_error (rate_limited, quota_exhausted, ...)")
        if self.model is not None and (self.llm_error, self.ttft_seconds) == (None, None):
            raise ValueError("a model fault needs llm_error (with error_rate) or ttft_seconds")
        if (self.llm_error, self.ttft_seconds) != (None, None) and self.model is None:
            raise ValueError("llm_error and ttft_seconds need `model`")
        if self.tool is not None and self.error_rate is None:
            raise ValueError("a tool fault needs error_rate")
        if self.storage is not None and self.broken is None:
            raise ValueError("a storage fault needs `broken`")
        if self.dependency is not None and self.broken is None:
            raise ValueError("a dependency fault needs `broken`")
        if self.broken is not None and (self.storage is None) == (self.dependency is None):
            raise ValueError("`broken` needs one `storage` backend or one `dependency`")
        others = (self.storage, self.dependency, self.backlog, self.checkpointer_check_fails, self.healthy)
        if not subjects and all(v is None for v in others):
            raise ValueError(
                "name a `graph`, `model`, `tool`, `storage` backend, `dependency`, `backlog`, "
                "`checkpointer_check_fails` or `healthy`"
            )
        return self
