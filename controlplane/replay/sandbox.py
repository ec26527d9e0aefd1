"""Owns the sandbox a replay runs in: an in-memory SQLite database the real trigger and guards decide in,
with a clock that jumps from one alert's arrival to the next.

The model (what makes the guards decide as the service did):
- Each alert is triggered at the moment the service triggered it: the `created_at` of the executions it
  made, else its `first_received_at`; alerts that share that moment are one batch (one transaction),
  through `playbooks.trigger.trigger_for_alerts`, the service's own code, with the guards of each rule.
- Executions never run in the sandbox. One the service also ran (same rule, same alert) ends when the
  real one ended, in the real one's status, and its ledger outcome becomes `resolved` when the real one's
  did (a run whose outcome is `recurred` now counts as resolved from its end: the trigger marks it
  recurred again when its key fires). So `active`, `max_concurrent` and the loop breaker see what the
  service saw. An end counts from when the service's guards last saw the run in progress, if later than
  its `finished_at` (a suppression by `active` names the run): on PostgreSQL a worker's end commits a few
  milliseconds after its clock read, and a trigger in between still saw the run. A suppression by
  `max_concurrent` names no run: the rule's runs that ended up to COMMIT_LAG before it count as still in
  progress then. (An end at the very instant of a trigger counts as ended.)
- One the service did not run (a candidate rule set decided otherwise) is assumed to take the rule's mean
  real duration (0 when it never ran) and succeed without a settled outcome; one that waits for approval,
  to be cancelled when its approval timeout passes.
- The sandbox starts from the service's state at the start of the range: the executions the guards
  could still see then (within the longest guard window, or still in progress) and the quarantines.
  Quarantines are lifted when the service's quarantine of the same rule and key was lifted; the global
  switches (pause, dry-run) change when the audit trail says they did.
"""

from __future__ import annotations

import bisect
import heapq
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, create_engine, select, update
from sqlalchemy.pool import StaticPool

from controlplane.db.models import Base
from controlplane.db.tables import (
    alerts_t,
    audit_t,
    automation_t,
    executions_t,
    incidents_t,
    links_t,
    pages_t,
    quarantines_t,
)
from controlplane.playbooks.trigger import trigger_for_alerts
from controlplane.replay.history import Switch
from controlplane.rules.loader import RuleSet

_e = executions_t.c
_q = quarantines_t.c
TERMINAL_RUN = ("succeeded", "failed", "rolled_back", "cancelled", "dry_run")
_FINISH = (
    update(executions_t)
    .where(_e.id == bindparam("eid"))
    .values(status=bindparam("to"), finished_at=bindparam("at"), updated_at=bindparam("at"))
)
_RESOLVED = (
    update(executions_t)
    .where(_e.id == bindparam("eid"), _e.outcome.is_(None))
    .values(outcome="resolved", outcome_at=bindparam("at"))
)
_LIFT = (
    update(quarantines_t)
    .where(
        _q.rule_name == bindparam("rule"),
        _q.guard_key == bindparam("key"),
        _q.lifted_at.is_(None),
        _q.created_at <= bindparam("at"),
    )
    .values(lifted_at=bindparam("at"), lifted_by="replay", lift_reason="lifted then in the service's history")
)
_ACTIVE_RUN = re.compile(r"execution #(\d+) for ")
_TICK = timedelta(microseconds=1)
COMMIT_LAG = timedelta(seconds=2)  # how long after its clock read a worker's end may commit
_MADE = select(_e.id, _e.rule_name, _e.alert_id, _e.guard_key, _e.status, _e.guard, _e.dry_run).where(
    _e.id > bindparam("after")
)


@dataclass(frozen=True)
class Made:
    """One execution the replay made: the guards' decision for one (rule, alert)."""

    rule: str
    alert_id: int
    guard_key: str
    status: str
    guard: str | None
    dry_run: bool


def resolved_at(real: Any) -> datetime | None:
    """When a real execution's ledger outcome became `resolved` (see the module docstring), if it did."""
    if real.outcome == "resolved":
        return real.outcome_at
    if real.outcome == "recurred":
        return real.finished_at
    return None


@dataclass
class Sandbox:
    rules: RuleSet
    default_group_by: Sequence[str]
    _events: list[tuple[datetime, int, str, tuple[Any, ...]]] = field(default_factory=list)
    _seq: int = 0
    _last_id: int = 0
    _incidents: set[int] = field(default_factory=set)
    _durations: dict[str, tuple[timedelta, int]] = field(default_factory=dict)
    _seen_active: dict[int, datetime] = field(default_factory=dict)  # real execution id -> last seen in progress
    _seen_full: dict[str, list[datetime]] = field(default_factory=dict)  # rule -> when max_concurrent held

    def __post_init__(self) -> None:
        self.engine = create_engine("sqlite://", poolclass=StaticPool)
        Base.metadata.create_all(self.engine)
        self.conn: Connection = self.engine.connect()
        self.conn.begin()  # one transaction, never committed: the sandbox is thrown away
        self._metric_rules = {rule.name: rule for rule in self.rules.metric_rules}

    def prune(self, now: datetime, lookback: timedelta) -> None:
        """Forget what no guard reads any more, so a long replay stays as fast and small as a short one: the
        alerts already triggered, the audit trail, pages, and executions ended before every guard's window."""
        before = now - lookback
        e = executions_t.c
        self.conn.execute(
            executions_t.delete().where(e.finished_at.is_not(None), e.finished_at < before, e.created_at < before)
        )
        for table in (links_t, alerts_t, audit_t, pages_t):
            self.conn.execute(table.delete())

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()

    # The start state
    def seed(self, executions: Iterable[Any], quarantines: Iterable[Any], *, start: datetime) -> None:
        rows = []
        for real in executions:
            self.learn(real)
            finished = real.finished_at is not None and real.finished_at <= start
            resolved = resolved_at(real)
            outcome = real.outcome if real.outcome_at is not None and real.outcome_at <= start else None
            if resolved is not None and resolved > start:
                self._at(resolved, "resolved", real.id)
            if not finished:
                self._finish_as_real(real.id, real)
            rows.append(self._execution_row(real, status=real.status if finished else "running", outcome=outcome))
        if rows:
            self.conn.execute(executions_t.insert(), rows)
            self._last_id = max(row["id"] for row in rows)
        for q in quarantines:
            values = dict(q._mapping)
            if q.created_at < start:
                if q.lifted_at is not None and q.lifted_at > start:
                    values.update(lifted_at=None, lifted_by=None, lift_reason=None)
                self.conn.execute(quarantines_t.insert(), values)
            if q.lifted_at is not None and q.lifted_at > start:
                self._at(q.lifted_at, "lift", q.rule_name, q.guard_key)

    def switches(self, switches: Sequence[Switch], *, start: datetime) -> None:
        for switch in switches:
            if switch.at <= start:
                self._switch(switch)
            else:
                self._at(switch.at, "switch", switch)

    @staticmethod
    def _execution_row(real: Any, *, status: str, outcome: str | None) -> dict[str, Any]:
        return {
            "id": real.id,
            "rule_name": real.rule_name,
            "playbook_name": real.playbook_name,
            "trigger_key": real.trigger_key,
            "guard_key": real.guard_key,
            "incident_id": real.incident_id,
            "alert_id": real.alert_id,
            "status": status,
            "reason": real.reason,
            "dry_run": real.dry_run,
            "playbook": {},
            "params": {},
            "context": {},
            "created_at": real.created_at,
            "updated_at": real.created_at,
            "finished_at": real.finished_at if status in TERMINAL_RUN or status == "suppressed" else None,
            "guard": real.guard,
            "outcome": outcome,
            "outcome_at": real.outcome_at if outcome else None,
        }

    # The clock
    def _at(self, when: datetime, kind: str, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, kind, args))

    def advance(self, now: datetime) -> None:
        """Apply everything that happened in the service's history up to `now`."""
        while self._events and self._events[0][0] <= now:
            at, _, kind, args = heapq.heappop(self._events)
            if kind == "finish":
                seen = self._seen_in_progress(at, args[2], args[3])
                if seen is not None:  # the service's guards still saw it in progress then
                    self._at(seen + _TICK, kind, *args)
                    continue
                self.conn.execute(_FINISH, {"eid": args[0], "to": args[1], "at": at})
            elif kind == "resolved":
                self.conn.execute(_RESOLVED, {"eid": args[0], "at": at})
            elif kind == "lift":
                self.conn.execute(_LIFT, {"rule": args[0], "key": args[1], "at": at})
            else:
                self._switch(args[0])

    def _switch(self, switch: Switch) -> None:
        self.conn.execute(automation_t.delete())
        self.conn.execute(
            automation_t.insert().values(
                id=1,
                paused=switch.paused,
                dry_run=switch.dry_run,
                reason=switch.reason,
                updated_by=switch.actor,
                updated_at=switch.at,
            )
        )

    def _finish_as_real(self, execution_id: int, real: Any) -> None:
        if real.finished_at is not None and real.status in TERMINAL_RUN:
            self._at(real.finished_at, "finish", execution_id, real.status, real.id, real.rule_name)

    def saw_active(self, real: Any) -> None:
        """A real suppression by `active` names the run the guards saw in progress at its creation; one by
        `max_concurrent` says the rule's runs that had just ended were still seen in progress."""
        found = _ACTIVE_RUN.match(real.reason) if real.guard == "active" else None
        if found is not None:
            run = int(found.group(1))
            self._seen_active[run] = max(self._seen_active.get(run, real.created_at), real.created_at)
        elif real.guard == "max_concurrent":
            bisect.insort(self._seen_full.setdefault(real.rule_name, []), real.created_at)

    def _seen_in_progress(self, end: datetime, real_id: int | None, rule: str) -> datetime | None:
        """The last moment after `end` at which the service's guards still saw the run in progress, if any."""
        seen = self._seen_active.get(real_id) if real_id is not None else None
        full = self._seen_full.get(rule, [])
        last_full = bisect.bisect_right(full, end + COMMIT_LAG)
        held = full[last_full - 1] if last_full and full[last_full - 1] >= end else None
        return max([at for at in (seen, held) if at is not None and at >= end], default=None)

    def learn(self, real: Any) -> None:
        """A real run's duration: what a run the service did not make is assumed to take, for its rule."""
        if real.status in TERMINAL_RUN and real.finished_at is not None and real.status != "cancelled":
            total, n = self._durations.get(real.rule_name, (timedelta(0), 0))
            self._durations[real.rule_name] = (total + (real.finished_at - real.created_at), n + 1)

    # The alerts
    def add_incidents(self, rows: Sequence[dict[str, Any]]) -> None:
        rows = [row for row in rows if row["id"] not in self._incidents]
        if rows:
            self.conn.execute(incidents_t.insert(), rows)
            self._incidents.update(row["id"] for row in rows)

    def needs_incident(self, incident_id: int) -> bool:
        return incident_id not in self._incidents

    def matches(self, alertname: str, labels: dict[str, str]) -> bool:
        return alertname in self._metric_rules or bool(self.rules.match(labels))

    def trigger(self, now: datetime, alerts: Sequence[Any], real: dict[tuple[str, int], Any]) -> list[Made]:
        """One transaction of the service: these alerts arrive (firing) at `now`; the guards decide."""
        self.advance(now)
        self.conn.execute(alerts_t.insert(), [_alert_row(a) for a in alerts])
        self.conn.execute(
            links_t.insert(), [{"incident_id": a.incident_id, "alert_id": a.id, "attached_at": now} for a in alerts]
        )
        plain = [a.id for a in alerts if a.alertname not in self._metric_rules]
        trigger_for_alerts(
            self.conn, alert_ids=plain, rules=self.rules, default_group_by=self.default_group_by, now=now
        )
        for a in alerts:
            if a.alertname in self._metric_rules:
                rule = self._metric_rules[a.alertname]
                trigger_for_alerts(
                    self.conn,
                    alert_ids=[a.id],
                    rules=self.rules,
                    default_group_by=self.default_group_by,
                    now=now,
                    only=rule,
                )
        made = []
        for row in self.conn.execute(_MADE, {"after": self._last_id}):
            self._last_id = max(self._last_id, row.id)
            made.append(Made(row.rule_name, row.alert_id, row.guard_key, row.status, row.guard, row.dry_run))
            if row.status != "suppressed":
                self._schedule(row, now, real.get((row.rule_name, row.alert_id)))
        return made

    def _schedule(self, row: Any, now: datetime, real: Any) -> None:
        if real is not None and real.status != "suppressed":
            self._finish_as_real(row.id, real)
            resolved = resolved_at(real)
            if resolved is not None:
                self._at(resolved, "resolved", row.id)
            return
        rule = self.rules.rule(row.rule_name)
        if row.status == "awaiting_approval" and rule is not None:
            self._at(now + rule.guards.approval_timeout, "finish", row.id, "cancelled", None, row.rule_name)
            return
        total, n = self._durations.get(row.rule_name, (timedelta(0), 0))
        status = "dry_run" if row.dry_run else "succeeded"
        self._at(now + (total / n if n else timedelta(0)), "finish", row.id, status, None, row.rule_name)


def _alert_row(a: Any) -> dict[str, Any]:
    values = {key: value for key, value in a._mapping.items() if key != "incident_id"}
    values["status"] = "firing"
    return values


def fired_on_arrival(alert: Any) -> bool:
    """Whether the alert arrived firing (only those trigger): it still fires, or it ended after it arrived."""
    return alert.status == "firing" or alert.ends_at is None or alert.ends_at > alert.first_received_at
