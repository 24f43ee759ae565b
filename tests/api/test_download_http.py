"""HTTP semantics of the artifact downloads (adapter tarball and files, snapshot export), the same on the
local store and on a bucket (SeaweedFS): HEAD answers the GET's headers without reading the body."""

from __future__ import annotations

import httpx
import pytest
from fastapi.responses import FileResponse

from api.routers import adapters as adapters_router
from core.artifact_store import S3Store
from core.db import session_scope
from core.snapshots import create_snapshot
from tests.api.test_artifacts_s3 import _publish
from tests.api_client import make_api
from tests.s3kit import s3_settings

FILE = "/v1/adapters/chat/versions/1/files/adapter_model.safetensors"
TARBALL = "/v1/adapters/chat/versions/latest/download"


@pytest.fixture(params=["local", "s3"])
def st(request, settings):
    if request.param == "local":
        return settings
    return s3_settings(settings, request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket"))


def _api(st, tmp_path):
    client, h = make_api(st)
    _publish(client.app.state.engine, st, tmp_path, 1)
    client.post("/v1/feedback/batch", headers=h["ingest"], json={"events": [
        {"prompt": "2+2?", "response": "4", "label": "up"}, {"prompt": "2+2?", "response": "5", "label": "down"}]})
    with session_scope(client.app.state.engine) as s:
        snap = create_snapshot(s, settings=st)
    return client, h, [TARBALL, FILE, "/v1/adapters/chat/versions/1/files/manifest.json",
                       f"/v1/snapshots/{snap.id}/export"]


def _never_read(monkeypatch):
    """Opening an artifact's body fails the test: a HEAD must not."""
    def boom(*_a, **_k):
        raise AssertionError("a HEAD read the artifact's body")
        yield  # a generator: creating the tarball's iterator is fine, iterating it is not

    monkeypatch.setattr(S3Store, "open", boom)
    monkeypatch.setattr(FileResponse, "_open_file", boom)
    monkeypatch.setattr(adapters_router.adapters, "iter_tarball", boom)


def test_head_answers_the_get_headers_without_the_body(st, tmp_path, monkeypatch):
    """Before: 405 Method Not Allowed on every download."""
    client, h, paths = _api(st, tmp_path)
    gets = {path: client.get(path, headers=h["read"]) for path in paths}
    _never_read(monkeypatch)
    for path, get in gets.items():
        assert get.status_code == 200, (path, get.text)
        head = client.head(path, headers=h["read"])
        assert (head.status_code, head.content) == (200, b""), path
        assert dict(head.headers) == dict(get.headers), path
        if "content-length" in get.headers:
            assert int(head.headers["content-length"]) == len(get.content)
        cached = client.head(path, headers={**h["read"], "If-None-Match": get.headers["etag"]})
        assert (cached.status_code, cached.content, cached.headers["etag"]) == (304, b"", get.headers["etag"])


def test_head_follows_the_get_auth_and_404_rules(st, tmp_path):
    client, h, paths = _api(st, tmp_path)
    for path in paths:
        assert client.head(path).status_code == client.get(path).status_code == 401
        assert client.head(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    for path in ("/v1/adapters/chat/versions/9/download", "/v1/adapters/nobody/versions/1/download",
                 "/v1/adapters/chat/versions/1/files/nothing.bin", "/v1/snapshots/nope/export"):
        head, get = client.head(path, headers=h["read"]), client.get(path, headers=h["read"])
        assert (head.status_code, head.content) == (404, b"") and get.status_code == 404, path
        assert head.headers["content-length"] == get.headers["content-length"], path


def test_head_with_presigned_redirects_points_at_a_url_signed_for_head(settings, s3_server, s3_bucket, tmp_path):
    """A URL signed for GET answers a HEAD with 403: a HEAD is sent to one signed for HEAD."""
    presigned = s3_settings(settings, s3_server, s3_bucket, download_redirect="presigned")
    client, h, paths = _api(presigned, tmp_path)
    for path in paths:
        get = client.get(path, headers=h["read"], follow_redirects=False)
        head = client.head(path, headers=h["read"], follow_redirects=False)
        assert (head.status_code, head.content, head.headers["etag"]) == (302, b"", get.headers["etag"]), path
        assert head.headers["location"] != get.headers["location"]
        fetched, answered = httpx.get(get.headers["location"]), httpx.head(head.headers["location"])
        assert answered.status_code == 200, (path, answered.status_code)
        assert int(answered.headers["content-length"]) == len(fetched.content)
