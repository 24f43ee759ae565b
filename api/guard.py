"""The ASGI layer every request passes first: NUL check, body limit, authentication, security headers,
and JSON bodies read as JSON whatever their Content-Type.

Order matters: a request is refused before its body is read when its path or
query holds a NUL (422), its Content-Length exceeds ``max_body_bytes`` (413) or,
under ``/v1/``, it has no valid key (401) or its client spent its failed
authentications (429). Only then does the application see the body, through a
``receive`` that counts bytes and answers 413 as soon as the limit is passed,
whether or not a Content-Length was sent. FastAPI parses JSON bodies before it
runs dependencies, which is why authentication cannot wait for them.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from sqlalchemy.exc import DBAPIError

from api.auth import Authenticator, bearer_token
from api.errors import database_error, domain_error, error_body
from core.errors import DomainError

log = logging.getLogger(__name__)

PROTECTED_PREFIX = "/v1/"
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff")]
NO_STORE = (b"cache-control", b"no-store")
BODY_METHODS = ("POST", "PUT", "PATCH")
RAW_BODY_PATHS = ("/v1/feedback/import",)


class BodyTooLarge(Exception):
    pass


async def send_json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    raw = orjson.dumps(body)
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode()), NO_STORE,
            *SECURITY_HEADERS]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


def _json_whatever_the_type(scope) -> dict:
    """JSON routes read their body as JSON whatever Content-Type says (curl -d sends a form type), as
    /v1/feedback always did; the import route, which also takes JSONL and archives, reads raw bytes."""
    if (scope.get("method") not in BODY_METHODS or not scope.get("path", "").startswith(PROTECTED_PREFIX)
            or scope["path"].rstrip("/") in RAW_BODY_PATHS):
        return scope
    declared = (_header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
    if declared == "application/json" or declared.endswith("+json"):
        return scope
    headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"content-type"]
    # In place, not a copy: the route the router sets on this scope must reach the metrics layer.
    scope["headers"] = [*headers, (b"content-type", b"application/json")]
    return scope


def _has_nul(scope) -> bool:
    return "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b"") or b"\x00" in scope.get(
        "query_string", b"")


class GuardMiddleware:
    def __init__(self, app, *, max_body_bytes: int, authenticator: Authenticator) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.auth = authenticator

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        if _has_nul(scope):
            await send_json(send, 422, error_body("path or query: must not contain NUL characters"))
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdecimal()):
                await send_json(send, 400, error_body("Content-Length: must be a non-negative integer"))
                return
            if int(declared) > limit:
                await send_json(send, 413, error_body(f"body: {declared} bytes exceeds the limit of {limit} bytes"))
                return
        protected = scope.get("path", "").startswith(PROTECTED_PREFIX)
        scope = _json_whatever_the_type(scope)
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message) -> None:
            nonlocal started
            if exceeded:  # the app turned the overflow into its own error: answer 413 instead
                if not started and message["type"] == "http.response.start":
                    started = True
                    await send_json(send, 413, error_body(f"body: more than the limit of {limit} bytes"))
                return
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                if protected and b"cache-control" not in names:
                    headers.append(NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        if protected:
            client = (scope.get("client") or ("unknown", 0))[0]
            try:
                principal = await self.auth.authenticate(bearer_token(_header(scope, b"authorization") or ""), client)
            except DomainError as exc:
                await (await domain_error(None, exc))(scope, receive, guarded_send)
                return
            except DBAPIError as exc:
                await (await database_error(None, exc))(scope, receive, guarded_send)
                return
            scope.setdefault("state", {})["principal"] = principal

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if started:
                raise
            await send_json(send, 413, error_body(f"body: more than the limit of {limit} bytes"))
