"""Celery task ``prospect.snapshots.expire`` (beat, queue ``default``): snapshot retention, and the
artifact store's orphan sweep (``core.artifact_sweep``)."""

from __future__ import annotations

import logging

from celery import shared_task
from sqlalchemy.exc import OperationalError

from core.artifact_store import get_store
from core.artifact_sweep import sweep_orphans
from core.db import get_engine, session_scope
from core.refused import expire_refused
from core.settings import get_settings
from core.snapshot_retention import expire_snapshots


@shared_task(name="prospect.snapshots.expire", autoretry_for=(OperationalError,), max_retries=3,
             default_retry_delay=10)
def expire() -> list[str]:
    settings = get_settings()
    removed = expire_refused(settings)  # refused adapters past refused_adapter_keep_hours
    if removed:
        logging.getLogger(__name__).info("deleted the kept adapters of refused jobs %s", ", ".join(removed))
    with session_scope(get_engine(settings)) as s:
        expired = expire_snapshots(s, settings=settings)
    with session_scope(get_engine(settings)) as s:
        sweep_orphans(get_store(settings), s, grace_s=settings.artifact_orphan_grace_s)
    return expired
