"""Celery tasks of the live loop: thin wrappers with explicit names (beat runs both periodically).

- ``prospect.rollouts.tick``: evaluates every running rollout (core.rollouts), then delivers the
  outbox rows the decisions wrote.
- ``prospect.outbox.sweep``: one attempt at every due outbox row (core.delivery); the API sends it
  after a change so events go out at once, and beat every ``outbox_interval_s`` so rows written by
  a process that died before asking, and retries after a backoff, go out too.
"""

from __future__ import annotations

import logging

from celery import shared_task
from sqlalchemy.exc import OperationalError

from core import delivery, rollouts
from core.db import get_engine
from core.settings import get_settings

log = logging.getLogger(__name__)


@shared_task(name="prospect.outbox.sweep", autoretry_for=(OperationalError,), max_retries=3, default_retry_delay=5)
def outbox_sweep() -> dict[str, str | None]:
    settings = get_settings()
    return delivery.deliver_due(get_engine(settings), settings=settings)


@shared_task(name="prospect.rollouts.tick", autoretry_for=(OperationalError,), max_retries=3, default_retry_delay=10)
def rollouts_tick() -> dict[str, str]:
    settings = get_settings()
    statuses = rollouts.evaluate_running(get_engine(settings))
    if any(s != "running" for s in statuses.values()):
        delivery.deliver_due(get_engine(settings), settings=settings)
    return statuses
