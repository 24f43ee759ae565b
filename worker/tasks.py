"""Celery tasks: thin wrappers with explicit names; ids in, plain functions do the work."""

from __future__ import annotations

import logging

from celery import shared_task

log = logging.getLogger(__name__)


@shared_task(name="prospect.ping")
def ping() -> str:
    """Round-trip check for the broker and a worker."""
    return "pong"
