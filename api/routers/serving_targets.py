"""/v1/serving-targets (admin): the serving stacks Prospect tells about an adapter's changes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response

from api.deps import AdminKey, SessionDep
from api.schemas.serving_targets import DeliveryOut, TargetIn, TargetOut
from core import serving_targets

router = APIRouter(prefix="/v1/serving-targets", tags=["serving targets"])

# Postgres refuses NUL in text: such an id is a 422 here, not a 500 from the driver.
TargetId = Annotated[str, Path(max_length=32, pattern=r"^[^\x00]+$")]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key lacks the admin scope."},
    404: {"description": "No live target with that id."},
    409: {"description": "A live target has that name."},
    422: {"description": "Invalid input; the message says how to fix it."},
}


@router.post("", status_code=201, response_model=TargetOut, summary="Register a target", responses=ERRORS)
def create_target(body: TargetIn, session: SessionDep, _: AdminKey) -> dict:
    """The answer carries the secret (the only time it is shown); events of ``adapter`` from now on reach it."""
    t = serving_targets.create_target(session, name=body.name, kind=body.kind, url=body.url,
                                      adapter_name=body.adapter, secret=body.secret, adapter_root=body.adapter_root,
                                      max_lora_rank=body.max_lora_rank)
    session.commit()
    return serving_targets.target_out(t, with_secret=True)


@router.get("", response_model=list[TargetOut], summary="List targets", responses=ERRORS)
def list_targets(session: SessionDep, _: AdminKey) -> list[dict]:
    return [serving_targets.target_out(t) for t in serving_targets.list_targets(session)]


@router.get("/{target_id}", response_model=TargetOut, summary="One target", responses=ERRORS)
def get_target(target_id: TargetId, session: SessionDep, _: AdminKey) -> dict:
    return serving_targets.target_out(serving_targets.get_target(session, target_id=target_id))


@router.delete("/{target_id}", status_code=204, summary="Delete a target", responses=ERRORS)
def delete_target(target_id: TargetId, session: SessionDep, _: AdminKey) -> Response:
    """It hears nothing more; pending deliveries end failed; the target and its deliveries then answer 404."""
    serving_targets.delete_target(session, target_id=target_id)
    session.commit()
    return Response(status_code=204)


@router.get("/{target_id}/deliveries", response_model=list[DeliveryOut], summary="Deliveries, newest first",
            responses=ERRORS)
def list_deliveries(
    target_id: TargetId, session: SessionDep, _: AdminKey,
    status: Literal["pending", "delivered", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict]:
    return [{"delivery_id": d.id, "event": d.event, "status": d.status, "attempts": d.attempts,
             "last_status_code": d.last_status_code, "last_error": d.last_error,
             "next_attempt_at": d.next_attempt_at, "created_at": d.created_at, "delivered_at": d.delivered_at,
             "payload": d.payload}
            for d in serving_targets.list_deliveries(session, target_id=target_id, status=status, limit=limit)]
