"""A service's history made by the service's own code over a hand-moved clock, for the replay tests and bench.

Each notification goes through ingest_notification and trigger_for_alerts in one transaction, as the ingest
writer does; a stand-in worker moves each execution through transition() (approve/reject, running, its end);
the leader's ledger sweep (settle_due) runs at every tick; quarantines are lifted and automation paused with
the service's own functions. Only the clock is ours.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from controlplane.db.engine import write_transaction
from controlplane.db.tables import executions_t
from controlplane.ingest.payload import AlertmanagerNotification
from controlplane.ingest.store import ingest_notification
from controlplane.playbooks import ledger, quarantine
from controlplane.playbooks import service as executions
from controlplane.playbooks.guards import set_automation
from controlplane.playbooks.state import transition
from controlplane.playbooks.trigger import trigger_for_alerts
from controlplane.rules.loader import RuleSet
from tests.helpers import T0, sample_notification

GROUP_BY = ["alertname", "namespace"]


@dataclass
class History:
    engine: Engine
    rules: RuleSet
    run_for: timedelta = timedelta(minutes=2)
    resolve_after: timedelta | None = timedelta(minutes=3)
    fail_every: int = 0  # every n-th execution that runs fails (0: none)
    _events: list[tuple[datetime, int, str, tuple[Any, ...]]] = field(default_factory=list)
    _seq: int = 0
    _ran: int = 0

    def at(self, minute: float, kind: str, *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (T0 + timedelta(minutes=minute), self._seq, kind, args))

    def fire(self, minute: float, alertname: str, namespace: str, **labels: str) -> None:
        self.at(minute, "fire", alertname, namespace, labels)

    def run(self) -> None:
        while self._events:
            now, _, kind, args = heapq.heappop(self._events)
            with write_transaction(self.engine, sync="normal") as conn:
                getattr(self, "_" + kind)(conn, now, *args)
                ledger.settle_due(conn, now=now)

    def _notify(self, conn: Any, now: datetime, alerts: list[dict[str, Any]]) -> list[int]:
        notification = AlertmanagerNotification.model_validate(sample_notification(*alerts))
        return ingest_notification(conn, notification, group_by=GROUP_BY, now=now).new_alert_ids

    def _fire(self, conn: Any, now: datetime, alertname: str, namespace: str, labels: dict[str, str]) -> None:
        alert = {
            "labels": {"alertname": alertname, "namespace": namespace, **labels},
            "fingerprint": f"{alertname}-{namespace}-{'-'.join(labels.values())}",
            "startsAt": now.isoformat(),
            "status": "firing",
        }
        new = self._notify(conn, now, [alert])
        for made in trigger_for_alerts(conn, alert_ids=new, rules=self.rules, default_group_by=GROUP_BY, now=now):
            if made.status == "awaiting_approval":
                self.at_time(now + timedelta(minutes=1), "decide", made.execution_id)
            elif made.status == "pending":
                self.at_time(now + self.run_for, "finish", made.execution_id)
        if self.resolve_after is not None:
            ended = now + self.resolve_after
            self.at_time(ended, "resolve", {**alert, "status": "resolved", "endsAt": ended.isoformat()})

    def at_time(self, when: datetime, kind: str, *args: Any) -> None:
        self.at((when - T0) / timedelta(minutes=1), kind, *args)

    def _resolve(self, conn: Any, now: datetime, alert: dict[str, Any]) -> None:
        self._notify(conn, now, [alert])

    def _decide(self, conn: Any, now: datetime, execution_id: int) -> None:
        if execution_id % 2:
            executions.approve(conn=conn, execution_id=execution_id, actor="alice", reason="ok", now=now)
            self.at_time(now + self.run_for, "finish", execution_id)
        else:
            executions.reject(conn=conn, execution_id=execution_id, actor="alice", reason="no", now=now)

    def _finish(self, conn: Any, now: datetime, execution_id: int) -> None:
        self._ran += 1
        transition(conn, execution_id, "running", actor="worker", now=now)
        failed = self.fail_every and self._ran % self.fail_every == 0
        transition(conn, execution_id, "failed" if failed else "succeeded", actor="worker", now=now)
        if failed:
            conn.execute(executions_t.update().where(executions_t.c.id == execution_id).values(outcome="failed"))

    def _lift(self, conn: Any, now: datetime) -> None:
        for q in quarantine.active(conn):
            quarantine.lift(conn, int(str(q["id"])), actor="alice", reason="fixed by hand", now=now)

    def _switch(self, conn: Any, now: datetime, paused: bool) -> None:
        set_automation(conn, actor="alice", now=now, reason="maintenance", paused=paused)


def decisions(engine: Engine) -> list[tuple[str, int | None, str, str, str | None]]:
    """Every execution: rule, alert, guard key, whether suppressed, by which guard."""
    e = executions_t.c
    with engine.connect() as conn:
        rows = conn.execute(select(e.rule_name, e.alert_id, e.guard_key, e.status, e.guard).order_by(e.id)).all()
    return [
        (r.rule_name, r.alert_id, r.guard_key, "suppressed" if r.status == "suppressed" else "run", r.guard)
        for r in rows
    ]
