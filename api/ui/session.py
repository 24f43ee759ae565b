"""Dashboard sign-in: an API key exchanged for a signed session cookie, plus CSRF tokens.

The cookie (HttpOnly, SameSite=Lax, Path=/ui, expiring) holds the key's id
and a CSRF token, signed with itsdangerous; the key itself is never stored.
Every request re-reads the key's row, so a revoked key signs its sessions
out at once and scopes always follow the key. Every state-changing form
carries the session's CSRF token (synchronizer token); the sign-in form too,
with the token of an anonymous session.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from urllib.parse import parse_qs

from fastapi import Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from core.keys import Principal
from core.models import ApiKey
from core.settings import Settings

COOKIE = "prospect_ui"
SALT = "prospect-ui-session"
MAX_FORM_BYTES = 16 * 1024


class SignInRequired(Exception):
    """No valid session: the handler sends the browser to the sign-in page."""


class FormRejected(Exception):
    """A state-changing form refused before it is acted on (no valid CSRF token, too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Session:
    csrf: str
    principal: Principal | None = None

    def can(self, scope: str) -> bool:
        return self.principal is not None and (scope in self.principal.scopes or "admin" in self.principal.scopes)


def _secret(settings: Settings) -> str:
    """The configured secret, or one generated once and kept in the data folder (shared by all API workers)."""
    if settings.ui_secret_key:
        return settings.ui_secret_key
    path = settings.data_path / "ui-secret"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def serializer(request: Request) -> URLSafeTimedSerializer:
    state = request.app.state
    if getattr(state, "ui_serializer", None) is None:
        state.ui_serializer = URLSafeTimedSerializer(_secret(state.settings), salt=SALT)
    return state.ui_serializer


def _payload(request: Request) -> dict | None:
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = serializer(request).loads(raw, max_age=request.app.state.settings.ui_session_max_age_s)
    except BadSignature:  # tampered, signed with another secret, or expired
        return None
    return data if isinstance(data, dict) and isinstance(data.get("c"), str) else None


def _principal(request: Request, key_id: int) -> Principal | None:
    with request.app.state.session_factory() as db:
        row = db.get(ApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return None
        return Principal(key_id=row.id, name=row.name, scopes=frozenset(row.scopes.split(",")))


def current(request: Request) -> Session | None:
    """The signed-in session, or None."""
    data = _payload(request)
    if data is None or not isinstance(data.get("k"), int):
        return None
    principal = _principal(request, data["k"])
    return Session(csrf=data["c"], principal=principal) if principal else None


def anonymous(request: Request) -> Session:
    """A session without a key (the sign-in form's CSRF token); reuses the cookie's token when there is one."""
    data = _payload(request)
    return Session(csrf=data["c"] if data else new_token())


def new_token() -> str:
    return secrets.token_urlsafe(24)


def signed_in(request: Request) -> Session:
    """Dependency of every page: the session, or a redirect to the sign-in page."""
    session = current(request)
    if session is None or not session.can("read"):  # e.g. the key lost its read scope
        raise SignInRequired()
    request.state.ui_session = session
    return session


def set_cookie(request: Request, response: Response, session: Session) -> None:
    settings = request.app.state.settings
    data = {"c": session.csrf}
    if session.principal is not None:
        data["k"] = session.principal.key_id
    secure = settings.ui_secure_cookies if settings.ui_secure_cookies is not None else request.url.scheme == "https"
    response.set_cookie(COOKIE, serializer(request).dumps(data), max_age=settings.ui_session_max_age_s,
                        path="/ui", httponly=True, samesite="lax", secure=secure)


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="lax")


async def form(request: Request, session: Session) -> dict[str, str]:
    """The url-encoded form of a POST, after checking its CSRF token against the session's."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise FormRejected(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    fields = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}
    if not hmac.compare_digest(fields.get("csrf", "").encode(), session.csrf.encode()):
        raise FormRejected(403, "the form's CSRF token is missing or stale (signed in again elsewhere?): "
                                "reload the page and submit it again")
    return fields
