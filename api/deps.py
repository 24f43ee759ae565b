"""FastAPI dependencies: settings, a database session, the authenticated caller."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

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


def current_principal(request: Request) -> Principal:
    token = _bearer(request)
    cache: AuthCache = request.app.state.auth_cache
    if token:
        cached = cache.get(hash_key(token))
        if cached is not None:
            return cached
    with request.app.state.session_factory() as session:
        principal = authenticate(session, plaintext=token)
    cache.put(hash_key(token), principal)
    return principal


def require_scope(scope: str) -> Callable[..., Principal]:
    def dependency(request: Request) -> Principal:
        principal = current_principal(request)
        principal.require(scope)
        limiter = request.app.state.rate_limiter
        if limiter is not None:
            limiter.check(principal.key_id)
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency


IngestKey = Annotated[Principal, Depends(require_scope("ingest"))]
ReadKey = Annotated[Principal, Depends(require_scope("read"))]
TrainKey = Annotated[Principal, Depends(require_scope("train"))]
AdminKey = Annotated[Principal, Depends(require_scope("admin"))]
