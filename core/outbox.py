"""The outbox: what serving targets must hear, written in the transaction of the change itself.

:func:`emit` adds one ``deliveries`` row per live target of the adapter, in
the caller's session: the change and its outbox rows commit together or not at
all, so nothing is told that did not happen and nothing that happened is
lost when a process dies right after the commit. ``core.delivery`` sends them,
per target in the order of ``seq`` (numbered under the adapter's lock, so in
commit order).

Events: ``version.published``, ``alias.moved``, ``rollout.started``,
``rollout.decided`` (also when a rollout is stopped or expires; its status says which).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.attribution import served_name
from core.clock import db_now
from core.db import lock_adapter
from core.models import Delivery, Rollout, ServingTarget, new_id

EVENTS = ("version.published", "alias.moved", "rollout.started", "rollout.decided")
# Delivery ids written by this session and not yet sent; see pending_in().
_SESSION_KEY = "prospect_outbox_new"


def download_path(adapter_name: str, version: int) -> str:
    return f"/v1/adapters/{adapter_name}/versions/{version}/download"


def rollout_summary(rollout: Rollout) -> dict[str, Any]:
    return {"id": rollout.id, "status": rollout.status, "candidate_version": rollout.candidate_version,
            "baseline_version": rollout.baseline_version, "traffic": rollout.traffic, "reason": rollout.reason,
            "p_candidate_better": (rollout.figures or {}).get("p_candidate_better")}


def emit(
    session: Session,
    *,
    event: str,
    adapter_name: str,
    version: int | None = None,
    alias: str | None = None,
    previous_version: int | None = None,
    rollout: Rollout | None = None,
    now: datetime | None = None,
) -> list[Delivery]:
    """Queue ``event`` for every live target of ``adapter_name``; flushes, the caller commits."""
    assert event in EVENTS, event
    now = now or db_now(session)  # one clock with the deliveries' leases (core.clock)
    # Numbers per target follow the commit order: every emitter of this adapter holds its lock until commit.
    lock_adapter(session, adapter_name)
    targets = session.scalars(select(ServingTarget).where(ServingTarget.adapter_name == adapter_name,
                                                          ServingTarget.deleted_at.is_(None)))
    rows = []
    for target in targets:
        last = session.scalar(select(func.max(Delivery.seq)).where(Delivery.target_id == target.id)) or 0
        delivery_id = new_id()
        payload = {
            "event": event, "adapter": adapter_name, "version": version, "alias": alias,
            "previous_version": previous_version,
            "served_name": served_name(adapter_name, version) if version is not None else None,
            # The download's sha256 is filled in on the first attempt (it is computed lazily).
            "sha256": None,
            "download_path": download_path(adapter_name, version) if version is not None else None,
            "rollout": rollout_summary(rollout) if rollout is not None else None,
            "occurred_at": now.isoformat(), "delivery_id": delivery_id,
        }
        rows.append(Delivery(id=delivery_id, target_id=target.id, seq=last + 1, event=event, payload=payload,
                             next_attempt_at=now, created_at=now))
    session.add_all(rows)
    session.flush()
    session.info.setdefault(_SESSION_KEY, []).extend(r.id for r in rows)
    return rows


def pending_in(session: Session) -> list[str]:
    """Delivery ids this session emitted since the last call (send them once it has committed)."""
    return session.info.pop(_SESSION_KEY, [])
