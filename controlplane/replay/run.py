"""Owns a replay from end to end: read the range from the service's database (read-only), feed it through
the sandbox (replay/sandbox.py, where the model is explained), compare with what the service did."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from itertools import groupby
from typing import Any

from sqlalchemy import Connection, Engine

from controlplane.errors import InvalidInput
from controlplane.playbooks.ledger import WINDOW
from controlplane.replay import history
from controlplane.replay.report import ReplayReport, Tally, decision
from controlplane.replay.sandbox import Made, Sandbox, fired_on_arrival
from controlplane.rules.loader import RuleSet

PAGE = 2000
Progress = Callable[[int, int], None]  # (alerts done, alerts in range)


class RangeTooLarge(InvalidInput):
    """More alerts in the range than the caller allows."""


def lookback(rules: RuleSet) -> timedelta:
    """How far back the guards of `rules` look: the sandbox starts with the executions of that span."""
    spans = [WINDOW]
    for rule in rules.rules:
        g = rule.guards
        spans += [d for d in (g.cooldown, g.max_runs.per if g.max_runs else None) if d]
        if g.loop_breaker is not None:
            spans.append(g.loop_breaker.within)
    return max(spans)


def replay(
    source: Engine,
    *,
    rules: RuleSet,
    rules_label: str,
    default_group_by: Sequence[str],
    start: datetime,
    end: datetime,
    max_alerts: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    page: int = PAGE,
) -> ReplayReport:
    """Replay the alerts that arrived in [start, end) through `rules`; nothing is written to `source`."""
    if end <= start:
        raise InvalidInput(f"empty range: {start.isoformat()} is not before {end.isoformat()}")
    with source.connect() as conn:
        if conn.dialect.name == "postgresql":  # one snapshot for the whole read
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            total = history.count_alerts(conn, start=start, end=end)
            if max_alerts is not None and total > max_alerts:
                raise RangeTooLarge(
                    f"{total:,} alerts arrived between {start.isoformat()} and {end.isoformat()}: "
                    f"at most {max_alerts:,} can be replayed here; choose a shorter range (or use the command line)"
                )
            return _run(conn, rules, rules_label, default_group_by, start, end, total, progress, should_stop, page)


def _run(
    conn: Connection,
    rules: RuleSet,
    rules_label: str,
    default_group_by: Sequence[str],
    start: datetime,
    end: datetime,
    total: int,
    progress: Progress | None,
    should_stop: Callable[[], bool],
    page: int,
) -> ReplayReport:
    began = time.perf_counter()
    sandbox = Sandbox(rules, default_group_by)
    tally = Tally()
    done = 0
    partial = False
    try:
        span = lookback(rules)
        sandbox.seed(
            history.executions_before(conn, start=start, lookback=start - span),
            history.quarantines_until(conn, end=end),
            start=start,
        )
        sandbox.switches(history.automation_switches(conn, end=end), start=start)
        for rows in history.alert_pages(conn, start=start, end=end, size=page):
            if should_stop():
                partial = True
                break
            moment = _replay_page(conn, sandbox, tally, rows)
            if moment is not None:
                sandbox.prune(moment, span)
            done += len(rows)
            if progress is not None:
                progress(done, total)
    finally:
        sandbox.close()
    return ReplayReport(
        start=start,
        end=end,
        rules=rules_label,
        alerts=done,
        alerts_in_range=total,
        partial=partial,
        seconds=time.perf_counter() - began,
        per_rule=tally.per_rule(),
        differences=tally.differences,
        first_differences=tally.shown,
    )


def _replay_page(conn: Connection, sandbox: Sandbox, tally: Tally, rows: Sequence[Any]) -> datetime | None:
    """One page of alerts: batches by the moment the service triggered them, then the comparison. The last
    moment replayed (None when no alert matched a rule)."""
    rows = list({row.id: row for row in reversed(rows)}.values())[::-1]  # an alert in two incidents: the first
    real: dict[tuple[str, int], Any] = {}
    when: dict[int, datetime] = {}
    for execution in history.executions_of(conn, [row.id for row in rows]):
        real[execution.rule_name, execution.alert_id] = execution
        sandbox.learn(execution)
        sandbox.saw_active(execution)
        if execution.alert_id not in when or execution.created_at < when[execution.alert_id]:
            when[execution.alert_id] = execution.created_at
    candidates = [
        row
        for row in rows
        if row.incident_id is not None and fired_on_arrival(row) and sandbox.matches(row.alertname, row.labels)
    ]
    missing = sorted({row.incident_id for row in candidates if sandbox.needs_incident(row.incident_id)})
    sandbox.add_incidents(history.incidents(conn, missing))

    def moment(row: Any) -> datetime:
        return when.get(row.id, row.first_received_at)

    candidates.sort(key=lambda row: (moment(row), row.id))
    made: dict[tuple[str, int], Made] = {}
    last = None
    for now, batch in groupby(candidates, key=moment):
        last = now
        for one in sandbox.trigger(now, list(batch), real):
            made[one.rule, one.alert_id] = one
    for key in sorted(set(real) | set(made)):
        r, m = real.get(key), made.get(key)
        tally.add(
            key[0],
            key[1],
            (r.guard_key if r else "", m.guard_key if m else ""),
            decision(r.status, r.guard, r.dry_run) if r else "no execution",
            decision(m.status, m.guard, m.dry_run) if m else "no execution",
        )
    return last
