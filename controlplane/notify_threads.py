"""Owns notification_threads: the root message (thread) of each incident in each Slack channel.

Later notifications of an incident reply in its thread; integrations/slack.py only talks to Slack.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select

from controlplane.db.tables import dialect_insert, notification_threads_t


def thread_of(conn: Connection, *, incident_id: int, channel: str) -> str | None:
    """The `ts` of the incident's root message in `channel`, if one was posted."""
    threads = notification_threads_t.c
    query = select(threads.ts).where(threads.incident_id == incident_id, threads.channel == channel)
    return conn.execute(query).scalar()


def remember_thread(conn: Connection, *, incident_id: int, channel: str, ts: str, now: datetime) -> str:
    """Keep `ts` as the incident's thread in `channel`; returns the thread in force.

    Two executions of one incident may post a root message at once; the first recorded wins
    and the other's message stays a lone root (rare, harmless, and visible in the channel).
    """
    conn.execute(
        dialect_insert(conn, notification_threads_t)
        .values(incident_id=incident_id, channel=channel, ts=ts, created_at=now)
        .on_conflict_do_nothing(index_elements=["incident_id", "channel"])
    )
    return str(thread_of(conn, incident_id=incident_id, channel=channel))
