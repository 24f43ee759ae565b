"""A job's statuses and phases, loading one, and ending one: what the other ``core.job*`` modules share."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from core.errors import NotFound
from core.models import AlignmentJob

log = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "cancelled")
# What a running job does, in order; "reference pass" comes with rows done/total.
PHASES = ("preparing", "loading model", "reference pass", "training", "evaluating", "publishing")
ACTIVE = ("queued", "running")


def get_job(session: Session, *, job_id: str, for_update: bool = False) -> AlignmentJob:
    job = session.get(AlignmentJob, job_id, with_for_update=for_update or None, populate_existing=for_update)
    if job is None:
        raise NotFound(f"no job with id {job_id!r}")
    return job


def finish(job: AlignmentJob, status: str, *, now: datetime, error: str | None = None) -> None:
    """The job ends ``status``: every way a job ends goes through here."""
    job.status = status
    job.phase = None
    job.finished_at = now
    if error is not None:
        job.error = error
    log.info("job %s %s%s", job.id, status, f": {error}" if error else "")
