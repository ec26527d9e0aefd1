"""Owns the sample service's graceful degradation (seed 001): service levels, degradable features, their dependencies.

Each run of a graph uses every degradable feature once, through `with_degradation` as the seed's
decorator: a feature switched off answers its fallback (counted `fallback`), never an error; a
feature still on whose dependency is down fails (counted `error`). That is what degrading buys:
while a dependency is down, switching its feature off turns errors into fallback answers.

The state is a level and the set of features switched off by name:
- `full`: every feature on (no feature off);
- `degraded`: the named features off, the others on;
- `minimal`: every degradable feature off, whatever the set holds (the seed's minimal turns off all
  its features); the set is kept, so coming back up from minimal to degraded keeps those off.

`degrade` only ever goes down: it adds features and lowers the level, never raises it, so it is
idempotent and two remediations degrading at once (one per failed dependency) do not undo each
other. `restore` goes up: named features back on, or from minimal back to degraded, or everything
back to full. Each answers its `previous` state, so a caller can undo exactly what it did.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge

from controlplane.sample.errors import SampleError, unknown

Level = Literal["full", "degraded", "minimal"]
LEVELS: tuple[Level, ...] = get_args(Level)  # best first
# Each dependency and the feature it feeds (the seed's health checker: a failed dependency degrades its feature).
DEPENDENCIES: dict[str, str] = {
    "analysis_model": "advanced_analysis",
    "external_api": "external_api",
    "vector_store": "retrieval",
}
# Each degradable feature and what it answers while switched off (the seed's fallbacks: a basic answer).
FALLBACKS: dict[str, str] = {
    "advanced_analysis": "basic analysis",
    "external_api": "cached external data",
    "retrieval": "answer without retrieved documents",
}
FEATURES = tuple(FALLBACKS)
RESULTS = ("ok", "fallback", "error")

T = TypeVar("T")


class UnknownFeature(SampleError):
    status_code = 404


class DegradationMetrics:
    def __init__(self, r: CollectorRegistry) -> None:
        self.level = Gauge(
            "langgraph_service_level", "1 for the service's current level, else 0", ["level"], registry=r
        )
        self.feature_degraded = Gauge(
            "langgraph_feature_degraded", "1 while the feature is off (answers its fallback)", ["feature"], registry=r
        )
        self.dependency_up = Gauge(
            "langgraph_dependency_up",
            "1 if the dependency's health check passed, else 0; `feature` is the feature it feeds",
            ["dependency", "feature"],
            registry=r,
        )
        self.feature_requests = Counter(
            "langgraph_feature_requests_total",
            "Uses of a degradable feature by result (ok, fallback while off, error while on with its dependency down)",
            ["feature", "result"],
            registry=r,
        )


@dataclass(frozen=True)
class State:
    level: Level
    off: frozenset[str]

    def view(self) -> dict[str, Any]:
        return {"level": self.level, "features": sorted(self.off)}


class Degradation:
    """The level, the features off and the dependencies' health; every public method holds the service's lock."""

    def __init__(self, registry: CollectorRegistry, lock: threading.RLock) -> None:
        self.lock = lock
        self.minimal = False
        self.off: set[str] = set()
        self.broken: set[str] = set()  # dependencies failing their health check (fault)
        self.metrics = DegradationMetrics(registry)
        for feature in FEATURES:
            for result in RESULTS:
                self.metrics.feature_requests.labels(feature, result)
        self._update_gauges()

    # -- reads -------------------------------------------------------------------------------

    @property
    def level(self) -> Level:
        return "minimal" if self.minimal else "degraded" if self.off else "full"

    def state(self) -> State:
        return State(self.level, frozenset(self.off))

    def available(self, feature: str) -> bool:
        """The seed's `is_feature_available`: False while the feature answers its fallback."""
        return not self.minimal and feature not in self.off

    def view(self) -> dict[str, Any]:
        """GET /admin/degradation."""
        with self.lock:
            return {
                **self.state().view(),
                "unavailable": [f for f in FEATURES if not self.available(f)],
                "catalogue": {f: {"available": self.available(f), "fallback": FALLBACKS[f]} for f in FEATURES},
                "dependencies": {d: {"healthy": d not in self.broken, "feature": f} for d, f in DEPENDENCIES.items()},
                "levels": list(LEVELS),
            }

    # -- commands ------------------------------------------------------------------------------

    def degrade(self, level: Level, features: Iterable[str]) -> dict[str, Any]:
        """Go down to `level` (never up) with `features` off as well; `degraded` needs at least one feature."""
        with self.lock:
            named = self._known(features)
            if level == "full":
                raise SampleError("`full` is not a degradation: POST /admin/restore goes back to full")
            if level == "degraded" and not named:
                raise SampleError(f"level `degraded` needs `features` to switch off (features: {', '.join(FEATURES)})")
            before = self.state()
            self.off |= named
            self.minimal = self.minimal or level == "minimal"
            return self._changed(before)

    def restore(self, level: Level | None = None, features: Iterable[str] | None = None) -> dict[str, Any]:
        """Go up: named features back on; level `degraded` leaves minimal (features kept off); neither: full."""
        with self.lock:
            named = self._known(features or ())
            if level == "minimal":
                raise SampleError("`minimal` is not a restore: POST /admin/degrade goes down")
            before = self.state()
            if (level is None and features is None) or level == "full":
                self.minimal, self.off = False, set()
            else:
                self.off -= named
                if level == "degraded":
                    self.minimal = False
            return self._changed(before)

    def set_dependency(self, name: str, broken: bool) -> None:
        with self.lock:
            if name not in DEPENDENCIES:
                raise SampleError(unknown("dependency", name, DEPENDENCIES))
            (self.broken.add if broken else self.broken.discard)(name)
            self._update_gauges()

    def clear_faults(self) -> None:
        with self.lock:
            self.broken.clear()
            self._update_gauges()

    def check(self, dependency: str | None) -> None:
        if dependency is not None and dependency not in DEPENDENCIES:
            raise SampleError(unknown("dependency", dependency, DEPENDENCIES))

    # -- the features running --------------------------------------------------------------------

    def with_degradation(self, feature: str, fallback: Callable[[], T]) -> Callable[[Callable[[], T]], Callable[[], T]]:
        """The seed's decorator: the wrapped call answers `fallback()` while `feature` is off, never an error."""

        def decorator(func: Callable[[], T]) -> Callable[[], T]:
            def wrapper() -> T:
                if not self.available(feature):
                    self.metrics.feature_requests.labels(feature, "fallback").inc()
                    return fallback()
                return func()

            return wrapper

        return decorator

    def serve(self) -> dict[str, str | None]:
        """One run's use of every feature: its answer, its fallback, or None when it failed."""
        with self.lock:
            return {feature: self._use(feature) for feature in FEATURES}

    def _use(self, feature: str) -> str | None:
        dependency = next(d for d, f in DEPENDENCIES.items() if f == feature)

        def fallback() -> str | None:
            return FALLBACKS[feature]

        @self.with_degradation(feature, fallback)
        def call() -> str | None:
            if dependency in self.broken:
                self.metrics.feature_requests.labels(feature, "error").inc()
                return None
            self.metrics.feature_requests.labels(feature, "ok").inc()
            return feature

        return call()

    # -- helpers ---------------------------------------------------------------------------------

    def _known(self, features: Iterable[str]) -> set[str]:
        named = set(features)
        for feature in sorted(named):
            if feature not in FALLBACKS:
                raise UnknownFeature(unknown("feature", feature, FEATURES))
        return named

    def _changed(self, before: State) -> dict[str, Any]:
        self._update_gauges()
        after = self.state()
        return {**after.view(), "previous": before.view(), "changed": after != before}

    def _update_gauges(self) -> None:
        m = self.metrics
        for level in LEVELS:
            m.level.labels(level).set(1 if level == self.level else 0)
        for feature in FEATURES:
            m.feature_degraded.labels(feature).set(0 if self.available(feature) else 1)
        for dependency, feature in DEPENDENCIES.items():
            m.dependency_up.labels(dependency, feature).set(0 if dependency in self.broken else 1)
