"""The periodic-training tick (Celery beat runs it every ``policy_interval_s``).

For each enabled policy: when at least ``min_new_feedback`` counted votes are
newer than the policy's watermark, ``min_interval_minutes`` have passed since
its last job and no job of its adapter is queued or running, take a snapshot
(with the policy's filters: one product's feedback per adapter), queue a job
on it and move the watermark. The caller sends a task per returned job id.

The snapshot is taken with no lock held, between two short transactions that
check the policy is due (so ingestion never waits on it); the second check
also catches a concurrent tick.

"Newer" is by vote row id: ``votes`` rows are created in id order, and a
re-vote updates its row in place (the same voter judging the same pair again
is not new feedback). The watermark is the largest vote id seen when the job
was made.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select

from core import jobs
from core.db import session_scope
from core.models import BaseModelRecord, TrainingPolicy, Vote, utcnow
from core.settings import Settings
from core.snapshots import create_snapshot

log = logging.getLogger(__name__)


def _due(policy: TrainingPolicy, *, new_votes: int, now: datetime) -> str | None:
    """Why the policy is not due, or None when it is."""
    if new_votes < policy.min_new_feedback:
        return f"{new_votes} new vote(s) < {policy.min_new_feedback}"
    if policy.last_triggered_at is not None:
        ready_at = policy.last_triggered_at + timedelta(minutes=policy.min_interval_minutes)
        if now < ready_at:
            return f"interval not passed (next at {ready_at:%Y-%m-%d %H:%M:%S})"
    return None


def tick_policies(engine: Engine, *, settings: Settings, now: datetime | None = None) -> list[str]:
    """Queue a job for every due policy; returns the new job ids (send a task for each)."""
    now = now or utcnow()
    with session_scope(engine) as s:
        policy_ids = list(s.scalars(
            select(TrainingPolicy.id)
            .where(TrainingPolicy.enabled.is_(True), TrainingPolicy.deleted_at.is_(None))
            .order_by(TrainingPolicy.created_at)
        ))
    queued = []
    for policy_id in policy_ids:
        try:
            job_id = _tick_one(engine, policy_id=policy_id, settings=settings, now=now)
        except Exception:  # one broken policy must not stop the others
            log.exception("policy %s: tick failed", policy_id)
            continue
        if job_id is not None:
            queued.append(job_id)
    return queued


def _check(session, policy_id: str, *, now: datetime) -> tuple[TrainingPolicy | None, int, str | None]:
    """The policy (locked), the vote watermark now, and why it is not due (None: due)."""
    policy = session.get(TrainingPolicy, policy_id, with_for_update=True, populate_existing=True)
    if policy is None or not policy.enabled or policy.deleted_at is not None:
        return None, 0, "disabled or deleted"
    watermark = session.scalar(select(func.max(Vote.id))) or 0
    new_votes = session.scalar(select(func.count()).select_from(Vote).where(Vote.id > policy.last_vote_watermark))
    reason = _due(policy, new_votes=new_votes, now=now)
    if reason is None and jobs.has_active_job(session, adapter_name=policy.adapter_name):
        reason = "a job of this adapter is queued or running"
    return policy, watermark, reason


def _tick_one(engine: Engine, *, policy_id: str, settings: Settings, now: datetime) -> str | None:
    # 1. Is it due? A short transaction: on SQLite the policy lock is the database's write lock.
    with session_scope(engine) as s:
        policy, watermark, reason = _check(s, policy_id, now=now)
        if reason is not None:
            log.debug("policy %s: not due: %s", policy_id, reason)
            return None
        seen_watermark = policy.last_vote_watermark
        filters, options = policy.snapshot_filters or None, policy.snapshot_options or None
    # 2. The snapshot, with no lock held: ingestion goes on while it reads (on SQLite through its own
    #    connection; the session's write transaction starts only when the row is added, in step 3).
    with session_scope(engine) as s:
        snapshot = create_snapshot(s, settings=settings, filters=filters, options=options)
        # 3. Still due, and nobody else acted on the policy meanwhile? Then queue the job.
        policy, _, reason = _check(s, policy_id, now=now)
        if reason is None and policy.last_vote_watermark != seen_watermark:
            reason = "another tick triggered it meanwhile"
        if reason is not None:
            log.info("policy %s: no longer due after its snapshot (%s); snapshot %s left unused", policy_id,
                     reason, snapshot.id)
            return None
        base = s.get(BaseModelRecord, policy.base_model_id)
        job = jobs.create_job(
            s, adapter_name=policy.adapter_name, base_model_name=base.name, snapshot_id=snapshot.id,
            config=policy.config, policy_id=policy.id, max_attempts=settings.job_max_attempts,
        )
        policy.last_job_id = job.id
        policy.last_triggered_at = now
        policy.last_vote_watermark = watermark
        log.info("policy %s: queued job %s for %s on snapshot %s (%d rows)", policy_id, job.id,
                 policy.adapter_name, snapshot.id, snapshot.n_rows)
        return job.id
