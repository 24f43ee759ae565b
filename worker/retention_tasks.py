"""Celery task ``prospect.snapshots.expire`` (beat, queue ``default``): snapshot retention."""

from __future__ import annotations

from celery import shared_task
from sqlalchemy.exc import OperationalError

from core.db import get_engine, session_scope
from core.settings import get_settings
from core.snapshot_retention import expire_snapshots


@shared_task(name="prospect.snapshots.expire", autoretry_for=(OperationalError,), max_retries=3,
             default_retry_delay=10)
def expire() -> list[str]:
    settings = get_settings()
    with session_scope(get_engine(settings)) as s:
        return expire_snapshots(s, settings=settings)
