"""Authentication in front of everything: key caches and the per-client limit on failed attempts.

A key is looked up in the database only on a cache miss. Three caches keep
that rare, and keep a flood of bad tokens away from the database:

- accepted keys, for ``AUTH_CACHE_TTL_S`` (a revoked key stops working within
  that time in every process);
- rejected tokens, for ``rejected_token_ttl_s``: the same bad token again
  costs no lookup and no thread;
- a token bucket per client address charged by every failed lookup: when it
  is empty, unknown tokens from that client get 429 without a lookup. Digests
  that were valid lately skip that bucket, so clients behind one proxy keep
  working while another client behind it floods bad tokens.

Each key's ``last_used_at`` is written at most once per ``LAST_USED_EVERY_S``
per process (and the UPDATE skips the row when another process wrote it
within that time), off the request's path: a write per request would put
every authenticated call behind SQLite's write lock.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import timedelta

from sqlalchemy.exc import DBAPIError
from starlette.concurrency import run_in_threadpool

from core.errors import RateLimited, Unauthorized
from core.keys import Principal, authenticate, hash_key, touch_last_used
from core.models import utcnow
from core.settings import Settings

log = logging.getLogger(__name__)

AUTH_CACHE_TTL_S = 5.0
LAST_USED_EVERY_S = 60.0
KNOWN_GOOD_TTL_S = 600.0
MAX_ENTRIES = 10_000


class TtlCache:
    """A small thread-safe map with expiry; cleared when full (an attacker filling it gains nothing but lookups,
    which the client limit bounds)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[float, object]] = {}
        self._lock = threading.Lock()

    def get(self, key: str):
        with self._lock:
            item = self._items.get(key)
        if item and item[0] > time.monotonic():
            return item[1]
        return None

    def put(self, key: str, value: object) -> None:
        with self._lock:
            if len(self._items) >= MAX_ENTRIES:
                self._items.clear()
            self._items[key] = (time.monotonic() + self.ttl_s, value)


class FailureLimiter:
    """Per-client token bucket of failed authentications (``rate`` refills per second)."""

    def __init__(self, *, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _tokens(self, client: str, now: float) -> float:
        tokens, last = self._buckets.get(client, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - last) * self.rate)

    def check(self, client: str) -> None:
        """Raise RateLimited when the client has no failures left to spend."""
        now = time.monotonic()
        with self._lock:
            tokens = self._tokens(client, now)
        if tokens < 1.0:
            raise RateLimited(
                "too many failed authentications from this client; retry later",
                retry_after=(1.0 - tokens) / self.rate,
            )

    def charge(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) >= MAX_ENTRIES:
                self._buckets.clear()
            self._buckets[client] = (self._tokens(client, now) - 1.0, now)


class UsageRecorder:
    """Coalesces last_used_at writes: one per key per ``every_s`` in this process, run in a thread."""

    def __init__(self, session_factory, *, every_s: float = LAST_USED_EVERY_S, clock=time.monotonic) -> None:
        self._session_factory = session_factory
        self.every_s = every_s
        self.clock = clock
        self._written: dict[int, float] = {}
        self._lock = threading.Lock()
        self.pending: set[asyncio.Future] = set()

    def _due(self, key_id: int) -> bool:
        now = self.clock()
        with self._lock:
            last = self._written.get(key_id)
            if last is not None and now - last < self.every_s:
                return False
            if len(self._written) >= MAX_ENTRIES:
                self._written.clear()
            self._written[key_id] = now
            return True

    def _write(self, key_id: int) -> None:
        try:
            with self._session_factory() as session:
                touch_last_used(session, key_id=key_id, now=utcnow(), min_interval=timedelta(seconds=self.every_s))
                session.commit()
        except DBAPIError as exc:  # never fail a request for bookkeeping; try again on the next one
            log.warning("cannot record the use of key %s: %s", key_id, exc.orig)
            with self._lock:
                self._written.pop(key_id, None)

    def seen(self, key_id: int) -> None:
        if self._due(key_id):
            future = asyncio.get_running_loop().run_in_executor(None, self._write, key_id)
            self.pending.add(future)
            future.add_done_callback(self.pending.discard)


class Authenticator:
    """Turns a bearer token into a Principal, touching the database as rarely as possible."""

    def __init__(self, settings: Settings, session_factory, write_session_factory=None) -> None:
        self._session_factory = session_factory
        self.usage = UsageRecorder(write_session_factory or session_factory)
        self.accepted = TtlCache(AUTH_CACHE_TTL_S)
        self.rejected = TtlCache(settings.rejected_token_ttl_s)
        self.known_good = TtlCache(KNOWN_GOOD_TTL_S)
        self.failures = FailureLimiter(
            rate=settings.auth_failures_per_minute / 60.0, burst=settings.auth_failures_burst
        )
        self.lookups = 0  # database lookups done (for tests and metrics)

    def _lookup(self, token: str) -> Principal:
        self.lookups += 1
        with self._session_factory() as session:
            return authenticate(session, plaintext=token)

    async def authenticate(self, token: str | None, client: str) -> Principal:
        if not token:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        digest = hash_key(token)
        cached = self.accepted.get(digest)
        if cached is not None:
            self.usage.seen(cached.key_id)  # type: ignore[attr-defined]
            return cached  # type: ignore[return-value]
        if self.rejected.get(digest) is not None:
            raise Unauthorized("invalid or revoked API key")
        if self.known_good.get(digest) is None:
            self.failures.check(client)
        try:
            principal = await run_in_threadpool(self._lookup, token)
        except Unauthorized:
            self.rejected.put(digest, True)
            self.failures.charge(client)
            raise
        self.accepted.put(digest, principal)
        self.known_good.put(digest, True)
        self.usage.seen(principal.key_id)
        return principal


def bearer_token(header: str) -> str | None:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
