"""Sign-in with an API key, sign-out, and the dashboard's front door."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response

from api.ui import session as ui_session
from api.ui.render import UiRoute, page, see_other
from core.errors import Unauthorized
from core.keys import authenticate

router = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)
SignedIn = Annotated[ui_session.Session, Depends(ui_session.signed_in)]


def _safe_next(target: str | None) -> str:
    # Only paths of the dashboard itself: no open redirect to another site.
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/feedback"


def _login_page(request: Request, *, next_url: str, error: str | None = None, status_code: int = 200) -> Response:
    anon = ui_session.anonymous(request)
    response = page(request, "login.html", status_code=status_code, csrf=anon.csrf, next=next_url, error=error)
    ui_session.set_cookie(request, response, anon)
    return response


@router.get("", response_class=HTMLResponse)
def index(request: Request) -> Response:
    return see_other("/ui/feedback" if ui_session.current(request) else "/ui/login")


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    return _login_page(request, next_url=_safe_next(next))


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    fields = await ui_session.form(request, ui_session.anonymous(request))
    next_url = _safe_next(fields.get("next"))
    try:
        with request.app.state.session_factory() as db:
            principal = authenticate(db, plaintext=fields.get("key", "").strip())
    except Unauthorized as exc:
        return _login_page(request, next_url=next_url, error=exc.message, status_code=401)
    signed = ui_session.Session(csrf=ui_session.new_token(), principal=principal)
    if not signed.can("read"):
        return _login_page(request, next_url=next_url, status_code=403,
                           error="this key lacks the 'read' scope the dashboard needs (it has: "
                                 f"{', '.join(sorted(principal.scopes))}); create one with "
                                 "`prospect keys create --name me --scopes read`")
    response = see_other(next_url)
    ui_session.set_cookie(request, response, signed)
    return response


@router.post("/logout", response_class=HTMLResponse)
async def logout(request: Request, session: SignedIn) -> Response:
    await ui_session.form(request, session)
    response = see_other("/ui/login")
    ui_session.clear_cookie(response)
    return response
