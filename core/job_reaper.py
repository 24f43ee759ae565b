"""The reaper: running jobs whose worker vanished go back to the queue, and lost messages are sent again.

A running job proves it is alive with a heartbeat (``core.job_claims``). The
reaper (:func:`reap_stale_jobs`) puts a job whose heartbeat went stale back in
the queue (or fails it after the cap): Celery's SQLAlchemy transport never
redelivers a message whose worker was SIGKILLed (it marks it invisible when
delivered and has no visibility timeout), and Redis redelivers only after its
visibility timeout (hours), so the reaper is what keeps nothing ``running``
forever on either broker.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.clock import db_now
from core.job_state import finish
from core.models import AlignmentJob

log = logging.getLogger(__name__)


@dataclass
class Reaped:
    requeued: list[str] = dataclasses.field(default_factory=list)  # send a task for each
    finished: list[str] = dataclasses.field(default_factory=list)  # failed (out of attempts) or cancelled
    # queued, and no delivery seen for ``resend_after_s``: its message was never sent, or was lost
    # (an ETA/retry message held by a killed worker is never redelivered on the SQLAlchemy broker).
    unsent: list[str] = dataclasses.field(default_factory=list)


def reap_stale_jobs(
    session: Session, *, heartbeat_timeout_s: float, resend_after_s: float | None = None,
    now: datetime | None = None,
) -> Reaped:
    """Running jobs silent for ``heartbeat_timeout_s``: back to queued (attempts left) or failed.

    Also lists queued jobs that no delivery has touched for ``resend_after_s``
    (default: the heartbeat timeout) since they were sent or created, whatever
    sent them. The caller sends a task for every id in ``requeued`` and
    ``unsent`` after committing; a double delivery is harmless, the claim decides.
    """
    now = now or db_now(session)
    cutoff = now - timedelta(seconds=heartbeat_timeout_s)
    resend_cutoff = now - timedelta(seconds=heartbeat_timeout_s if resend_after_s is None else resend_after_s)
    result = Reaped()
    stale = session.scalars(
        select(AlignmentJob)
        .where(AlignmentJob.status == "running")
        .where((AlignmentJob.heartbeat_at < cutoff) | AlignmentJob.heartbeat_at.is_(None))
        .with_for_update()
    )
    for job in stale:
        silent = f"no heartbeat from {job.worker} since {job.heartbeat_at}"
        if job.cancel_requested:
            finish(job, "cancelled", now=now)
            result.finished.append(job.id)
        elif job.attempts >= job.max_attempts:
            finish(job, "failed", now=now, error=f"worker lost after {job.attempts} attempt(s): {silent}")
            result.finished.append(job.id)
        else:
            log.warning("job %s: %s; re-queued (attempt %d of %d used)", job.id, silent, job.attempts,
                        job.max_attempts)
            job.status = "queued"
            job.claim_token = None  # the lost holder, if it still runs, can no longer write or publish
            job.error = f"worker lost ({silent}); re-queued"
            result.requeued.append(job.id)
    last_sent = func.coalesce(AlignmentJob.enqueued_at, AlignmentJob.created_at)
    unsent = session.scalars(
        select(AlignmentJob.id).where(AlignmentJob.status == "queued", last_sent < resend_cutoff)
    )
    result.unsent.extend(j for j in unsent if j not in result.requeued)
    session.flush()
    return result
