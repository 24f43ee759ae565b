"""/v1/jobs: start, inspect, list and cancel alignment jobs.

The job is committed first, then its task is sent by name to the ``training``
queue. When the broker is unreachable the job stays queued and the answer is
still 202: the reaper sends tasks for queued jobs that never got one.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import ReadKey, SessionDep, SettingsDep, TrainKey
from api.queue import TRAINING_QUEUE, send_task
from api.schemas import DB_INT_MAX
from api.schemas.jobs import (
    JobIn,
    JobListOut,
    JobMetricOut,
    JobMetricsOut,
    JobOut,
    JobStatus,
    PublishRefusedIn,
)
from core import jobs, refused
from core.errors import InvalidInput
from core.job_limits import check_job_config
from core.models import AdapterVersion, AlignmentJob, BaseModelRecord

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ERRORS = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key lacks the scope."},
    404: {"description": "Unknown job, base model or snapshot."},
    409: {"description": "The job is already finished."},
    422: {"description": "Invalid input; the message names the field and how to fix it."},
    503: {"description": "Database unavailable; see Retry-After."},
}


def validate_config(overrides: dict) -> dict:
    """The overrides must build a valid KTOConfig (torch-free) before anything is queued."""
    from alignment.config import ConfigError, KTOConfig

    try:
        KTOConfig.from_dict(overrides)
    except (ConfigError, TypeError) as exc:
        raise InvalidInput(f"invalid config: {exc}") from exc
    return overrides


def job_out(session: Session, job: AlignmentJob) -> JobOut:
    base_name = session.scalar(select(BaseModelRecord.name).where(BaseModelRecord.id == job.base_model_id))
    version = session.get(AdapterVersion, job.adapter_version_id) if job.adapter_version_id else None
    return JobOut(
        id=job.id, adapter=job.adapter_name, base_model=base_name, status=job.status,
        progress={"step": job.progress_step, "total": job.progress_total},
        phase=job.phase,
        metrics=job.metrics, class_counts={"desirable": job.n_desirable, "undesirable": job.n_undesirable},
        counts=jobs.counts_by_set(job),
        class_weights=job.class_weights, eval_metrics=job.eval_metrics, timings=job.timings,
        snapshot_id=job.snapshot_id,
        policy_id=job.policy_id,
        adapter_version=(
            {"id": version.id, "adapter": version.adapter_name, "version": version.version} if version else None
        ),
        config=job.config, snapshot_options=job.snapshot_options, snapshot_filters=job.snapshot_filters,
        options=job.options,
        force_publish=job.force_publish, cancel_requested=job.cancel_requested, error=job.error,
        attempts=job.attempts, max_attempts=job.max_attempts, resumed_from_step=job.resumed_from_step,
        worker=job.worker, created_at=job.created_at, started_at=job.started_at, heartbeat_at=job.heartbeat_at,
        finished_at=job.finished_at, created_by_key_id=job.created_by_key_id,
    )


@router.post("", status_code=202, response_model=JobOut, summary="Start an alignment job", responses=ERRORS)
def start_job(body: JobIn, session: SessionDep, settings: SettingsDep, principal: TrainKey) -> JobOut:
    """Queue a job: 202 with its id. Without ``snapshot_id`` the worker takes a snapshot first."""
    check_job_config(body.config, settings=settings)
    config = validate_config(body.config)
    job = jobs.create_job(
        session, adapter_name=body.adapter, base_model_name=body.base_model, snapshot_id=body.snapshot_id,
        config=config, snapshot_options=body.snapshot_options, snapshot_filters=body.snapshot_filters,
        options=body.options,
        force_publish=body.force_publish, max_attempts=settings.job_max_attempts,
        preparing_model=settings.bundled_model_name if settings.register_bundled_model else None,
    )
    job.created_by_key_id = principal.key_id  # set here: jobs.create_job also serves policies and the CLI
    session.commit()
    try:
        task_id = send_task(settings, "prospect.jobs.run", args=[job.id], queue=TRAINING_QUEUE)
    except (KombuOperationalError, OSError) as exc:  # the broker is down: the reaper sends it later
        log.warning("job %s: cannot send its task now (%s); the reaper will", job.id, exc)
    else:
        jobs.mark_enqueued(session, job_id=job.id, task_id=task_id)
        session.commit()
    return job_out(session, job)


@router.get("", response_model=JobListOut, summary="List jobs, newest first", responses=ERRORS)
def list_jobs(
    session: SessionDep,
    _: ReadKey,
    status: JobStatus | None = None,
    adapter: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=jobs.MAX_LIST_LIMIT)] = 100,
) -> JobListOut:
    rows = jobs.list_jobs(session, status=status, adapter_name=adapter, limit=limit)
    return JobListOut(jobs=[job_out(session, j) for j in rows])


@router.get("/{job_id}", response_model=JobOut, summary="One job", responses=ERRORS)
def get_job(job_id: str, session: SessionDep, _: ReadKey) -> JobOut:
    return job_out(session, jobs.get_job(session, job_id=job_id))


@router.get("/{job_id}/metrics", response_model=JobMetricsOut, summary="Per-step training metrics",
            responses=ERRORS)
def get_metrics(
    job_id: str, session: SessionDep, _: ReadKey, after_step: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0
) -> JobMetricsOut:
    """The history for plots: one row per optimiser step, oldest first (``after_step`` to poll)."""
    rows = jobs.list_metrics(session, job_id=job_id, after_step=after_step)
    return JobMetricsOut(job_id=job_id, steps=[
        JobMetricOut(step=m.step, attempt=m.attempt, metrics=m.metrics, created_at=m.created_at) for m in rows
    ])


@router.post("/{job_id}/publish", response_model=JobOut, summary="Publish a refused job's adapter",
             responses=ERRORS)
def publish_refused_job(job_id: str, body: PublishRefusedIn, request: Request, session: SessionDep,
                        settings: SettingsDep, principal: TrainKey) -> JobOut:
    """Publish the adapter of a job the held-out gate refused (kept for PROSPECT_REFUSED_ADAPTER_KEEP_HOURS):
    the manifest and the job record that it went out over a refused gate, by which key and why."""
    refused.publish_refused(request.app.state.session_factory, settings=settings, job_id=job_id,
                            key_id=principal.key_id, reason=body.reason)
    session.expire_all()
    return job_out(session, jobs.get_job(session, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a job", responses=ERRORS)
def cancel_job(job_id: str, session: SessionDep, _: TrainKey) -> JobOut:
    """A queued job is cancelled at once; a running one stops within one training step and publishes nothing."""
    job = jobs.request_cancel(session, job_id=job_id)
    session.commit()
    return job_out(session, job)
