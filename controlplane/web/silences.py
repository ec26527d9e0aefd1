"""Owns silencing an incident's alerts by hand: one Alertmanager silence on its group labels, recorded and audited.

The silence goes in the same `silences` table as the ones playbooks create, so resolving the
incident expires it too (alertmanager.silence's expiry on resolve): a person's silence must
not hide the next episode either.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine

from controlplane.audit import audit
from controlplane.config import Settings
from controlplane.db.engine import write_transaction
from controlplane.db.tables import dialect_insert, silences_t
from controlplane.durations import format_duration
from controlplane.errors import InvalidInput, Unavailable
from controlplane.incidents import service as incidents
from controlplane.integrations.alertmanager import AlertmanagerClient, AlertmanagerError, equality_matchers

# What the console offers (within alertmanager.silence's 7 days); anything else is refused, not rounded.
DURATIONS: dict[str, timedelta] = {
    "30m": timedelta(minutes=30),
    "1h": timedelta(hours=1),
    "4h": timedelta(hours=4),
    "12h": timedelta(hours=12),
    "1d": timedelta(days=1),
    "3d": timedelta(days=3),
}


def silence_incident(
    *, engine: Engine, settings: Settings, incident_id: int, duration: str, comment: str, actor: str, now: datetime
) -> str:
    """Silence the incident's alerts (equality on its non-empty group labels) until now + duration; the silence id."""
    length = DURATIONS.get(duration)
    if length is None:
        raise InvalidInput(f"duration must be one of {', '.join(DURATIONS)}")
    with engine.connect() as conn:
        incident = incidents.incident_row(conn=conn, incident_id=incident_id)
    labels = {name: value for name, value in incident["group_labels"].items() if value}
    if not labels:
        # Matchers that all match the empty string would mute every alert Alertmanager has.
        raise InvalidInput("this incident has no group label values to silence on")
    text = comment.strip() or f"Silenced from the controlplane console: incident #{incident_id} {incident['title']}"
    client = AlertmanagerClient(settings.alertmanager_url)
    ends_at = now + length
    # The network call runs outside any transaction: a slow Alertmanager holds no database lock.
    try:
        silence_id = client.create_silence(
            matchers=equality_matchers(labels), starts_at=now, ends_at=ends_at, comment=text[:2000], created_by=actor
        )
    except AlertmanagerError as exc:
        if exc.retriable:
            raise Unavailable(f"Alertmanager did not take the silence: {exc}") from None
        raise InvalidInput(f"Alertmanager refused the silence: {exc}") from None
    with write_transaction(engine) as conn:
        conn.execute(
            dialect_insert(conn, silences_t)
            .values(
                silence_id=silence_id,
                incident_id=incident_id,
                execution_id=None,
                alertmanager_url=client.url,
                matchers=labels,
                created_by=actor,
                created_at=now,
                ends_at=ends_at,
                expired_at=None,
            )
            .on_conflict_do_nothing(index_elements=["silence_id"])
        )
        audit(
            conn,
            actor=actor,
            action="incident.silenced",
            incident_id=incident_id,
            detail={
                "silence_id": silence_id,
                "matchers": labels,
                "duration": format_duration(length),
                "ends_at": ends_at.isoformat(),
                "comment": text,
            },
            now=now,
        )
    return silence_id
