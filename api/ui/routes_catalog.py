"""Training policies and base models: lists and details (read-only; create them with the CLI or the API)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from api.ui import session as ui_session
from api.ui.render import UiRoute, page
from core import base_models, jobs, policies
from core.models import BaseModelRecord

router = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)
SignedIn = Annotated[ui_session.Session, Depends(ui_session.signed_in)]


def _base_names(db) -> dict[int, str]:
    return {b.id: b.name for b in base_models.list_base_models(db)}


@router.get("/policies", response_class=HTMLResponse)
def policies_page(request: Request, session: SignedIn) -> Response:
    with request.app.state.session_factory() as db:
        return page(request, "policies.html", policies=policies.list_policies(db), base_names=_base_names(db))


@router.get("/policies/{policy_id}", response_class=HTMLResponse)
def policy_page(request: Request, policy_id: str, session: SignedIn) -> Response:
    with request.app.state.session_factory() as db:
        policy = policies.get_policy(db, policy_id=policy_id)
        recent = [j for j in jobs.list_jobs(db, adapter_name=policy.adapter_name, limit=50)
                  if j.policy_id == policy.id][:20]
        return page(request, "policy.html", policy=policy, base=db.get(BaseModelRecord, policy.base_model_id),
                    jobs=recent)


@router.get("/base-models", response_class=HTMLResponse)
def base_models_page(request: Request, session: SignedIn) -> Response:
    with request.app.state.session_factory() as db:
        return page(request, "base_models.html", models=base_models.list_base_models(db))


@router.get("/base-models/{name}", response_class=HTMLResponse)
def base_model_page(request: Request, name: str, session: SignedIn) -> Response:
    with request.app.state.session_factory() as db:
        model = base_models.get_base_model(db, name=name)
        recent = [j for j in jobs.list_jobs(db, limit=200) if j.base_model_id == model.id][:20]
        return page(request, "base_model.html", model=model, jobs=recent)
