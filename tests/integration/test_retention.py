"""Retention on SQLite and PostgreSQL, on a fake clock: what goes, what an open incident, a running
execution, a guard window or the loop breaker still needs stays, the counts it exports, the archive's
round trip, and pruning only on the leader."""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import structlog
from sqlalchemy import Connection, Engine, insert, select, text

from controlplane.db.engine import write_transaction
from controlplane.db.models import Base
from controlplane.db.tables import (
    alerts_t,
    audit_t,
    executions_t,
    incidents_t,
    links_t,
    notification_threads_t,
    pages_t,
    quarantines_t,
    silences_t,
    steps_t,
)
from controlplane.leader import StaleLeader
from controlplane.retention import archive
from controlplane.retention.prune import Policy
from controlplane.retention.sweeps import RetentionSweeps
from controlplane.rules.schema import Rule

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def ago(days: float) -> datetime:
    return NOW - days * DAY


class World:
    """Rows as the service writes them, at chosen ages."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.serial = 0

    def next(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    def incident(self, *, resolved_days: float | None, alerts: int = 2, firing: bool = False) -> int:
        """An incident opened a day before it resolved (None: still open), with `alerts` alerts."""
        opened = ago((resolved_days or 0) + 1)
        key = self.next("key")
        resolved_at = None if resolved_days is None else ago(resolved_days)
        incident_id = self.conn.execute(
            insert(incidents_t)
            .values(
                key=key,
                open_key=key if resolved_at is None else None,
                status="open" if resolved_at is None else "resolved",
                severity="critical",
                title=key,
                group_labels={"alertname": "GraphErrors"},
                opened_at=opened,
                updated_at=resolved_at or opened,
                resolved_at=resolved_at,
            )
            .returning(incidents_t.c.id)
        ).scalar_one()
        self.audit("incident.opened", opened, incident_id=incident_id)
        for _ in range(alerts):
            alert_id = self.alert(opened, resolved_at, firing=firing)
            self.conn.execute(insert(links_t).values(incident_id=incident_id, alert_id=alert_id, attached_at=opened))
            self.audit("alert.firing", opened, incident_id=incident_id, detail={"alert_id": alert_id})
            if resolved_at is not None and not firing:
                self.audit("alert.resolved", resolved_at, incident_id=incident_id, detail={"alert_id": alert_id})
        if resolved_at is not None:
            self.audit("incident.resolved", resolved_at, incident_id=incident_id)
        return int(incident_id)

    def alert(self, at: datetime, resolved_at: datetime | None, *, firing: bool) -> int:
        fingerprint = self.next("fp")
        return int(
            self.conn.execute(
                insert(alerts_t)
                .values(
                    fingerprint=fingerprint,
                    alertname="GraphErrors",
                    status="firing" if firing or resolved_at is None else "resolved",
                    labels={"alertname": "GraphErrors", "graph": fingerprint},
                    annotations={"summary": "errors"},
                    starts_at=at,
                    ends_at=None if firing else resolved_at,
                    first_received_at=at,
                    last_received_at=resolved_at or at,
                )
                .returning(alerts_t.c.id)
            ).scalar_one()
        )

    def audit(self, action: str, at: datetime, **refs: Any) -> int:
        detail = refs.pop("detail", {})
        values = {"at": at, "actor": "controlplane", "action": action, "detail": detail, **refs}
        return int(self.conn.execute(insert(audit_t).values(**values).returning(audit_t.c.id)).scalar_one())

    def execution(
        self,
        incident_id: int | None,
        *,
        days: float,
        status: str = "succeeded",
        rule: str = "restart",
        steps: int = 2,
        page: bool = False,
    ) -> int:
        at = ago(days)
        execution_id = self.conn.execute(
            insert(executions_t)
            .values(
                rule_name=rule,
                playbook_name="restart",
                trigger_key=self.next("trigger"),
                guard_key="GraphErrors",
                incident_id=incident_id,
                status=status,
                playbook={"name": "restart", "steps": []},
                params={},
                context={"alert": {"labels": {"graph": "a"}}},
                created_at=at,
                updated_at=at,
                finished_at=at if status not in ("awaiting_approval", "running", "waiting", "pending") else None,
                guard="cooldown" if status == "suppressed" else None,
            )
            .returning(executions_t.c.id)
        ).scalar_one()
        for index in range(steps):
            self.conn.execute(
                insert(steps_t).values(
                    execution_id=execution_id,
                    phase="forward",
                    index=index,
                    action="notify.log",
                    status="succeeded",
                    inputs={"text": "hello"},
                    output={"sent": True},
                    idempotency_key=f"{execution_id}-{index}",
                    started_at=at,
                    finished_at=at,
                    duration_ms=1.5,
                )
            )
        self.audit(f"execution.{status}", at, incident_id=incident_id, execution_id=execution_id)
        if page:
            self.conn.execute(
                insert(pages_t).values(
                    kind="execution_failed",
                    execution_id=execution_id,
                    incident_id=incident_id,
                    rule_name=rule,
                    reason="it failed",
                    created_at=at,
                    sent_at=at,
                    outcome="slack",
                )
            )
        return int(execution_id)

    def quarantine(self, incident_id: int, execution_id: int, *, lifted_days: float | None) -> int:
        return int(
            self.conn.execute(
                insert(quarantines_t)
                .values(
                    rule_name="restart",
                    guard_key="GraphErrors",
                    execution_id=execution_id,
                    incident_id=incident_id,
                    reason="3 runs within 1h",
                    runs=[execution_id],
                    created_at=ago(100),
                    lifted_at=None if lifted_days is None else ago(lifted_days),
                    lifted_by=None if lifted_days is None else "alice",
                )
                .returning(quarantines_t.c.id)
            ).scalar_one()
        )


def build(engine: Engine, make: Callable[[World], Any]) -> Any:
    with write_transaction(engine) as conn:
        return make(World(conn))


def sweeps(engine: Engine, rules: list[Rule] | None = None, **options: Any) -> tuple[RetentionSweeps, Counter[str]]:
    counted: Counter[str] = Counter()
    made = RetentionSweeps(
        engine,
        policy=options.pop("policy", Policy()),
        rules=lambda: rules or [],
        is_leader=options.pop("is_leader", lambda: True),
        fence=options.pop("fence", lambda _conn: 1),
        counted=lambda table, rows: counted.update({table: rows}),
        failed=lambda: counted.update({"FAILED": 1}),
        clock=lambda: NOW,
        **options,
    )
    return made, counted


def ids(engine: Engine, table: Any) -> set[int]:
    with engine.connect() as conn:
        return set(conn.scalars(select(table.c.id)))


def rows(engine: Engine, table: Any, column: Any, value: int) -> int:
    with engine.connect() as conn:
        return len(conn.execute(select(table).where(column == value)).all())


def snapshot(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table retention touches, in key order."""
    with engine.connect() as conn:
        return {
            name: [dict(row) for row in conn.execute(select(table).order_by(*table.primary_key.columns)).mappings()]
            for name in archive.TABLES
            for table in [Base.metadata.tables[name]]
        }


def test_an_old_resolved_incident_goes_with_everything_it_holds(engine: Engine) -> None:
    def make(world: World) -> None:
        incident_id = world.incident(resolved_days=100)
        execution_id = world.execution(incident_id, days=100, status="failed", page=True)
        world.conn.execute(
            insert(notification_threads_t).values(
                incident_id=incident_id, channel="#oncall", ts="1.2", created_at=ago(100)
            )
        )
        world.conn.execute(
            insert(silences_t).values(
                silence_id="s-1",
                incident_id=incident_id,
                execution_id=execution_id,
                alertmanager_url="http://127.0.0.1:9093",
                matchers={"alertname": "GraphErrors"},
                created_by="controlplane",
                created_at=ago(100),
                ends_at=ago(99),
            )
        )

    build(engine, make)
    retention, counted = sweeps(engine)
    done = retention.sweep_now()

    assert done is not None
    expected = {
        "incidents": 1,
        "alerts": 2,
        "incident_alerts": 2,
        "executions": 1,
        "execution_steps": 2,
        "pages": 1,
        # incident.opened, 2 alert.firing, 2 alert.resolved, incident.resolved, and the run's own
        "audit_events": 7,
        "notification_threads": 1,
        "silences": 1,
    }
    assert dict(done.deleted) == expected
    assert counted == Counter(expected)  # what /metrics' controlplane_pruned_rows_total adds up
    for table in (incidents_t, alerts_t, executions_t, steps_t, audit_t, pages_t, silences_t):
        assert ids(engine, table) == set(), table.name
    again = retention.sweep_now()
    assert again is not None and not again.deleted  # nothing left: the next round deletes nothing


def test_what_is_still_needed_stays_whatever_its_age(engine: Engine) -> None:
    def make(world: World) -> dict[str, int]:
        kept: dict[str, int] = {}
        kept["open"] = world.incident(resolved_days=None, alerts=3)  # opened 1 day ago... made older below
        world.conn.execute(text("UPDATE incidents SET opened_at = :at"), {"at": ago(200)})
        kept["open_run"] = world.execution(kept["open"], days=150)
        kept["open_suppressed"] = world.execution(kept["open"], days=150, status="suppressed", steps=0)
        kept["recent"] = world.incident(resolved_days=80)
        kept["recent_run"] = world.execution(kept["recent"], days=80)
        kept["waiting"] = world.incident(resolved_days=120)
        kept["waiting_run"] = world.execution(kept["waiting"], days=120, status="awaiting_approval", steps=0)
        kept["quarantined"] = world.incident(resolved_days=120)
        kept["quarantined_run"] = world.execution(kept["quarantined"], days=120, status="failed")
        world.quarantine(kept["quarantined"], kept["quarantined_run"], lifted_days=None)
        kept["still_firing"] = world.incident(resolved_days=120, firing=True)  # resolved by hand
        kept["cooled"] = world.incident(resolved_days=100)
        kept["cooled_run"] = world.execution(kept["cooled"], days=100, rule="slow-cooldown")
        return kept

    kept = build(engine, make)
    before = snapshot(engine)
    slow = Rule.model_validate(
        {"name": "slow-cooldown", "match": {"alertname": "X"}, "playbook": "p", "guards": {"cooldown": "180d"}}
    )
    keep_alert_audits = Policy(alert_audit=timedelta(days=365))  # they go after 30 days: tested below
    done = sweeps(engine, rules=[slow], policy=keep_alert_audits)[0].sweep_now()

    assert done is not None and not done.deleted, done
    assert snapshot(engine) == before
    # Without the rule whose cooldown looks back 180 days, its run (and incident) may go; nothing else.
    done = sweeps(engine, policy=keep_alert_audits)[0].sweep_now()
    assert done is not None
    assert done.deleted["incidents"] == 1 and done.deleted["executions"] == 1
    assert kept["cooled"] not in ids(engine, incidents_t)
    assert ids(engine, incidents_t) == {kept[k] for k in ("open", "recent", "waiting", "quarantined", "still_firing")}
    assert {kept[k] for k in ("open_run", "open_suppressed", "recent_run", "waiting_run", "quarantined_run")} == ids(
        engine, executions_t
    )
    assert rows(engine, links_t, links_t.c.incident_id, kept["open"]) == 3


def test_suppressed_runs_and_alert_audit_rows_go_sooner(engine: Engine) -> None:
    def make(world: World) -> dict[str, int]:
        made: dict[str, int] = {}
        made["recent"] = world.incident(resolved_days=40, alerts=2)  # kept 90 days; its alerts' audit rows 30
        made["old_suppressed"] = world.execution(made["recent"], days=20, status="suppressed", steps=0)
        made["new_suppressed"] = world.execution(made["recent"], days=10, status="suppressed", steps=0)
        made["run"] = world.execution(made["recent"], days=40)
        made["open"] = world.incident(resolved_days=None, alerts=1)
        world.conn.execute(
            text("UPDATE audit_events SET at = :at WHERE incident_id = :i"), {"at": ago(60), "i": made["open"]}
        )
        return made

    made = build(engine, make)
    done = sweeps(engine)[0].sweep_now()

    assert done is not None
    # The suppressed run older than 14 days, with its audit row; 4 alert.* rows of the resolved incident.
    assert dict(done.deleted) == {"executions": 1, "audit_events": 1 + 4}
    assert ids(engine, executions_t) == {made["new_suppressed"], made["run"]}
    with engine.connect() as conn:
        left = Counter(conn.scalars(select(audit_t.c.action).where(audit_t.c.incident_id == made["recent"])))
        open_actions = Counter(conn.scalars(select(audit_t.c.action).where(audit_t.c.incident_id == made["open"])))
    assert left == {"incident.opened": 1, "incident.resolved": 1, "execution.succeeded": 1, "execution.suppressed": 1}
    assert open_actions == {"incident.opened": 1, "alert.firing": 1}  # an open incident keeps its alerts' rows


def test_history_of_no_incident_goes_with_the_incidents(engine: Engine) -> None:
    def make(world: World) -> None:
        world.audit("automation.changed", ago(100))
        world.audit("automation.changed", ago(10))
        world.execution(None, days=100)
        world.execution(None, days=100, status="waiting", steps=0)
        incident_id = world.incident(resolved_days=10)
        world.quarantine(incident_id, world.execution(incident_id, days=10), lifted_days=95)

    build(engine, make)
    done = sweeps(engine)[0].sweep_now()

    assert done is not None
    assert dict(done.deleted) == {"executions": 1, "execution_steps": 2, "audit_events": 2, "quarantines": 1}
    with engine.connect() as conn:
        assert list(conn.scalars(select(executions_t.c.status).where(executions_t.c.incident_id.is_(None)))) == [
            "waiting"
        ]


def test_many_incidents_in_small_batches_and_a_backlog_in_several_rounds(engine: Engine) -> None:
    def make(world: World) -> None:
        for n in range(120):
            incident_id = world.incident(resolved_days=100 + n % 5, alerts=3)
            world.execution(incident_id, days=100 + n % 5)

    build(engine, make)
    retention, _counted = sweeps(engine, batch_rows=7)
    done = retention.sweep_now()

    assert done is not None
    assert done.deleted["incidents"] == 120 and done.deleted["alerts"] == 360 and done.deleted["execution_steps"] == 240
    assert ids(engine, incidents_t) == set() and ids(engine, audit_t) == set()


def test_only_the_leader_prunes(engine: Engine) -> None:
    build(engine, lambda world: world.incident(resolved_days=100))
    follower, counted = sweeps(engine, is_leader=lambda: False)
    assert follower.sweep_now() is None

    def lost(_conn: Connection) -> int:
        raise StaleLeader("term 3 is over: another replica leads")

    deposed, counted = sweeps(engine, fence=lost)
    done = deposed.sweep_now()
    assert done is not None and not done.deleted and not counted
    assert len(ids(engine, incidents_t)) == 1 and len(ids(engine, alerts_t)) == 2


def test_the_archive_holds_what_went_and_reads_back_into_the_database(engine: Engine, tmp_path: Path) -> None:
    def make(world: World) -> None:
        for days in (100, 120):
            incident_id = world.incident(resolved_days=days, alerts=3)
            failed = world.execution(incident_id, days=days, status="failed", page=True)
            world.quarantine(incident_id, failed, lifted_days=days - 1)
            world.execution(incident_id, days=days, status="suppressed", steps=0)
        world.incident(resolved_days=None)
        world.audit("automation.changed", ago(100), detail={"paused": True, "reason": "maintenance ✓"})

    build(engine, make)
    before = snapshot(engine)
    directory = tmp_path / "archive"
    done = sweeps(engine, archive_dir=directory, batch_rows=4)[0].sweep_now()
    assert done is not None and done.deleted["incidents"] == 2
    [path] = directory.iterdir()
    assert path.name == "controlplane-archive-2026-12-06.jsonl.gz" and path.stat().st_mode & 0o077 == 0
    with gzip.open(path) as stream:
        lines = [orjson.loads(line) for line in stream]
    assert Counter(line["table"] for line in lines) == done.deleted  # each row deleted is archived once

    result = archive.import_files(engine, [path])

    assert snapshot(engine) == before  # every row back, every value as it was
    assert result.inserted == done.deleted and not result.skipped and not result.cleared
    again = archive.import_files(engine, [path])
    assert not again.inserted and again.present == done.deleted  # a second import changes nothing


def test_an_archive_that_cannot_be_written_deletes_nothing(engine: Engine, tmp_path: Path) -> None:
    build(engine, lambda world: world.incident(resolved_days=100))
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    retention, counted = sweeps(engine, archive_dir=not_a_directory)

    with structlog.testing.capture_logs() as logs:
        assert retention.sweep_now() is None
    assert counted == {"FAILED": 1}
    [failed] = [entry for entry in logs if entry["event"] == "retention.archive_failed"]
    assert failed["log_level"] == "error" and failed["pruned_before"] == {} and "file" in failed["error"]
    assert len(ids(engine, incidents_t)) == 1 and len(ids(engine, alerts_t)) == 2
