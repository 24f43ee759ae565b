"""A light Celery client: the API enqueues tasks by name and never imports worker/ or torch."""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import Celery
from kombu import Connection
from kombu.exceptions import KombuError
from sqlalchemy.orm import Session

from core import outbox
from core.settings import Settings

log = logging.getLogger(__name__)

OUTBOX_SWEEP_TASK = "prospect.outbox.sweep"
TRAINING_QUEUE = "training"
DEFAULT_QUEUE = "default"


@lru_cache(maxsize=4)
def _client(broker_url: str, backend: str, transport_options: tuple) -> Celery:
    app = Celery("prospect-api", broker=broker_url, backend=backend)
    app.conf.broker_transport_options = dict(transport_options)
    app.conf.task_default_queue = DEFAULT_QUEUE
    return app


def celery_client(settings: Settings) -> Celery:
    options = tuple(sorted(settings.broker_transport_options.items()))
    return _client(settings.celery_broker_url, settings.celery_result_backend, options)


def send_task(settings: Settings, name: str, *, args: list | None = None, queue: str = DEFAULT_QUEUE) -> str:
    result = celery_client(settings).send_task(name, args=args or [], queue=queue)
    return result.id


def check_broker(settings: Settings, timeout_s: float = 2.0) -> None:
    """Raise if the broker cannot be reached within ``timeout_s``."""
    with Connection(settings.celery_broker_url, connect_timeout=timeout_s) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout_s)


def commit_and_kick(session: Session, settings: Settings) -> None:
    """Commit, then ask a worker to deliver the outbox rows written (best effort: beat sweeps too)."""
    session.commit()
    if outbox.pending_in(session):
        try:
            send_task(settings, OUTBOX_SWEEP_TASK)
        except (KombuError, OSError) as exc:  # the rows are committed; the next sweep sends them
            log.warning("could not ask a worker to deliver now (%s); beat's sweep will", exc)
