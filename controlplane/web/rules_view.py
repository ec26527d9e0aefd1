"""Owns what the Rules page shows: each rule with its guard state, its effectiveness and its shadow runs."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, literal_column, select

from controlplane.db.tables import executions_t, metric_states_t
from controlplane.playbooks import ledger, quarantine
from controlplane.rules.loader import RuleSet
from controlplane.rules.schema import Playbook, Rule

# -- rules and playbooks -------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricStateView:
    state: str
    last_value: float | None
    last_evaluated_at: datetime | None
    last_error: str | None
    consecutive_errors: int
    active_since: datetime | None


@dataclass(frozen=True)
class RuleView:
    rule: Rule
    last_run_at: datetime | None  # latest execution that was not suppressed
    last_guard_key: str | None
    cooldown_left: timedelta | None  # for the last run's guard key; None when no cooldown is running
    runs_in_window: int | None  # None without a max_runs guard
    metric: MetricStateView | None
    outcomes: dict[str, ledger.Record] = field(default_factory=dict)  # period (24h, 7d) -> its record
    # Shadow rules: their runs since the rules were loaded, "would run" or the guard that would have blocked.
    shadow_runs: dict[str, int] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "metric" if self.rule.when is not None else "alert"


@dataclass(frozen=True)
class RulesView:
    rules: list[RuleView]
    playbooks: list[Playbook]
    loaded_at: datetime | None
    errors: list[str]
    directory: str
    quarantines: list[dict[str, Any]] = field(default_factory=list)  # not lifted yet, newest first


def rules_view(
    *, conn: Connection, ruleset: RuleSet, now: datetime, loaded_at: datetime | None, errors: list[str], directory: str
) -> RulesView:
    """Guard state the way guards.decide() counts it: suppressed executions never count as runs."""
    # A literal, not a parameter: the partial indexes that leave a storm's suppressed runs out match only it.
    counted = executions_t.c.status != literal_column("'suppressed'")
    latest = (
        select(executions_t.c.rule_name, func.max(executions_t.c.created_at).label("at"))
        .where(counted)
        .group_by(executions_t.c.rule_name)
        .subquery()
    )
    last: dict[str, tuple[datetime, str]] = {
        row.rule_name: (row.created_at, row.guard_key)
        for row in conn.execute(
            select(executions_t.c.rule_name, executions_t.c.created_at, executions_t.c.guard_key)
            .join(
                latest,
                and_(executions_t.c.rule_name == latest.c.rule_name, executions_t.c.created_at == latest.c.at),
            )
            .where(counted)
        )
    }
    windows = {r.name: r.guards.max_runs.per for r in ruleset.rules if r.guards.max_runs}
    recent: defaultdict[str, list[datetime]] = defaultdict(list)
    if windows:
        for row in conn.execute(
            select(executions_t.c.rule_name, executions_t.c.created_at).where(
                counted,
                executions_t.c.rule_name.in_(list(windows)),
                executions_t.c.created_at > now - max(windows.values()),
            )
        ):
            recent[row.rule_name].append(row.created_at)
    metric = {
        row.rule_name: MetricStateView(
            row.state,
            row.last_value,
            row.last_evaluated_at,
            row.last_error,
            row.consecutive_errors,
            row.active_since,
        )
        for row in conn.execute(select(metric_states_t))
    }
    shadow: defaultdict[str, dict[str, int]] = defaultdict(dict)
    shadow_rules = [rule.name for rule in ruleset.rules if rule.shadow]
    if shadow_rules and loaded_at is not None:
        e = executions_t.c
        for row in conn.execute(
            select(e.rule_name, e.guard, func.count().label("n"))
            .where(e.rule_name.in_(shadow_rules), e.dry_run.is_(True), e.created_at >= loaded_at)
            .group_by(e.rule_name, e.guard)
        ):
            shadow[row.rule_name][row.guard or "would run"] = int(row.n)
    outcomes: defaultdict[str, dict[str, ledger.Record]] = defaultdict(dict)
    for record in ledger.records(conn, now=now):
        outcomes[record.rule][record.period] = record
    views = []
    for rule in ruleset.rules:
        at, key = last.get(rule.name, (None, None))
        cooldown_left = None
        if at is not None and rule.guards.cooldown and at + rule.guards.cooldown > now:
            cooldown_left = at + rule.guards.cooldown - now
        runs = None
        if rule.name in windows:
            runs = sum(1 for t in recent[rule.name] if t > now - windows[rule.name])
        views.append(
            RuleView(
                rule,
                at,
                key,
                cooldown_left,
                runs,
                metric.get(rule.name),
                outcomes.get(rule.name, {}),
                shadow.get(rule.name, {}),
            )
        )
    return RulesView(
        rules=views,
        playbooks=list(ruleset.playbooks.values()),
        loaded_at=loaded_at,
        errors=errors,
        directory=directory,
        quarantines=quarantine.active(conn),
    )
