"""FastAPI dependencies: settings, a database session, the authenticated caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth import Authenticator, bearer_token
from core.keys import Principal
from core.settings import Settings


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


READ_METHODS = frozenset({"GET", "HEAD"})


def get_session(request: Request) -> Iterator[Session]:
    """GET and HEAD get a read-only session (no SQLite write lock); routes that stream close it first."""
    state = request.app.state
    factory = state.read_session_factory if request.method in READ_METHODS else state.session_factory
    with factory() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]


async def current_principal(request: Request) -> Principal:
    """The caller's key, authenticated by the guard middleware before the body was read."""
    principal = request.scope.get("state", {}).get("principal")
    if principal is None:  # a route outside /v1/ that wants a key
        client = request.client.host if request.client else "unknown"
        authenticator: Authenticator = request.app.state.authenticator
        principal = await authenticator.authenticate(bearer_token(request.headers.get("authorization", "")), client)
    return principal


async def authorize(request: Request, scope: str, *alternatives: str) -> Principal:
    """The caller's key, if it holds ``scope`` (or one of ``alternatives``; admin implies all) and is within
    its rate limit."""
    principal = await current_principal(request)
    if not principal.scopes & set(alternatives):
        principal.require(scope)
    limiter = request.app.state.rate_limiter
    if limiter is not None:
        if getattr(limiter, "blocking", False):
            await run_in_threadpool(limiter.check, principal.key_id)
        else:
            limiter.check(principal.key_id)
    return principal


def require_scope(scope: str, *alternatives: str) -> Callable[..., Awaitable[Principal]]:
    """The key must hold ``scope`` (or one of ``alternatives``; admin implies all)."""
    # Async so the hot path (cached key, in-process bucket) stays on the event loop.
    async def dependency(request: Request) -> Principal:
        return await authorize(request, scope, *alternatives)

    dependency.__name__ = f"require_{scope}"
    return dependency


IngestKey = Annotated[Principal, Depends(require_scope("ingest"))]
ReadKey = Annotated[Principal, Depends(require_scope("read"))]
TrainKey = Annotated[Principal, Depends(require_scope("train"))]
RetractKey = Annotated[Principal, Depends(require_scope("ingest", "train"))]
AdminKey = Annotated[Principal, Depends(require_scope("admin"))]
