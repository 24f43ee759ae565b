"""Alignment jobs: creation, queries and every status change, in one place.

Life of a job::

    queued --claim--> running --succeed--> succeeded
      |                  |-----fail------> failed
      |                  |-----cancel----> cancelled   (cancel_requested, seen by the trainer)
      |                  |--reap (worker vanished, attempts left)--> queued
      |                  '--requeue (a dependency down, the attempt given back)--> queued
      '--request_cancel--> cancelled

Every delivery of the Celery task calls :func:`claim_job`, which counts an
attempt; after ``max_attempts`` deliveries the job ends ``failed`` with the
reason. At most one job per adapter name is ``running``: the partial unique
index ``uq_jobs_one_running_per_adapter`` enforces it, and a claim that
would break it answers ``busy`` (the task retries later, the job stays queued).

A running job proves it is alive with a heartbeat. The reaper
(:func:`reap_stale_jobs`) puts a job whose heartbeat went stale back in the
queue (or fails it after the cap): Celery's SQLAlchemy transport never
redelivers a message whose worker was SIGKILLed (it marks it invisible when
delivered and has no visibility timeout), and Redis redelivers only after its
visibility timeout (hours), so the reaper is what keeps nothing ``running``
forever on either broker.

Functions take the caller's session and never commit: the caller owns the
transaction (``core.db.session_scope``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.base_models import FAILED, PREPARING, check_name, get_base_model
from core.clock import db_now
from core.errors import Conflict, InvalidInput, NotFound
from core.models import JOB_STATUSES, AlignmentJob, BaseModelRecord, JobMetric, Snapshot
from core.snapshots import parse_filters, parse_options

log = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "cancelled")
# What a running job does, in order; "reference pass" comes with rows done/total.
PHASES = ("preparing", "loading model", "reference pass", "training", "evaluating", "publishing")
ACTIVE = ("queued", "running")
MAX_LIST_LIMIT = 500


class LostClaim(Conflict):
    """This worker no longer holds the job (reaped, cancelled or taken over): stop, publish nothing."""


class CancelRequested(Conflict):
    """A cancel reached the database before the job's publish committed: publish nothing."""


# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class JobOptions:
    """Pipeline options outside the KTO config (stored in ``alignment_jobs.options``).

    The gate (``worker.gate``, README "The publish gate") compares adapter and
    reference on the held-out rows with a paired bootstrap over held-out
    prompts: the lower end of the 95% interval of the loss improvement must
    exceed ``gate_min_loss_improvement`` and that of the reward margin
    ``gate_min_reward_margin``; no class may get significantly worse; each
    class needs ``gate_min_heldout_per_class`` held-out rows.
    """

    heldout_fraction: float = 0.2  # share of each class's rows held out for the gate (whole prompts)
    # Lower 95% bound of (reference loss - adapter loss) on held-out rows must exceed this.
    gate_min_loss_improvement: float = 0.01
    gate_min_reward_margin: float = 0.0  # lower 95% bound of the held-out reward margin must exceed this
    # Fewer held-out rows of a class than this: the job fails before training (intervals would be noise).
    gate_min_heldout_per_class: int = 10
    # What the published adapter_config.json's base_model_name_or_path says (default: the base model's
    # name in Prospect): a hub id or a folder, for AutoPeftModelForCausalLM and vLLM to load the base from.
    base_model_name_or_path: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> JobOptions:
        values = dict(values or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidInput(
                f"unknown job option(s): {', '.join(map(repr, unknown))}; valid options: {', '.join(sorted(known))}"
            )
        base_ref = values.pop("base_model_name_or_path", None)
        if base_ref is not None and not (isinstance(base_ref, str) and 0 < len(base_ref) <= 1000
                                         and base_ref.isprintable()):
            raise InvalidInput("job option base_model_name_or_path must be a hub id or a folder path "
                               f"(1 to 1000 printable characters), got {str(base_ref)[:80]!r}")
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidInput(f"job option {name} must be a finite number, got {value!r}")
            if name.startswith("gate_") and value < 0:
                raise InvalidInput(f"job option {name} must be >= 0, got {value!r}: a negative threshold "
                                   "would let an adapter worse than the reference through")
        per_class = values.get("gate_min_heldout_per_class", cls.gate_min_heldout_per_class)
        if per_class != int(per_class) or per_class < 2:
            raise InvalidInput(f"job option gate_min_heldout_per_class must be an integer >= 2, got {per_class!r}: "
                               "an interval needs at least two rows of each class")
        options = cls(**{k: int(v) if k == "gate_min_heldout_per_class" else float(v) for k, v in values.items()},
                      base_model_name_or_path=base_ref)
        if not 0 < options.heldout_fraction < 1:
            raise InvalidInput(
                f"heldout_fraction must be in (0, 1), got {options.heldout_fraction}: "
                "the gate needs held-out prompts and training needs the rest"
            )
        return options

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def worker_identity() -> str:
    """``host:pid`` of this process: who holds a running job."""
    return f"{socket.gethostname()}:{os.getpid()}"


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


def get_job(session: Session, *, job_id: str, for_update: bool = False) -> AlignmentJob:
    job = session.get(AlignmentJob, job_id, with_for_update=for_update or None, populate_existing=for_update)
    if job is None:
        raise NotFound(f"no job with id {job_id!r}")
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
        _finish(job, "cancelled", now=now)
        return Claim("skip", "cancelled before it started")
    base = session.get(BaseModelRecord, job.base_model_id)
    if base.status == PREPARING:
        return Claim("busy", f"waiting for base model {base.name!r}, which the worker is still preparing")
    if base.status == FAILED:
        _finish(job, "failed", now=now, error=preparation_failed(base))
        return Claim("skip", "its base model could not be prepared")
    if job.status == "running":
        if _holder_alive(job, me=worker, heartbeat_timeout_s=heartbeat_timeout_s, now=now):
            return Claim("duplicate", f"running in {job.worker} (heartbeat {job.heartbeat_at:%H:%M:%S})")
        log.warning("job %s: taking over from %s (last heartbeat %s)", job_id, job.worker, job.heartbeat_at)
    if job.attempts >= job.max_attempts:
        _finish(job, "failed", now=now, error=(
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


def fail_waiting_jobs(session: Session, *, base: BaseModelRecord) -> list[str]:
    """Fail the queued jobs of a base model whose preparation failed; their ids. Flushes."""
    waiting = list(session.scalars(select(AlignmentJob).where(
        AlignmentJob.base_model_id == base.id, AlignmentJob.status == "queued")))
    for job in waiting:
        _finish(job, "failed", now=db_now(session), error=preparation_failed(base))
    session.flush()
    return [job.id for job in waiting]


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


def counts_by_set(job: AlignmentJob) -> dict:
    """Class counts named apart: the snapshot, and its train / held-out splits once the pipeline split it
    (kept in eval_metrics["split"], also on a job that failed for too few held-out rows)."""
    split = (job.eval_metrics or {}).get("split") or {}
    return {"snapshot": {"desirable": job.n_desirable, "undesirable": job.n_undesirable},
            "train": split.get("train"), "heldout": split.get("heldout")}


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


def _finish(job: AlignmentJob, status: str, *, now: datetime, error: str | None = None) -> None:
    job.status = status
    job.phase = None
    job.finished_at = now
    if error is not None:
        job.error = error
    log.info("job %s %s%s", job.id, status, f": {error}" if error else "")


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
    _finish(job, "succeeded", now=now or db_now(session))
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
    _finish(job, "failed", now=now or db_now(session), error=error)
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
    _finish(job, "cancelled", now=now or db_now(session))
    return job


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return _json_number(value)


# ---------------------------------------------------------------- the reaper


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
            _finish(job, "cancelled", now=now)
            result.finished.append(job.id)
        elif job.attempts >= job.max_attempts:
            _finish(job, "failed", now=now, error=f"worker lost after {job.attempts} attempt(s): {silent}")
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
