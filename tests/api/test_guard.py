"""The guard in front of every route: body limits while reading, authentication before any body byte,
the failed-authentication limit with its rejected-token cache, and the security headers."""

from __future__ import annotations

import anyio
import pytest

from core.settings import Settings
from tests.api_client import make_api

CHUNK = 64 * 1024


def call(app, method: str, path: str, *, headers: dict[str, str], body_chunks: int, chunk: int = CHUNK,
         content_length: bool = True, client: str = "10.0.0.1") -> tuple[int, int]:
    """Drive the ASGI app directly; returns (status, body bytes the app pulled from the client)."""
    total = body_chunks * chunk
    hdrs = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    hdrs.append((b"content-type", b"application/json"))
    if content_length:
        hdrs.append((b"content-length", str(total).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "headers": hdrs,
             "client": (client, 1234), "server": ("127.0.0.1", 8000), "root_path": ""}
    pulled = 0
    sent = 0
    status: list[int] = []

    async def receive():
        nonlocal pulled, sent
        if sent >= body_chunks:
            await anyio.sleep_forever()
        sent += 1
        pulled += chunk
        return {"type": "http.request", "body": b" " * chunk, "more_body": sent < body_chunks}

    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])

    async def main():
        with anyio.fail_after(60):
            await app(scope, receive, send)

    anyio.run(main)
    return status[0], pulled


@pytest.fixture
def small_limit(tmp_path, db_url) -> Settings:
    return Settings(data_dir=tmp_path / "v", database_url=db_url, max_body_bytes=256 * 1024,
                    broker_url=f"sqla+sqlite:///{tmp_path / 'b.db'}", register_bundled_model=False,
                    auth_failures_burst=5, auth_failures_per_minute=1)


ROUTES = [("POST", "/v1/jobs"), ("POST", "/v1/snapshots"), ("POST", "/v1/policies"), ("POST", "/v1/base-models"),
          ("PUT", "/v1/adapters/a/aliases/champion"), ("POST", "/v1/feedback"), ("POST", "/v1/feedback/import")]


@pytest.mark.parametrize("method,path", ROUTES)
def test_no_key_reads_no_body(small_limit, method, path):
    client, _ = make_api(small_limit)
    # Under the body limit, but without a key: 401 before one byte is pulled (was: the whole body, then 401).
    status, pulled = call(client.app, method, path, headers={}, body_chunks=3)
    assert (status, pulled) == (401, 0)
    status, pulled = call(client.app, method, path, headers={"Authorization": "Bearer pk_wrong"}, body_chunks=3)
    assert (status, pulled) == (401, 0)


@pytest.mark.parametrize("method,path", ROUTES)
def test_body_limit_while_reading_on_every_route(small_limit, method, path):
    client, h = make_api(small_limit)
    # Declared too large: 413 from the header, nothing read.
    assert call(client.app, method, path, headers=h["admin"], body_chunks=64) == (413, 0)
    # Chunked, no Content-Length: reading stops at the first chunk past the limit (256 KiB = 4 chunks).
    status, pulled = call(client.app, method, path, headers=h["admin"], body_chunks=64, content_length=False)
    assert status == 413
    assert pulled == 5 * CHUNK


def test_bad_token_flood_is_limited_per_client_and_cached(small_limit):
    client, h = make_api(small_limit)
    auth = client.app.state.authenticator
    assert client.get("/v1/feedback/stats", headers=h["read"]).status_code == 200
    lookups = auth.lookups
    # The same bad token again and again: one database lookup, then the rejected-token cache.
    for _ in range(50):
        assert client.get("/v1/feedback/stats", headers={"Authorization": "Bearer pk_bad"}).status_code == 401
    assert auth.lookups == lookups + 1
    # Distinct bad tokens: the client's 5 failures are spent (one above), then 429 without a lookup.
    codes = [client.get("/v1/feedback/stats", headers={"Authorization": f"Bearer pk_bad{i}"}).status_code
             for i in range(100)]
    assert codes[:4] == [401] * 4 and set(codes[4:]) == {429}
    assert auth.lookups == lookups + 5
    r = client.get("/v1/feedback/stats", headers={"Authorization": "Bearer pk_other"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    # A key that worked lately still works from that client, even once its cache entry expired.
    auth.accepted._items.clear()
    assert client.post("/v1/feedback", json={"prompt": "p", "response": "r", "label": "up"},
                       headers=h["ingest"]).status_code == 429  # never seen valid: limited like any unknown token
    assert client.get("/v1/feedback/stats", headers=h["read"]).status_code == 200
    # Another client address is not limited.
    assert call(client.app, "POST", "/v1/feedback", headers={"Authorization": "Bearer pk_x"}, body_chunks=1,
                client="10.0.0.2")[0] == 401


def test_security_headers(small_limit):
    client, h = make_api(small_limit)
    r = client.get("/v1/feedback/export", headers=h["read"])
    assert r.headers["cache-control"] == "no-store" and r.headers["x-content-type-options"] == "nosniff"
    r = client.get("/v1/feedback/stats")
    assert r.status_code == 401 and r.headers["cache-control"] == "no-store"
    assert client.get("/healthz").headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("url", ["/v1/feedback/a%00b", "/v1/feedback/stats?model=a%00b", "/v1/jobs/%00"])
def test_nul_in_path_or_query_is_422(small_limit, url):
    client, h = make_api(small_limit)
    r = client.get(url, headers=h["read"])
    assert r.status_code == 422 and "NUL" in r.json()["detail"]
