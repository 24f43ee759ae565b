"""Adapters: versions with their manifest figures, aliases and their history, live thumbs-up rates, the
running rollout, downloads, and the promote / roll-back form (a compare-and-swap)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from api.queue import commit_and_kick
from api.routers import adapters as adapters_api
from api.ui import session as ui_session
from api.ui.render import UiRoute, error_page, page, see_other
from core import adapter_aliases, adapters, live_stats, rollouts
from core.errors import Conflict, InvalidInput

router = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)
SignedIn = Annotated[ui_session.Session, Depends(ui_session.signed_in)]


@router.get("/adapters", response_class=HTMLResponse)
def adapters_page(request: Request, session: SignedIn) -> Response:
    with request.app.state.session_factory() as db:
        rows = adapters.list_adapters(db)
        running = {a["name"]: rollouts.running_rollout(db, adapter_name=a["name"]) for a in rows}
    return page(request, "adapters.html", adapters=rows, running=running)


def _adapter_context(db, name: str) -> dict:
    versions = adapters.list_versions(db, adapter_name=name)  # NotFound -> 404 page
    aliases = adapter_aliases.aliases_of(db, adapter_name=name)
    by_version: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    live = live_stats.adapter_feedback(db, adapter_name=name)
    running = rollouts.running_rollout(db, adapter_name=name)
    return {
        "name": name, "versions": list(reversed(versions)), "aliases": aliases, "by_version": by_version,
        "history": {a: list(reversed(adapter_aliases.alias_history(db, adapter_name=name, alias=a))) for a in aliases},
        "live": {v["version"]: v for v in live["versions"]}, "base_live": live["base"],
        "running": running, "running_figures": rollouts.current_figures(db, running) if running else None,
        "past_rollouts": [r for r in rollouts.list_rollouts(db, adapter_name=name) if r.status != "running"][:10],
    }


def _adapter_page(request: Request, name: str, *, status_code: int = 200, **extra) -> Response:
    with request.app.state.session_factory() as db:
        context = _adapter_context(db, name)
    return page(request, "adapter.html", status_code=status_code, **context, **extra)


@router.get("/adapters/{name}", response_class=HTMLResponse)
def adapter_page(request: Request, name: str, session: SignedIn, moved: str | None = None) -> Response:
    return _adapter_page(request, name, moved=moved)


def _int(value: str | None, field: str) -> int | None:
    if value in (None, ""):
        return None
    if not value.strip().isdigit():
        raise InvalidInput(f"{field}: {value!r} is not a version number")
    return int(value)


@router.post("/adapters/{name}/aliases", response_class=HTMLResponse)
async def move_alias(request: Request, name: str, session: SignedIn) -> Response:
    """Point an alias at a version, only if it still points where the form saw it (else a 409 that says why)."""
    fields = await ui_session.form(request, session)
    if not session.can("train"):
        return error_page(request, 403, "moving an alias needs a key with the 'train' scope")
    alias = fields.get("alias", "").strip()
    version, expected = _int(fields.get("version"), "version"), _int(fields.get("expected_version"), "expected")
    if version is None:
        raise InvalidInput("version: choose the version the alias should point to")
    conflict = None
    with request.app.state.session_factory() as db:  # closed before any other session opens (SQLite locks)
        try:
            adapter_aliases.move_alias(db, adapter_name=name, alias=alias, version=version, expected_version=expected,
                                moved_by=adapters_api.moved_by(session.principal) + " via the dashboard")
        except Conflict as exc:
            db.rollback()
            conflict = {"alias": alias, "version": version, "expected": expected, "message": exc.message,
                        "now": adapter_aliases.aliases_of(db, adapter_name=name).get(alias)}
        else:
            commit_and_kick(db, request.app.state.settings)
    if conflict is not None:
        return _adapter_page(request, name, status_code=409, conflict=conflict)
    return see_other(f"/ui/adapters/{name}?moved={alias}")


@router.get("/adapters/{name}/versions/{version}/download")
def download(request: Request, name: str, version: int, session: SignedIn) -> Response:
    """The version's .tar.gz, as GET /v1/adapters/.../download serves it (the session stands for the key)."""
    with request.app.state.session_factory() as db:
        return adapters_api.download(name, str(version), request, db, request.app.state.settings,
                                     session.principal)


@router.get("/adapters/{name}/versions/{version}/manifest.json")
def manifest(request: Request, name: str, version: int, session: SignedIn) -> Response:
    with request.app.state.session_factory() as db:
        return adapters_api.get_manifest(name, str(version), request, db, session.principal)
