"""/v1/snapshots: immutable, content-hashed KTO datasets of the counted votes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from api.artifact_response import artifact_response
from api.deps import ReadKey, SessionDep, SettingsDep, TrainKey
from api.http_cache import not_modified
from api.schemas.snapshots import SnapshotIn, SnapshotOut
from core import snapshots

router = APIRouter(prefix="/v1/snapshots", tags=["snapshots"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key lacks the scope."},
    404: {"description": "No snapshot with that id."},
    422: {"description": "Invalid filters or options; the message names the field."},
    503: {"description": "Database unavailable; see Retry-After."},
}


@router.post("", status_code=201, response_model=SnapshotOut, summary="Take a snapshot", responses=ERRORS)
def create_snapshot(body: SnapshotIn, session: SessionDep, settings: SettingsDep, principal: TrainKey):
    """Select the counted votes received up to now (filtered), aggregate them and store TRL KTO JSONL."""
    snap = snapshots.create_snapshot(session, settings=settings, filters=body.filters, options=body.options,
                                     created_by_key_id=principal.key_id)
    session.commit()
    return snap


@router.get("/{snapshot_id}", response_model=SnapshotOut, summary="One snapshot", responses=ERRORS)
def get_snapshot(snapshot_id: str, session: SessionDep, _: ReadKey):
    return snapshots.get_snapshot(session, snapshot_id=snapshot_id)


@router.get("/{snapshot_id}/export", summary="The snapshot as JSONL", responses={
    **ERRORS, 200: {"content": {"application/jsonl": {}}, "description": "TRL KTO rows; ETag = content hash."},
    304: {"description": "If-None-Match matched the ETag."}})
@router.head("/{snapshot_id}/export", include_in_schema=False)
def export_snapshot(snapshot_id: str, request: Request, session: SessionDep, settings: SettingsDep,
                    _: ReadKey) -> Response:
    """The stored JSONL; HEAD answers the same headers without the body."""
    snap = snapshots.get_snapshot(session, snapshot_id=snapshot_id)
    session.close()  # a slow client must not hold a connection (nor, on SQLite, a transaction) while it reads
    cached = not_modified(request, snap.content_hash)
    if cached is not None:
        return cached
    return artifact_response(settings, request, snapshots.snapshot_key(snap), sha256=snap.content_hash,
                             filename=f"snapshot-{snap.id}.jsonl", media_type="application/jsonl",
                             missing=f"the file of snapshot {snap.id} is missing; take a new snapshot")
