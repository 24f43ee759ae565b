"""FastAPI dependencies: settings, a database session, the authenticated caller."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from core.keys import Principal, authenticate, hash_key
from core.settings import Settings

# Authenticated keys are cached briefly so a hot ingestion path does not pay a
# key lookup per request; a revoked key stops working within this many seconds.
AUTH_CACHE_TTL_S = 5.0


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]


class AuthCache:
    def __init__(self, ttl_s: float = AUTH_CACHE_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Principal | None:
        with self._lock:
            item = self._items.get(digest)
        if item and item[0] > time.monotonic():
            return item[1]
        return None

    def put(self, digest: str, principal: Principal) -> None:
        with self._lock:
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[digest] = (time.monotonic() + self.ttl_s, principal)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _authenticate(request: Request, token: str | None) -> Principal:
    with request.app.state.session_factory() as session:
        return authenticate(session, plaintext=token)


async def current_principal(request: Request) -> Principal:
    """The caller's key. Cache hits cost no thread hop and no database round trip."""
    token = _bearer(request)
    if not token:
        return _authenticate(request, None)  # raises Unauthorized
    cache: AuthCache = request.app.state.auth_cache
    digest = hash_key(token)
    cached = cache.get(digest)
    if cached is not None:
        return cached
    principal = await run_in_threadpool(_authenticate, request, token)
    cache.put(digest, principal)
    return principal


def require_scope(scope: str) -> Callable[..., Awaitable[Principal]]:
    # Async so the hot path (cached key, in-process bucket) stays on the event loop.
    async def dependency(request: Request) -> Principal:
        principal = await current_principal(request)
        principal.require(scope)
        limiter = request.app.state.rate_limiter
        if limiter is not None:
            if getattr(limiter, "blocking", False):
                await run_in_threadpool(limiter.check, principal.key_id)
            else:
                limiter.check(principal.key_id)
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


IngestKey = Annotated[Principal, Depends(require_scope("ingest"))]
ReadKey = Annotated[Principal, Depends(require_scope("read"))]
TrainKey = Annotated[Principal, Depends(require_scope("train"))]
AdminKey = Annotated[Principal, Depends(require_scope("admin"))]
