"""A delivery's hold on a running job: the claim, and every later write fenced by its token.

Every delivery of the Celery task calls :func:`claim_job`, which counts an
attempt; after ``max_attempts`` deliveries the job ends ``failed`` with the
reason. At most one job per adapter name is ``running``: the partial unique
index ``uq_jobs_one_running_per_adapter`` enforces it, and a claim that
would break it answers ``busy`` (the task retries later, the job stays queued).

The claim hands the delivery a token; heartbeats, progress, phases and the
job's end (succeed, fail, requeue, cancel) go through :func:`_owned`, which
raises :class:`LostClaim` once the job is no longer this delivery's (reaped,
cancelled or taken over). Functions take the caller's session and never commit.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.base_models import FAILED, PREPARING
from core.clock import db_now
from core.errors import Conflict
from core.job_state import PHASES, TERMINAL, finish, get_job
from core.models import AlignmentJob, BaseModelRecord, JobMetric

log = logging.getLogger(__name__)


class LostClaim(Conflict):
    """This worker no longer holds the job (reaped, cancelled or taken over): stop, publish nothing."""


class CancelRequested(Conflict):
    """A cancel reached the database before the job's publish committed: publish nothing."""


def worker_identity() -> str:
    """``host:pid`` of this process: who holds a running job."""
    return f"{socket.gethostname()}:{os.getpid()}"


# ---------------------------------------------------------------- the claim


ClaimOutcome = Literal["run", "skip", "busy", "duplicate"]


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    reason: str
    attempt: int = 0
    # Fences every later write of this delivery (progress, publish, finish): a delivery whose job was
    # taken over (reaped while alive, clocks skewed) holds a stale token and can change nothing.
    token: str | None = None


def _holder_alive(job: AlignmentJob, *, me: str, heartbeat_timeout_s: float, now: datetime) -> bool:
    """Is the worker that holds this running job still at it?"""
    if job.worker == me:
        return False  # our own earlier delivery (a retry after a transient error) ended
    if job.heartbeat_at is None or now - job.heartbeat_at > timedelta(seconds=heartbeat_timeout_s):
        return False
    host, _, pid = (job.worker or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        # Same machine: a pool child killed mid-job (reject_on_worker_lost redelivers at once,
        # long before its heartbeat goes stale) is detected by its pid.
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def claim_job(
    session: Session,
    *,
    job_id: str,
    worker: str,
    heartbeat_timeout_s: float,
    now: datetime | None = None,
) -> Claim:
    """Take the job for one delivery: queued (or abandoned running) -> running, one more attempt.

    Outcomes: ``run`` (the caller trains), ``skip`` (finished, cancelled or out of
    attempts: nothing to do), ``busy`` (another job of this adapter is running:
    retry later), ``duplicate`` (a live worker runs this very job: retry later).
    On ``busy`` the session was rolled back.
    """
    now = now or db_now(session)
    job = get_job(session, job_id=job_id, for_update=True)
    if job.status in TERMINAL:
        return Claim("skip", f"job is already {job.status}")
    if job.cancel_requested:
        finish(job, "cancelled", now=now)
        return Claim("skip", "cancelled before it started")
    base = session.get(BaseModelRecord, job.base_model_id)
    if base.status == PREPARING:
        return Claim("busy", f"waiting for base model {base.name!r}, which the worker is still preparing")
    if base.status == FAILED:
        finish(job, "failed", now=now, error=preparation_failed(base))
        return Claim("skip", "its base model could not be prepared")
    if job.status == "running":
        if _holder_alive(job, me=worker, heartbeat_timeout_s=heartbeat_timeout_s, now=now):
            return Claim("duplicate", f"running in {job.worker} (heartbeat {job.heartbeat_at:%H:%M:%S})")
        log.warning("job %s: taking over from %s (last heartbeat %s)", job_id, job.worker, job.heartbeat_at)
    if job.attempts >= job.max_attempts:
        finish(job, "failed", now=now, error=(
            f"gave up after {job.attempts} attempt(s): the worker running it was lost each time "
            f"(last worker {job.worker}, last heartbeat {job.heartbeat_at})"
        ))
        return Claim("skip", "out of attempts")
    job.status = "running"
    job.attempts += 1
    job.worker = worker
    job.claim_token = uuid.uuid4().hex
    job.heartbeat_at = now
    job.started_at = job.started_at or now
    job.phase = "preparing"
    attempt, token = job.attempts, job.claim_token
    try:
        session.flush()
    except IntegrityError:
        # uq_jobs_one_running_per_adapter: another job of this adapter runs now.
        session.rollback()
        return Claim("busy", f"another job of adapter {job.adapter_name!r} is running")
    log.info("job %s: attempt %d/%d in %s", job_id, attempt, job.max_attempts, worker)
    return Claim("run", "claimed", attempt, token)


def preparation_failed(base: BaseModelRecord) -> str:
    return (f"base model {base.name!r} could not be prepared: {base.error}; restart the worker to try again, "
            "then start the job again")


# ---------------------------------------------------------------- fenced writes of the holder


def _owned(session: Session, *, job_id: str, token: str) -> AlignmentJob:
    """The job, locked, if the delivery holding ``token`` still runs it; else :class:`LostClaim`."""
    job = get_job(session, job_id=job_id, for_update=True)
    if job.status != "running" or job.claim_token != token:
        raise LostClaim(f"job {job_id} is {job.status} in {job.worker} (attempt {job.attempts}); "
                        "this delivery no longer holds it")
    return job


def heartbeat(session: Session, *, job_id: str, token: str, now: datetime | None = None) -> bool:
    """Prove the holder is alive; returns whether cancellation was requested."""
    job = _owned(session, job_id=job_id, token=token)
    job.heartbeat_at = now or db_now(session)
    return job.cancel_requested


def is_cancel_requested(session: Session, *, job_id: str) -> bool:
    return bool(session.scalar(select(AlignmentJob.cancel_requested).where(AlignmentJob.id == job_id)))


def record_inputs(
    session: Session,
    *,
    job_id: str,
    token: str,
    snapshot_id: str | None = None,
    n_desirable: int | None = None,
    n_undesirable: int | None = None,
    class_weights: dict[str, Any] | None = None,
    progress_total: int | None = None,
    timings: dict[str, float] | None = None,
) -> AlignmentJob:
    """What the job trains on: its snapshot, the class counts and the weights used (with why)."""
    job = _owned(session, job_id=job_id, token=token)
    if snapshot_id is not None:
        job.snapshot_id = snapshot_id
    if n_desirable is not None:
        job.n_desirable, job.n_undesirable = n_desirable, n_undesirable
    if class_weights is not None:
        job.class_weights = class_weights
    if progress_total is not None:
        job.progress_total = progress_total
    if timings is not None:
        job.timings = {k: round(v, 3) for k, v in timings.items()}
    return job


def start_attempt_history(session: Session, *, job_id: str, token: str, first_step: int) -> None:
    """The attempt's first reported step is ``first_step``: steps from there on are recomputed.

    Their rows from an earlier attempt (computed after its last checkpoint) are
    dropped, so the history is one consistent run; ``resumed_from_step`` records
    the checkpoint this attempt continued from.
    """
    job = _owned(session, job_id=job_id, token=token)
    job.resumed_from_step = first_step - 1 if first_step > 1 else None
    session.execute(delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.step >= first_step))


def record_progress(
    session: Session,
    *,
    job_id: str,
    token: str,
    step: int,
    total: int,
    metrics: dict[str, Any],
    attempt: int,
    now: datetime | None = None,
) -> bool:
    """One optimiser step: a JobMetric row, progress, latest metrics, heartbeat.

    Returns whether cancellation was requested.
    """
    job = _owned(session, job_id=job_id, token=token)
    now = now or db_now(session)
    clean = {k: _json_number(v) for k, v in metrics.items()}
    session.merge(JobMetric(job_id=job_id, step=step, attempt=attempt, metrics=clean, created_at=now))
    job.progress_step, job.progress_total = step, total
    job.phase = "training"
    job.metrics = clean
    job.heartbeat_at = now
    return job.cancel_requested


def set_phase(session: Session, *, job_id: str, token: str, phase: str, now: datetime | None = None) -> bool:
    """What the running job does now (one of PHASES, optionally with a count: "reference pass 120/240"),
    shown before the first step; fenced like progress. Returns whether cancellation was requested."""
    if phase.split(" ", 1)[0] not in {p.split(" ", 1)[0] for p in PHASES}:
        raise ValueError(f"unknown phase {phase!r}")
    job = _owned(session, job_id=job_id, token=token)
    job.phase = phase[:64]
    job.heartbeat_at = now or db_now(session)
    return job.cancel_requested


def _json_number(value: Any) -> Any:
    # NaN/inf are not JSON (Postgres rejects them): a diverged run records null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def succeed(
    session: Session,
    *,
    job_id: str,
    token: str,
    adapter_version_id: int | None,
    eval_metrics: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> AlignmentJob:
    """The job published ``adapter_version_id``: called inside the publish transaction, so the
    version exists only if this delivery still held the job and no cancel had arrived."""
    job = _owned(session, job_id=job_id, token=token)
    if job.cancel_requested:
        raise CancelRequested(f"job {job_id}: cancel requested before the publish committed")
    job.adapter_version_id = adapter_version_id
    if eval_metrics is not None:
        job.eval_metrics = json_safe(eval_metrics)
    job.error = None
    finish(job, "succeeded", now=now or db_now(session))
    return job


def fail(
    session: Session,
    *,
    job_id: str,
    token: str | None,
    error: str,
    eval_metrics: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> AlignmentJob:
    """Fail a job this delivery holds (``token=None``: any job not finished yet)."""
    job = _owned(session, job_id=job_id, token=token) if token else get_job(session, job_id=job_id)
    if job.status in TERMINAL:
        return job
    if eval_metrics is not None:
        job.eval_metrics = json_safe(eval_metrics)
    finish(job, "failed", now=now or db_now(session), error=error)
    return job


def requeue(session: Session, *, job_id: str, token: str, reason: str, now: datetime | None = None) -> AlignmentJob:
    """A dependency of the running job is down (the object store): back to the queue for a later delivery.
    The attempt is given back: it trained nothing and its worker is fine, and the cap is for lost workers."""
    job = _owned(session, job_id=job_id, token=token)
    job.status = "queued"
    job.attempts -= 1
    job.claim_token = None
    job.phase = None
    job.enqueued_at = now or db_now(session)  # the task's retry is on its way: the reaper need not send another yet
    job.error = f"{reason}; re-queued"
    log.info("job %s re-queued: %s", job_id, reason)
    return job


def cancel(session: Session, *, job_id: str, token: str, now: datetime | None = None) -> AlignmentJob:
    """The running job stopped on request."""
    job = _owned(session, job_id=job_id, token=token)
    finish(job, "cancelled", now=now or db_now(session))
    return job


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return _json_number(value)
