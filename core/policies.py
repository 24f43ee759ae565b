"""Training policies: "train adapter X on base model B whenever enough new feedback has arrived".

This module is the data side (create, read, delete); the Celery beat tick
that evaluates the policies and enqueues jobs lives with the jobs. One live
policy per adapter name (a partial unique index): two would race to train it.
``config`` holds overrides of the alignment config as given; the job
validates them when it starts (core may not import alignment/).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.base_models import check_name, get_base_model_or_none
from core.errors import Conflict, InvalidInput, NotFound
from core.models import TrainingPolicy, utcnow
from core.rollouts import RolloutSpec
from core.snapshots import parse_filters, parse_options


def _check_count(value: Any, field: str, meaning: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{field} must be an integer >= 1 ({meaning}), got {value!r}")


def create_policy(
    session: Session,
    *,
    adapter_name: str,
    base_model_name: str,
    min_new_feedback: int = 100,
    min_interval_minutes: int = 60,
    config: dict[str, Any] | None = None,
    snapshot_options: dict[str, Any] | None = None,
    snapshot_filters: dict[str, Any] | None = None,
    rollout: dict[str, Any] | None = None,
    created_by_key_id: int | None = None,
) -> TrainingPolicy:
    """Create a policy; flushes, the caller commits. ``rollout`` (core.rollouts.RolloutSpec): each version
    the policy publishes starts a rollout against the champion."""
    check_name(adapter_name, what="adapter")
    base = get_base_model_or_none(session, name=base_model_name)
    if base is None:
        raise InvalidInput(f"base model {base_model_name!r} is not registered; see GET /v1/base-models")
    _check_count(min_new_feedback, "min_new_feedback", "new counted votes before a job starts")
    _check_count(min_interval_minutes, "min_interval_minutes", "minutes between two jobs")
    if config is not None and not isinstance(config, dict):
        raise InvalidInput("config must be a JSON object of alignment config overrides, e.g. {\"beta\": 0.1}")
    policy = TrainingPolicy(
        adapter_name=adapter_name, base_model_id=base.id, min_new_feedback=min_new_feedback,
        min_interval_minutes=min_interval_minutes, config=config or {},
        snapshot_options=parse_options(snapshot_options).model_dump(mode="json"),
        snapshot_filters=parse_filters(snapshot_filters).model_dump(mode="json", exclude_defaults=True),
        rollout=RolloutSpec.from_dict(rollout).to_dict() if rollout is not None else None,
        created_by_key_id=created_by_key_id,
    )
    try:
        with session.begin_nested():
            session.add(policy)
    except IntegrityError as exc:
        raise Conflict(f"adapter {adapter_name!r} already has a policy; delete it first (DELETE /v1/policies/ID)") \
            from exc
    return policy


def get_policy(session: Session, *, policy_id: str) -> TrainingPolicy:
    policy = session.get(TrainingPolicy, policy_id)
    if policy is None or policy.deleted_at is not None:
        raise NotFound(f"no policy with id {policy_id!r}")
    return policy


def list_policies(session: Session) -> list[TrainingPolicy]:
    return list(session.scalars(select(TrainingPolicy).where(TrainingPolicy.deleted_at.is_(None))
                                .order_by(TrainingPolicy.created_at, TrainingPolicy.id)))


def delete_policy(session: Session, *, policy_id: str) -> TrainingPolicy:
    """Soft delete: the row stays (jobs point at it); it stops triggering at once."""
    policy = get_policy(session, policy_id=policy_id)
    policy.deleted_at, policy.enabled = utcnow(), False
    session.flush()
    return policy
