"""Celery tasks: thin wrappers with explicit names; ids in, plain functions do the work.

- ``prospect.jobs.run`` (queue ``training``): one delivery of a job. It is
  acknowledged late and rejected (re-queued) when its pool process dies, so a
  killed training process is redelivered; ``core.jobs.claim_job`` counts the
  attempts and caps them. When another job of the same adapter is running
  (``busy``) the task retries after a few heartbeats while the job stays
  queued; when this job runs in a live worker (``duplicate``) it ends.
- ``prospect.jobs.reap``: re-queues jobs whose worker vanished (stale heartbeat)
  and sends again queued jobs that no delivery has seen for a while (a lost or
  never-sent message).
- ``prospect.policies.tick``: queues jobs for due training policies.

Only transient errors are retried, TRANSIENT_RETRIES times TRANSIENT_BACKOFF_S apart: the database
unreachable (the job stays running, ours), or an object store down while the job needed it (its base
model, snapshot, checkpoint or publish: the job was put back in the queue; when the retries run out
first, the reaper sends it again after ``PROSPECT_QUEUED_RESEND_S``).
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_ready
from sqlalchemy.exc import OperationalError

from core import jobs
from core.db import get_engine, session_scope
from core.errors import Unavailable
from core.policy_tick import tick_policies
from core.settings import Settings, get_settings
from worker import bootstrap

log = logging.getLogger(__name__)

TRAINING_QUEUE = "training"
TRANSIENT_RETRIES = 5
TRANSIENT_BACKOFF_S = 10

# Leftover clean-up and the bundled model, in the background once the worker is up.
worker_ready.connect(bootstrap.on_worker_ready, weak=False)


def busy_countdown(settings: Settings) -> float:
    """Retry a busy job after three heartbeats: by then the running one may have finished."""
    return max(1.0, 3 * settings.heartbeat_interval_s)


@shared_task(name="prospect.ping")
def ping() -> str:
    """Round-trip check for the broker and a worker."""
    return "pong"


# max_retries=None: a busy job waits as long as the running one takes (the reaper bounds that).
@shared_task(name="prospect.jobs.run", bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_job(self, job_id: str) -> str:
    from worker.pipeline import run_job as run  # torch and friends load here, not at worker start

    settings = get_settings()
    try:
        outcome = run(job_id, settings=settings)
    except (OperationalError, Unavailable) as exc:
        why = f"database unavailable ({exc.orig})" if isinstance(exc, OperationalError) else exc.message
        log.warning("job %s: %s; retrying in %d s", job_id, why, TRANSIENT_BACKOFF_S)
        raise self.retry(exc=exc, countdown=TRANSIENT_BACKOFF_S,
                         max_retries=TRANSIENT_RETRIES) from exc
    if outcome.claim == "busy":
        # Tell the reaper this job's message is alive, so it does not send another.
        with session_scope(get_engine(settings)) as s:
            jobs.touch_queued(s, job_id=job_id)
        raise self.retry(countdown=busy_countdown(settings), max_retries=None)
    # "duplicate": a live worker runs this very job. No retry chain of our own: if that worker dies,
    # the reaper re-queues the job and sends it again.
    return outcome.status or outcome.claim


def enqueue_job(settings: Settings, job_id: str) -> str:
    """Send the task of ``job_id`` and record it on the job."""
    task_id = run_job.apply_async(args=[job_id], queue=TRAINING_QUEUE).id
    with session_scope(get_engine(settings)) as s:
        jobs.mark_enqueued(s, job_id=job_id, task_id=task_id)
    return task_id


@shared_task(name="prospect.jobs.reap", autoretry_for=(OperationalError,), max_retries=3, default_retry_delay=10)
def reap() -> dict:
    settings = get_settings()
    with session_scope(get_engine(settings)) as s:
        reaped = jobs.reap_stale_jobs(s, heartbeat_timeout_s=settings.heartbeat_timeout_s,
                                      resend_after_s=settings.queued_resend_s)
    for job_id in reaped.requeued + reaped.unsent:
        enqueue_job(settings, job_id)
    if reaped.requeued or reaped.finished or reaped.unsent:
        log.info("reaper: re-queued %s, finished %s, sent %s", reaped.requeued, reaped.finished, reaped.unsent)
    return {"requeued": reaped.requeued, "finished": reaped.finished, "sent": reaped.unsent}


@shared_task(name="prospect.policies.tick", autoretry_for=(OperationalError,), max_retries=3, default_retry_delay=10)
def policies_tick() -> list[str]:
    settings = get_settings()
    job_ids = tick_policies(get_engine(settings), settings=settings)
    for job_id in job_ids:
        enqueue_job(settings, job_id)
    return job_ids
