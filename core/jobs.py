"""Alignment jobs: creation, queries and the status changes outside a running delivery.

Life of a job::

    queued --claim--> running --succeed--> succeeded
      |                  |-----fail------> failed
      |                  |-----cancel----> cancelled   (cancel_requested, seen by the trainer)
      |                  |--reap (worker vanished, attempts left)--> queued
      |                  '--requeue (a dependency down, the attempt given back)--> queued
      '--request_cancel--> cancelled

The rest lives beside this module: ``core.job_options`` (the pipeline options),
``core.job_state`` (statuses, phases, loading and ending a job), ``core.job_claims``
(the claim and the holder's fenced writes: heartbeat, progress, succeed, fail...)
and ``core.job_reaper`` (stale running jobs and lost messages). Their public names
are re-exported here, so callers use ``core.jobs`` alone (and a test's monkeypatch
of ``core.jobs.X`` reaches the callers that call ``jobs.X``).

Functions take the caller's session and never commit: the caller owns the
transaction (``core.db.session_scope``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.base_models import check_name, get_base_model
from core.clock import db_now
from core.errors import Conflict, InvalidInput, NotFound
from core.job_claims import (
    CancelRequested,
    Claim,
    ClaimOutcome,
    LostClaim,
    cancel,
    claim_job,
    fail,
    heartbeat,
    is_cancel_requested,
    json_safe,
    preparation_failed,
    record_inputs,
    record_progress,
    requeue,
    set_phase,
    start_attempt_history,
    succeed,
    worker_identity,
)
from core.job_options import JobOptions
from core.job_reaper import Reaped, reap_stale_jobs
from core.job_state import ACTIVE, PHASES, TERMINAL, finish, get_job
from core.models import JOB_STATUSES, AlignmentJob, BaseModelRecord, JobMetric, Snapshot
from core.snapshots import parse_filters, parse_options

__all__ = [
    "ACTIVE", "MAX_LIST_LIMIT", "PHASES", "TERMINAL", "CancelRequested", "Claim", "ClaimOutcome", "JobOptions",
    "LostClaim", "Reaped", "cancel", "claim_job", "counts_by_set", "create_job", "fail", "fail_waiting_jobs",
    "get_job", "has_active_job", "heartbeat", "is_cancel_requested", "json_safe", "list_jobs", "list_metrics",
    "mark_enqueued", "preparation_failed", "reap_stale_jobs", "record_inputs", "record_progress", "request_cancel",
    "requeue", "set_phase", "start_attempt_history", "succeed", "touch_queued", "worker_identity",
]

log = logging.getLogger(__name__)

MAX_LIST_LIMIT = 500


# ---------------------------------------------------------------- create and read


def create_job(
    session: Session,
    *,
    adapter_name: str,
    base_model_name: str,
    snapshot_id: str | None = None,
    config: dict[str, Any] | None = None,
    snapshot_options: dict[str, Any] | None = None,
    snapshot_filters: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    force_publish: bool = False,
    max_attempts: int = 3,
    policy_id: str | None = None,
    preparing_model: str | None = None,
) -> AlignmentJob:
    """A queued job. ``config`` must already be validated (``alignment.config.KTOConfig``).
    ``preparing_model``: the bundled model's name, which may not be converted yet: the job then waits queued
    until it is ready (core.base_models.get_base_model).

    ``snapshot_filters`` (``core.snapshots.SnapshotFilters``: model, metadata
    tags, since, until) select the votes of the snapshot the job takes when it
    has no ``snapshot_id``: several adapters, each on its own product's feedback.
    """
    check_name(adapter_name, what="adapter")
    if not isinstance(config or {}, dict):
        raise InvalidInput("config must be a JSON object of alignment config overrides")
    base = get_base_model(session, name=base_model_name, preparing=preparing_model)
    parse_options(snapshot_options)
    filters = parse_filters(snapshot_filters).model_dump(mode="json", exclude_defaults=True)
    if snapshot_id is not None and filters:
        raise InvalidInput("give snapshot_id or snapshot_filters, not both: the snapshot's own filters apply")
    if snapshot_id is not None:
        snapshot = session.get(Snapshot, snapshot_id)
        if snapshot is None:
            raise NotFound(f"no snapshot with id {snapshot_id!r}")
        if snapshot.status != "ready":
            raise Conflict(f"snapshot {snapshot_id} is {snapshot.status}, not ready")
    job = AlignmentJob(
        adapter_name=adapter_name,
        base_model_id=base.id,
        snapshot_id=snapshot_id,
        policy_id=policy_id,
        config=dict(config or {}),
        snapshot_options=dict(snapshot_options or {}),
        snapshot_filters=filters,
        options=JobOptions.from_dict(options).to_dict(),
        force_publish=bool(force_publish),
        status="queued",
        max_attempts=max_attempts,
        created_at=db_now(session),  # the reaper's resend clock (core.clock)
    )
    session.add(job)
    session.flush()
    log.info("job %s queued for adapter %s on %s", job.id, adapter_name, base_model_name)
    return job


def list_jobs(
    session: Session, *, status: str | None = None, adapter_name: str | None = None, limit: int = 100
) -> list[AlignmentJob]:
    """Newest first."""
    if status is not None and status not in JOB_STATUSES:
        raise InvalidInput(f"unknown status {status!r}; use one of {', '.join(JOB_STATUSES)}")
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
    query = select(AlignmentJob).order_by(AlignmentJob.created_at.desc(), AlignmentJob.id).limit(limit)
    if status is not None:
        query = query.where(AlignmentJob.status == status)
    if adapter_name is not None:
        query = query.where(AlignmentJob.adapter_name == adapter_name)
    return list(session.scalars(query))


def list_metrics(session: Session, *, job_id: str, after_step: int = 0) -> list[JobMetric]:
    get_job(session, job_id=job_id)
    query = (
        select(JobMetric)
        .where(JobMetric.job_id == job_id, JobMetric.step > after_step)
        .order_by(JobMetric.step)
    )
    return list(session.scalars(query))


def has_active_job(session: Session, *, adapter_name: str) -> bool:
    query = select(func.count()).select_from(AlignmentJob).where(
        AlignmentJob.adapter_name == adapter_name, AlignmentJob.status.in_(ACTIVE)
    )
    return session.scalar(query) > 0


def counts_by_set(job: AlignmentJob) -> dict:
    """Class counts named apart: the snapshot, and its train / held-out splits once the pipeline split it
    (kept in eval_metrics["split"], also on a job that failed for too few held-out rows)."""
    split = (job.eval_metrics or {}).get("split") or {}
    return {"snapshot": {"desirable": job.n_desirable, "undesirable": job.n_undesirable},
            "train": split.get("train"), "heldout": split.get("heldout")}


# ---------------------------------------------------------------- transitions


def mark_enqueued(session: Session, *, job_id: str, task_id: str | None, now: datetime | None = None) -> None:
    job = get_job(session, job_id=job_id)
    job.celery_task_id = task_id
    job.enqueued_at = now or db_now(session)


def touch_queued(session: Session, *, job_id: str, now: datetime | None = None) -> None:
    """A delivery saw the job and will retry it (busy adapter): its message is alive, do not re-send."""
    session.execute(
        update(AlignmentJob).where(AlignmentJob.id == job_id, AlignmentJob.status == "queued")
        .values(enqueued_at=now or db_now(session))
    )


def request_cancel(session: Session, *, job_id: str, now: datetime | None = None) -> AlignmentJob:
    """A queued job is cancelled at once; a running one is flagged and stops within one step.

    Cancelling a cancelled job is a no-op; a finished job gives :class:`Conflict`.
    """
    job = get_job(session, job_id=job_id, for_update=True)
    if job.status == "queued":
        job.status = "cancelled"
        job.cancel_requested = True
        job.finished_at = now or db_now(session)
        log.info("job %s cancelled while queued", job_id)
    elif job.status == "running":
        job.cancel_requested = True
        log.info("job %s: cancellation requested", job_id)
    elif job.status in ("succeeded", "failed"):
        raise Conflict(f"job {job_id} already {job.status}; there is nothing to cancel")
    return job


def fail_waiting_jobs(session: Session, *, base: BaseModelRecord) -> list[str]:
    """Fail the queued jobs of a base model whose preparation failed; their ids. Flushes."""
    waiting = list(session.scalars(select(AlignmentJob).where(
        AlignmentJob.base_model_id == base.id, AlignmentJob.status == "queued")))
    for job in waiting:
        finish(job, "failed", now=db_now(session), error=preparation_failed(base))
    session.flush()
    return [job.id for job in waiting]
