"""Templates, filters and the route class of the dashboard: domain errors become HTML pages, not JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from api.errors import status_for
from api.ui import session as ui_session
from core.errors import DomainError

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "same-origin"}


def _dt(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _interval(value: list | None) -> str:
    if not value or value[0] is None or value[1] is None:
        return "—"
    lo, hi = value
    return f"{100 * lo:.1f}–{100 * hi:.1f}%" if 0 <= lo <= 1 and 0 <= hi <= 1 else f"[{lo:.4f}, {hi:.4f}]"


def _num(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


templates.env.filters.update(dt=_dt, pct=_pct, interval=_interval, num=_num, q=lambda v: quote(str(v), safe=""))


def page(request: Request, template: str, /, status_code: int = 200, **context) -> HTMLResponse:
    session = getattr(request.state, "ui_session", None)
    response = templates.TemplateResponse(request, template, {"session": session, **context}, status_code=status_code)
    response.headers.update(HEADERS)
    return response


def error_page(request: Request, status_code: int, message: str) -> HTMLResponse:
    return page(request, "error.html", status_code=status_code, status=status_code, message=message)


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


class UiRoute(APIRoute):
    """Pages answer in HTML: no session -> the sign-in page; refused forms and domain errors -> an error page."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except ui_session.SignInRequired:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return see_other(f"/ui/login?next={quote(target, safe='')}")
            except ui_session.FormRejected as exc:
                return error_page(request, exc.status, exc.message)
            except DomainError as exc:
                return error_page(request, status_for(exc), exc.message)

        return wrapped
