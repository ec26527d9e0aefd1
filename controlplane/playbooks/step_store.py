"""Owns the writes of a claimed execution: its step rows, its progress and its transitions, each fenced by the claim.

Every write first checks, in its own transaction, that the execution is still `running` and
claimed by this worker (`lease_owner`): a worker that lost its lease (it was paused, another
replica took over, or the execution was cancelled) raises LeaseLost and records nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from sqlalchemy import Connection, Engine, Row, bindparam, select, update

from controlplane.audit import audit
from controlplane.db.engine import write_transaction
from controlplane.db.tables import executions_t, steps_t
from controlplane.playbooks import pages
from controlplane.playbooks.state import Status, transition
from controlplane.rules.schema import Playbook, Step

Phase = Literal["forward", "rollback"]
FINISHED = frozenset({"succeeded", "failed", "skipped"})


# Built once, run with parameter dicts (building statements was most of a step's CPU); the SET
# clause of an UPDATE is the keys of the parameters that name columns, `b_*` are the WHERE's.
_FENCE = update(executions_t).where(
    executions_t.c.id == bindparam("b_id"),
    executions_t.c.lease_owner == bindparam("b_owner"),
    executions_t.c.status == "running",
)
_INSERT_STEP = steps_t.insert().returning(*steps_t.c)
_UPDATE_STEP = update(steps_t).where(steps_t.c.id == bindparam("b_id")).returning(*steps_t.c)


class LeaseLost(Exception):
    """Another worker owns the execution now, or it was cancelled: stop without writing."""


@dataclass
class Run:
    """What the executor knows about the execution it runs."""

    id: int
    owner: str
    rule: str
    incident_id: int | None
    dry_run: bool
    page_on_failure: bool
    playbook: Playbook
    params: dict[str, Any]
    context: dict[str, Any]
    current_step: int
    steps: dict[str, dict[str, Any]]  # step id -> {value, output, status}, for templates

    @property
    def actor(self) -> str:
        return f"rule:{self.rule}"

    def template_context(self) -> dict[str, Any]:
        return {**self.context, "params": self.params, "steps": self.steps}


class StepPlace(Protocol):
    """A step at its place in a run, as its row records it (steps.StepAttempt is one)."""

    @property
    def run(self) -> Run: ...
    @property
    def phase(self) -> Phase: ...
    @property
    def index(self) -> int: ...
    @property
    def step(self) -> Step: ...
    @property
    def row(self) -> Row[Any] | None: ...  # as last read; None before the step's first record
    @property
    def inputs(self) -> dict[str, Any]: ...


class StepStore:
    def __init__(self, engine: Engine, *, clock: Callable[[], datetime], lease_seconds: float) -> None:
        self._engine = engine
        self._clock = clock
        self._lease = timedelta(seconds=lease_seconds)

    # -- reads ---------------------------------------------------------------------------

    def load(self, execution_id: int, owner: str) -> Run:
        """The claimed execution and what its finished forward steps left for templates."""
        with self._engine.connect() as conn:
            row = conn.execute(select(executions_t).where(executions_t.c.id == execution_id)).one()
            done = conn.execute(
                select(steps_t.c.step_id, steps_t.c.output, steps_t.c.status).where(
                    steps_t.c.execution_id == execution_id, steps_t.c.phase == "forward"
                )
            ).all()
        if row.lease_owner != owner or row.status != "running":
            raise LeaseLost()
        steps = {
            r.step_id: {"value": r.output.get("value"), "output": r.output, "status": r.status}
            for r in done
            if r.step_id and r.status in FINISHED
        }
        return Run(
            id=row.id,
            owner=owner,
            rule=row.rule_name,
            incident_id=row.incident_id,
            dry_run=row.dry_run,
            page_on_failure=row.page_on_failure,
            playbook=Playbook.model_validate(row.playbook),
            params=row.params,
            context=row.context,
            current_step=row.current_step,
            steps=steps,
        )

    def step_row(self, run: Run, phase: Phase, index: int) -> Row[Any] | None:
        with self._engine.connect() as conn:
            return conn.execute(
                select(steps_t).where(
                    steps_t.c.execution_id == run.id, steps_t.c.phase == phase, steps_t.c.index == index
                )
            ).first()

    # -- the execution -------------------------------------------------------------------

    def transition(
        self,
        run: Run,
        to: Status,
        *,
        reason: str,
        detail: dict[str, Any] | None = None,
        also_audit: tuple[str, dict[str, Any]] | None = None,
        outcome: str | None = None,
        page: bool = False,
        current_step: int | None = None,
    ) -> None:
        """Move the run to `to` while the claim holds. In the same transaction: `also_audit`, the ledger's
        `outcome`, `current_step` (past its last step when done), and with `page` a page telling on-call
        why it ended (playbooks/pages.py)."""
        now = self._clock()
        values: dict[str, Any] = {"outcome": outcome, "outcome_at": now} if outcome else {}
        if current_step is not None:
            values["current_step"] = current_step
        with self._write() as conn:
            ok = transition(
                conn,
                run.id,
                to,
                actor=run.actor,
                now=now,
                reason=reason,
                owner=run.owner,
                incident_id=run.incident_id,
                detail=detail,
                values=values or None,
            )
            if not ok:
                raise LeaseLost()
            if also_audit is not None:
                action, audit_detail = also_audit
                self._audit(conn, run, action, audit_detail)
            if page:
                pages.record(
                    conn,
                    kind="execution_failed",
                    execution_id=run.id,
                    incident_id=run.incident_id,
                    rule=run.rule,
                    reason=reason,
                    now=now,
                )

    def verified(self, run: Run) -> bool:
        """Whether a `verify.*` step of the run succeeded: the playbook saw its own fix work."""
        indexes = [i for i, step in enumerate(run.playbook.steps) if step.action.startswith("verify.")]
        if not indexes:
            return False
        with self._engine.connect() as conn:
            found = conn.execute(
                select(steps_t.c.id).where(
                    steps_t.c.execution_id == run.id,
                    steps_t.c.phase == "forward",
                    steps_t.c.index.in_(indexes),
                    steps_t.c.status == "succeeded",
                )
            ).first()
        return found is not None

    def audit(self, run: Run, action: str, detail: dict[str, Any]) -> None:
        with self._write() as conn:
            self._audit(conn, run, action, detail)

    # -- steps ---------------------------------------------------------------------------

    def save_step(
        self,
        place: StepPlace,
        status: str,
        *,
        action: str,
        output: dict[str, Any],
        error: str | None = None,
        attempts: int | None = None,
        duration: float | None = None,
    ) -> Row[Any]:
        """Insert or update the step's row, renewing the lease; audited as `step.<status>` when it
        starts or ends. Returns the row as it now is."""
        now = self._clock()
        done = status in FINISHED
        values: dict[str, Any] = {
            "status": status,
            "inputs": _jsonable(place.inputs),
            "output": _jsonable(output),
            "error": error,
            "action": action,
            "finished_at": now if done else None,
        }
        if attempts is not None:
            values["attempts"] = attempts
        if duration is not None:
            values["duration_ms"] = round(duration * 1000, 3)
        run, existing = place.run, place.row
        # A forward step's first record also moves the run on to it: no write of its own between steps
        # (a step found finished on resume, before its run moved on, is taken as it ended: steps.py).
        progress = {"current_step": place.index} if place.phase == "forward" else {}
        with self._write() as conn:
            self._fence(conn, run, lease_expires_at=self._lease_until(), **progress)
            if existing is None:
                written = conn.execute(
                    _INSERT_STEP,
                    {
                        "execution_id": run.id,
                        "phase": place.phase,
                        "index": place.index,
                        "step_id": place.step.id,
                        "started_at": now,
                        "idempotency_key": f"{run.id}:{place.phase}:{place.index}",
                        "attempts": 0,
                        **values,
                    },
                ).one()
            else:
                written = conn.execute(_UPDATE_STEP, {"b_id": existing.id, **values}).one()
            if done or (status == "running" and existing is None):
                detail = {
                    "phase": place.phase,
                    "index": place.index,
                    "step": place.step.id,
                    "action": action,
                    "error": error,
                }
                self._audit(conn, run, f"step.{status}", detail, now=now)
        return written

    def wait(self, place: StepPlace, *, output: dict[str, Any], attempts: int, until: datetime) -> None:
        """Release the execution until `until`: no worker sleeps through a wait."""
        run, row = place.run, place.row
        assert row is not None  # a step waits only after its call, which it recorded as running
        now = self._clock()
        with self._write() as conn:
            self._fence(conn, run)
            conn.execute(
                update(steps_t)
                .where(steps_t.c.id == row.id)
                .values(status="waiting", inputs=_jsonable(place.inputs), output=_jsonable(output), attempts=attempts)
            )
            ok = transition(
                conn,
                run.id,
                "waiting",
                actor=run.actor,
                now=now,
                owner=run.owner,
                values={"wake_at": until, "lease_owner": None, "lease_expires_at": None},
                incident_id=run.incident_id,
                audit_it=row.status != "waiting",
                reason=f"step {place.index + 1} ({place.step.id or place.step.action}) waits until {_utc(until)}",
            )
            if not ok:
                raise LeaseLost()

    # -- the fence -----------------------------------------------------------------------

    def _write(self) -> AbstractContextManager[Connection]:
        # Execution progress skips the fsync on SQLite: a step lost to a power cut is re-run
        # with the same idempotency key, like any step whose worker died.
        return write_transaction(self._engine, sync="normal")

    def _fence(self, conn: Connection, run: Run, **values: Any) -> None:
        res = conn.execute(_FENCE, {"b_id": run.id, "b_owner": run.owner, "updated_at": self._clock(), **values})
        if res.rowcount != 1:
            raise LeaseLost()

    def _lease_until(self) -> datetime:
        return self._clock() + self._lease

    def _audit(
        self, conn: Connection, run: Run, action: str, detail: dict[str, Any], *, now: datetime | None = None
    ) -> None:
        audit(
            conn,
            actor=run.actor,
            action=action,
            incident_id=run.incident_id,
            execution_id=run.id,
            detail=detail,
            now=now or self._clock(),
        )


def _utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _jsonable(value: Any) -> Any:
    """Step inputs and outputs are stored as JSON; anything else is stored as its text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
