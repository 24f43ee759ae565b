"""/v1/policies: periodic training ("train when enough new feedback has arrived").

Celery beat evaluates the live policies every minute; this router only
creates, reads and deletes them. GETs need the read scope, changes the train scope.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from api.deps import ReadKey, SessionDep, SettingsDep, TrainKey
from api.schemas.policies import PolicyIn, PolicyOut
from core import policies
from core.job_limits import check_job_config
from core.models import BaseModelRecord, TrainingPolicy

router = APIRouter(prefix="/v1/policies", tags=["policies"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key lacks the scope."},
    404: {"description": "No live policy with that id."},
    409: {"description": "The adapter already has a policy."},
    422: {"description": "Invalid input; the message says how to fix it."},
}


def _out(session: Session, p: TrainingPolicy) -> PolicyOut:
    return PolicyOut(
        id=p.id, adapter=p.adapter_name, base_model=session.get(BaseModelRecord, p.base_model_id).name,
        min_new_feedback=p.min_new_feedback, min_interval_minutes=p.min_interval_minutes, config=p.config,
        snapshot_options=p.snapshot_options, snapshot_filters=p.snapshot_filters, rollout=p.rollout,
        enabled=p.enabled, last_job_id=p.last_job_id,
        last_triggered_at=p.last_triggered_at, created_at=p.created_at, created_by_key_id=p.created_by_key_id,
    )


@router.post("", status_code=201, response_model=PolicyOut, summary="Create a policy", responses=ERRORS)
def create_policy(body: PolicyIn, session: SessionDep, settings: SettingsDep, principal: TrainKey) -> PolicyOut:
    """``config`` is stored as given (within the server's job limits) and validated by each job it starts."""
    check_job_config(body.config, settings=settings)
    p = policies.create_policy(
        session, adapter_name=body.adapter, base_model_name=body.base_model, min_new_feedback=body.min_new_feedback,
        min_interval_minutes=body.min_interval_minutes, config=body.config,
        snapshot_options=body.snapshot_options.model_dump(), 
        rollout=body.rollout.given() if body.rollout is not None else None,
        snapshot_filters=body.snapshot_filters.model_dump(mode="json", exclude_defaults=True),
        created_by_key_id=principal.key_id,
    )
    session.commit()
    return _out(session, p)


@router.get("", response_model=list[PolicyOut], summary="List live policies", responses=ERRORS)
def list_policies(session: SessionDep, _: ReadKey) -> list[PolicyOut]:
    return [_out(session, p) for p in policies.list_policies(session)]


@router.get("/{policy_id}", response_model=PolicyOut, summary="One policy", responses=ERRORS)
def get_policy(policy_id: str, session: SessionDep, _: ReadKey) -> PolicyOut:
    return _out(session, policies.get_policy(session, policy_id=policy_id))


@router.delete("/{policy_id}", status_code=204, summary="Delete a policy", responses=ERRORS)
def delete_policy(policy_id: str, session: SessionDep, _: TrainKey) -> Response:
    """It stops triggering at once; jobs it started keep pointing to it."""
    policies.delete_policy(session, policy_id=policy_id)
    session.commit()
    return Response(status_code=204)
