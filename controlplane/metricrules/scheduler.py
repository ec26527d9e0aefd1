"""Owns running metric rules on a schedule: one APScheduler job per rule, in background threads.

Only the leader should run it: two replicas evaluating the same rules would not open duplicate
incidents (state is locked per rule and alert episodes are deduplicated), but they would query
Prometheus twice as often. The rules provider is empty on followers (services.py), and `fence`
(LeaderElector.fence) stops a leader whose term ended from recording an evaluation; with SQLite
there is one process, and it is the leader.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import Engine

from controlplane.interval_jobs import IntervalJobs
from controlplane.leader import Fence, StaleLeader
from controlplane.metricrules.evaluator import (
    DEFAULT_GROUP_BY,
    Evaluation,
    EvaluationObserver,
    IngestHook,
    QueryClient,
    evaluate_rule,
)
from controlplane.rules.schema import Rule

log = structlog.get_logger("controlplane.metricrules")

JOB_PREFIX = "metric-rule:"


def _utcnow() -> datetime:
    return datetime.now(UTC)


class MetricRuleScheduler:
    """Evaluates every enabled metric rule each `when.interval` (default `interval_seconds`).

    `rules_provider` returns the current rules (all of them; alert rules are skipped); call
    `resync()` after a reload to add, drop or re-time jobs. An evaluation that raises (the
    database is down, a hook failed) is logged and counted; the next one runs as planned.
    """

    def __init__(
        self,
        rules_provider: Callable[[], Sequence[Rule]],
        *,
        client: QueryClient,
        engine: Engine,
        metrics: EvaluationObserver | None,
        interval_seconds: float,
        group_by: Sequence[str] = DEFAULT_GROUP_BY,
        on_ingest: IngestHook | None = None,
        evaluated: Callable[[Evaluation], None] | None = None,
        clock: Callable[[], datetime] = _utcnow,
        fence: Fence | None = None,
    ) -> None:
        """`fence` (LeaderElector.fence) runs first in every evaluation's write: leader-only work.
        `on_ingest` runs inside an evaluation's transaction when it ingests its alert, `evaluated`
        after it committed."""
        self._fence = fence
        self._rules_provider = rules_provider
        self._client = client
        self._engine = engine
        self._metrics = metrics
        self._interval = timedelta(seconds=interval_seconds)
        self._group_by = list(group_by)
        self._on_ingest = on_ingest
        self._evaluated = evaluated
        self._clock = clock
        self._lock = threading.Lock()
        self._rules: dict[str, Rule] = {}
        self._jobs = IntervalJobs(self._run, prefix=JOB_PREFIX)

    def start(self) -> None:
        self.resync()
        self._jobs.start()
        log.info("metric_rules.started", rules=len(self._rules))

    def shutdown(self, wait: bool = True) -> None:
        self._jobs.shutdown(wait=wait)

    @property
    def running(self) -> bool:
        return self._jobs.running

    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules.values())

    def resync(self) -> None:
        """Match the jobs to the provider's current metric rules; a rule's next run keeps its timing
        unless its interval changed, so a reload does not make every rule evaluate at once."""
        wanted = {rule.name: rule for rule in self._rules_provider() if rule.when is not None and rule.enabled}
        self._jobs.sync(
            {name: (rule.when.interval if rule.when else None) or self._interval for name, rule in wanted.items()}
        )
        with self._lock:
            self._rules = wanted

    def evaluate_now(self) -> list[Evaluation]:
        """Evaluate every current metric rule once, in this thread (tests, `controlplane check --live`)."""
        evaluations = []
        for rule in self.rules():
            evaluation = self._evaluate(rule)
            if evaluation is not None:
                evaluations.append(evaluation)
        return evaluations

    def _run(self, name: str) -> None:
        with self._lock:
            rule = self._rules.get(name)
        if rule is not None:  # dropped by a resync while this run was queued
            self._evaluate(rule)

    def _evaluate(self, rule: Rule) -> Evaluation | None:
        now = self._clock()
        try:
            evaluation = evaluate_rule(
                rule,
                client=self._client,
                engine=self._engine,
                now=now,
                group_by=self._group_by,
                observer=self._metrics,
                on_ingest=self._on_ingest,
                fence=self._fence,
            )
            if self._evaluated is not None:
                self._evaluated(evaluation)
            return evaluation
        except StaleLeader as exc:  # leadership moved on since this job was scheduled: not an error
            log.info("metric_rule.skipped_not_leader", rule=rule.name, reason=str(exc))
            return None
        except Exception as exc:  # the schedule outlives any one evaluation
            log.exception("metric_rule.evaluation_crashed", rule=rule.name)
            if self._metrics is not None:
                state = "unknown"
                self._metrics.observe(
                    Evaluation(
                        rule=rule.name,
                        outcome="error",
                        state=state,
                        previous_state=state,
                        value=None,
                        evaluated_at=now,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                )
            return None
