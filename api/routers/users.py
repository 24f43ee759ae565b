"""/v1/users/{user_id}/feedback: an admin erases one user's feedback (texts, votes, snapshot rows)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from starlette.concurrency import run_in_threadpool

from api.deps import AdminKey
from api.schemas.users import ErasureOut
from core import erasure

router = APIRouter(prefix="/v1/users", tags=["users"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key."},
    403: {"description": "The key lacks the admin scope."},
    422: {"description": "Invalid user id."},
}


@router.delete("/{user_id}/feedback", response_model=ErasureOut, summary="Erase a user's feedback",
               responses=ERRORS)
async def erase_user_feedback(user_id: Annotated[str, Path(min_length=1, max_length=200)], request: Request,
                              _: AdminKey) -> dict:
    """Remove the texts of the user's events, stop counting their votes, rewrite the snapshot files holding
    their rows, and name the adapter versions trained on those rows. Idempotent."""
    state = request.app.state
    return await run_in_threadpool(erasure.erase_user_feedback, state.engine, settings=state.settings,
                                   user_id=user_id)
