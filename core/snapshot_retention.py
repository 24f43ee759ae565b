"""Snapshot retention: files no adapter version was trained on are deleted once old enough.

A snapshot older than ``snapshot_retention_days`` is expired when no adapter
version points at it (those stay reproducible for ever) and no queued or running
job will read it. Its file is deleted and the row stays, marked ``expired``
(jobs keep pointing at it; a new job cannot use it: 409). The file goes first:
a crash before the commit leaves a ``ready`` row without a file, which the next
run expires.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.artifact_store import get_store
from core.models import AdapterVersion, AlignmentJob, Snapshot, utcnow
from core.settings import Settings
from core.snapshots import snapshot_key

log = logging.getLogger(__name__)

EXPIRED = "expired"
ACTIVE_JOB_STATUSES = ("queued", "running")


def expire_snapshots(session: Session, *, settings: Settings, now: datetime | None = None) -> list[str]:
    """Delete the files of expired snapshots and mark their rows; returns their ids. The caller commits."""
    if settings.snapshot_retention_days <= 0:
        return []
    cutoff = (now or utcnow()) - timedelta(days=settings.snapshot_retention_days)
    trained = select(AdapterVersion.snapshot_id).where(AdapterVersion.snapshot_id.is_not(None))
    in_use = select(AlignmentJob.snapshot_id).where(
        AlignmentJob.snapshot_id.is_not(None), AlignmentJob.status.in_(ACTIVE_JOB_STATUSES)
    )
    stale = session.scalars(
        select(Snapshot)
        .where(Snapshot.created_at < cutoff, Snapshot.status != EXPIRED, Snapshot.id.not_in(trained),
               Snapshot.id.not_in(in_use))
        .with_for_update()
    ).all()
    store = get_store(settings)
    for snap in stale:
        store.delete([snapshot_key(snap)])
        snap.status = EXPIRED
        snap.path = None
    if stale:
        log.info("snapshot retention: expired %d snapshot(s) older than %s", len(stale), cutoff.isoformat())
    return [s.id for s in stale]
