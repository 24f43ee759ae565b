"""api.fast_ingest: POST /v1/feedback answers exactly as through the framework route, errors included."""

from __future__ import annotations

import json

import pytest

from tests.api_client import make_api

HEADERS = ("content-type", "cache-control", "x-content-type-options", "retry-after", "www-authenticate")


def cases(p: str, h: dict) -> list[tuple[str, dict]]:
    """(name, request kwargs); ``p`` prefixes the event ids so the two runs do not meet."""
    ev = {"event_id": f"{p}e", "prompt": "2+2?", "response": "4", "label": "up"}
    return [
        ("created", {"json": ev, "headers": h["ingest"]}),
        ("duplicate", {"json": ev, "headers": h["ingest"]}),
        ("conflict", {"json": {**ev, "response": "5"}, "headers": h["ingest"]}),
        ("admin key", {"json": {**ev, "event_id": f"{p}a"}, "headers": h["admin"]}),
        ("form content type", {"content": json.dumps({**ev, "event_id": f"{p}f"}),
                               "headers": {**h["ingest"], "content-type": "application/x-www-form-urlencoded"}}),
        ("bad label", {"json": {**ev, "event_id": f"{p}b", "label": "meh"}, "headers": h["ingest"]}),
        ("not json", {"content": b"{", "headers": h["ingest"]}),
        ("not an object", {"json": [1], "headers": h["ingest"]}),
        ("huge number", {"json": {**ev, "event_id": f"{p}n", "adapter": "a", "adapter_version": 2**70},
                         "headers": h["ingest"]}),
        ("no key", {"json": ev}),
        ("bad key", {"json": ev, "headers": {"Authorization": "Bearer pk_nope"}}),
        ("read key", {"json": ev, "headers": h["read"]}),
        ("declared too large", {"content": b"{}", "headers": {**h["ingest"], "content-length": str(10**9)}}),
        ("NUL in the query", {"json": ev, "headers": h["ingest"], "params": {"x": "a\x00b"}}),
    ]


@pytest.fixture
def api(settings):
    return make_api(settings)


def answers(client, prefix: str, h: dict) -> list[tuple]:
    out = []
    for name, kwargs in cases(prefix, h):
        r = client.post("/v1/feedback", **kwargs)
        body = r.text.replace(prefix, "<p>")
        out.append((name, r.status_code, body, {k: r.headers.get(k) for k in HEADERS}))
    return out


def test_fast_path_answers_as_the_framework_route(api):
    client, h = api
    app = client.app
    assert app.fast_ingest is not None
    fast = answers(client, "fast-", h)
    app.fast_ingest = None  # the same request through FastAPI's routing, dependencies and middleware
    slow = answers(client, "slow-", h)
    for f, s in zip(fast, slow, strict=True):
        assert f == s
    assert [a[1] for a in fast] == [201, 200, 409, 201, 201, 422, 422, 422, 422, 401, 401, 403, 413, 422]
