"""The Celery application, configured from Settings.

Run a worker with ``celery -A worker.celery_app worker -Q training,default``
and beat with ``celery -A worker.celery_app beat``.
"""

from __future__ import annotations

import os
from datetime import timedelta

from celery import Celery
from kombu import Queue

from core.logging import configure_logging
from core.settings import Settings, get_settings

# Hugging Face's progress bars (model conversion, weight loading) are terminal animations: in a worker
# they end up in the log as hundreds of carriage-return lines (and, redirected by Celery, as warnings).
# Set before anything imports huggingface_hub or transformers, which read it once.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

TRAINING_QUEUE = "training"
DEFAULT_QUEUE = "default"


def beat_schedule(settings: Settings) -> dict:
    return {
        "check-training-policies": {
            "task": "prospect.policies.tick",
            "schedule": timedelta(seconds=settings.policy_interval_s),
            "options": {"queue": DEFAULT_QUEUE, "expires": settings.policy_interval_s},
        },
        "reap-vanished-jobs": {
            "task": "prospect.jobs.reap",
            "schedule": timedelta(seconds=settings.reaper_interval_s),
            "options": {"queue": DEFAULT_QUEUE, "expires": settings.reaper_interval_s},
        },
        "evaluate-rollouts": {
            "task": "prospect.rollouts.tick",
            "schedule": timedelta(seconds=settings.rollout_interval_s),
            "options": {"queue": DEFAULT_QUEUE, "expires": settings.rollout_interval_s},
        },
        "deliver-outbox": {
            "task": "prospect.outbox.sweep",
            "schedule": timedelta(seconds=settings.outbox_interval_s),
            "options": {"queue": DEFAULT_QUEUE, "expires": settings.outbox_interval_s},
        },
        "expire-old-snapshots": {
            "task": "prospect.snapshots.expire",
            "schedule": timedelta(seconds=settings.retention_interval_s),
            "options": {"queue": DEFAULT_QUEUE, "expires": settings.retention_interval_s},
        },
    }


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    settings.ensure_dirs()
    app = Celery("prospect", broker=settings.celery_broker_url, backend=settings.celery_result_backend,
                 include=["worker.retention_tasks"])
    app.conf.update(
        task_queues=(Queue(DEFAULT_QUEUE), Queue(TRAINING_QUEUE)),
        task_default_queue=DEFAULT_QUEUE,
        task_routes={"prospect.jobs.run": {"queue": TRAINING_QUEUE}},
        # A task is acknowledged only after it finishes, so a killed worker's job is redelivered;
        # the attempts counter in the database caps how often.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=settings.broker_transport_options,
        broker_connection_retry_on_startup=True,
        result_expires=timedelta(days=1),
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        timezone="UTC",
        enable_utc=True,
        beat_schedule=beat_schedule(settings),
        worker_hijack_root_logger=False,
    )
    app.autodiscover_tasks(["worker"], related_name="tasks", force=True)
    app.autodiscover_tasks(["worker"], related_name="live_tasks", force=True)
    return app


configure_logging(get_settings().log_level)
app = create_celery()
