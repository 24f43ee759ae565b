"""/v1/base-models: the pinned reference models jobs train against."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import AdminKey, ReadKey, SessionDep, SettingsDep
from api.schemas.base_models import BaseModelIn, BaseModelOut
from core import base_models

router = APIRouter(prefix="/v1/base-models", tags=["base models"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key lacks the scope."},
    404: {"description": "No base model with that name."},
    409: {"description": "The name is taken."},
    422: {"description": "Invalid name or source; the message says how to fix it."},
}


@router.get("", response_model=list[BaseModelOut], summary="List base models", responses=ERRORS)
def list_base_models(session: SessionDep, _: ReadKey) -> list:
    return base_models.list_base_models(session)


@router.get("/{name}", response_model=BaseModelOut, summary="One base model", responses=ERRORS)
def get_base_model(name: str, session: SessionDep, _: ReadKey):
    return base_models.get_base_model(session, name=name)


@router.post("", status_code=201, response_model=BaseModelOut, summary="Register a base model", responses=ERRORS)
def register_base_model(body: BaseModelIn, session: SessionDep, settings: SettingsDep, principal: AdminKey):
    """Register a model folder under the models folder (or PROSPECT_BASE_MODEL_DIRS); the sha256 of every file
    a job loads is computed now, outside any transaction, and checked by every job.

    An ``s3://bucket/prefix`` source is read from object storage (streamed and hashed, not copied); workers
    fetch, verify and cache it. Hub models are downloaded by `prospect models add NAME ORG/MODEL` (a long
    download does not belong in a request).
    """
    record = base_models.register_base_model(session, settings=settings, name=body.name, source=body.source,
                                             revision=body.revision, allow_download=False,
                                             created_by_key_id=principal.key_id)
    session.commit()
    return record
