"""Per-key token-bucket rate limits: in process by default, in Redis when configured.

The in-process bucket is per API worker process; with several uvicorn workers
the effective limit is multiplied by their count. Redis shares one bucket
between all processes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

from core.errors import RateLimited
from core.settings import Settings

log = logging.getLogger(__name__)


class InProcessLimiter:
    blocking = False  # safe to call on the event loop

    def __init__(self, *, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, key_id: int, cost: float = 1.0) -> None:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < cost:
                self._buckets[key_id] = (tokens, now)
                raise RateLimited(
                    f"rate limit exceeded for this API key ({self.rate:g} requests/s, burst {self.burst})",
                    retry_after=(cost - tokens) / self.rate,
                )
            self._buckets[key_id] = (tokens - cost, now)


# Atomic token bucket in Redis: returns {allowed, tokens_left_or_wait_ms}.
_LUA = """
local rate = tonumber(ARGV[1]); local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3]); local cost = tonumber(ARGV[4])
local b = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(b[1]) or burst; local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + (now - ts) * rate / 1000.0)
local allowed = 0; local wait = 0
if tokens >= cost then tokens = tokens - cost; allowed = 1
else wait = math.ceil((cost - tokens) * 1000.0 / rate) end
redis.call('HSET', KEYS[1], 't', tokens, 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000.0 / rate) + 1000)
return {allowed, wait}
"""


class RedisLimiter:
    blocking = True  # a network round trip: call it from the thread pool

    def __init__(self, *, url: str, rate: float, burst: int, namespace: str = "default") -> None:
        import redis

        # Several deployments (or test databases) may share one Redis: key ids only mean
        # something within one database, so the bucket names carry its namespace.
        self.namespace = namespace
        self.rate = rate
        self.burst = burst
        self._redis = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._script = self._redis.register_script(_LUA)
        self._fallback = InProcessLimiter(rate=rate, burst=burst)

    def check(self, key_id: int, cost: float = 1.0) -> None:
        import redis

        try:
            allowed, wait_ms = self._script(
                keys=[f"prospect:ratelimit:{self.namespace}:{key_id}"], args=[self.rate, self.burst, int(time.time() * 1000), cost]
            )
        except redis.RedisError as exc:
            # A Redis outage must not stop ingestion: fall back to a local bucket.
            log.warning("rate limiter: redis unavailable (%s); using the in-process bucket", exc)
            self._fallback.check(key_id, cost)
            return
        if not allowed:
            raise RateLimited(
                f"rate limit exceeded for this API key ({self.rate:g} requests/s, burst {self.burst})",
                retry_after=int(wait_ms) / 1000,
            )


def build_rate_limiter(settings: Settings) -> InProcessLimiter | RedisLimiter:
    url = settings.rate_limit_redis_url
    if url:
        namespace = hashlib.sha256(settings.sqlalchemy_url.encode()).hexdigest()[:12]
        return RedisLimiter(
            url=url, rate=settings.rate_limit_per_second, burst=settings.rate_limit_burst, namespace=namespace
        )
    return InProcessLimiter(rate=settings.rate_limit_per_second, burst=settings.rate_limit_burst)
