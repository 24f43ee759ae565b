"""HTTP semantics of the artifact downloads (adapter tarball and files, snapshot export), the same on the
local store and on a bucket (SeaweedFS): HEAD answers the GET's headers without reading the body."""

from __future__ import annotations

import shutil

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


# Range header -> status, and the slice of the whole body a 206 carries.
RANGES = [
    ("bytes=1-3", 206, slice(1, 4)), ("bytes=2-", 206, slice(2, None)), ("bytes=-4", 206, slice(-4, None)),
    ("BYTES = 0 - 0", 206, slice(0, 1)), ("bytes=0-999999999999", 206, slice(0, None)),
    ("bytes=-999999999999", 206, slice(0, None)),
    ("bytes=999999999999-", 416, None), ("bytes=-0", 416, None),
    # Ignored, as the RFC allows: the whole body with 200 (Starlette answered 400, or several parts, on disk).
    ("bytes=0-1,3-4", 200, slice(None)), ("items=0-1", 200, slice(None)), ("bytes=3-1", 200, slice(None)),
    ("bytes=abc", 200, slice(None)), ("bytes=-", 200, slice(None)),
]


def test_a_single_range_is_honoured_the_same_on_both_stores(st, tmp_path, monkeypatch):
    """Before: a bucket ignored Range (200, the whole body) where the local disk answered 206."""
    client, h, paths = _api(st, tmp_path)
    for path in paths[1:]:  # the files and the snapshot; the tarball below
        whole = client.get(path, headers=h["read"])
        size = len(whole.content)
        assert whole.headers["accept-ranges"] == "bytes"
        for header, status, part in [*RANGES, (f"bytes={size}-", 416, None), (f"bytes={size - 1}-", 206, slice(-1, None))]:
            with monkeypatch.context() as m:
                if status == 206:  # only the range is fetched from a bucket, never the whole object
                    m.setattr(S3Store, "open", lambda *_a, **_k: pytest.fail("a ranged download read the whole object"))
                r = client.get(path, headers={**h["read"], "Range": header})
            assert r.status_code == status, (path, header, r.status_code, r.text[:200])
            if status == 416:
                assert r.headers["content-range"] == f"bytes */{size}" and "past the end" in r.json()["detail"]
                continue
            assert r.content == whole.content[part], (path, header)
            assert int(r.headers["content-length"]) == len(r.content)
            assert (r.headers["etag"], r.headers["content-type"]) == (whole.headers["etag"],
                                                                      whole.headers["content-type"])
            if status == 206:
                first = range(size)[part][0]
                assert r.headers["content-range"] == f"bytes {first}-{first + len(r.content) - 1}/{size}"
            else:
                assert "content-range" not in r.headers
        # If-Range: the range only while the client's copy is current; a HEAD ignores Range (defined for GET).
        etag = whole.headers["etag"]
        assert client.get(path, headers={**h["read"], "Range": "bytes=0-1", "If-Range": etag}).status_code == 206
        stale = client.get(path, headers={**h["read"], "Range": "bytes=0-1", "If-Range": '"other"'})
        assert (stale.status_code, stale.content) == (200, whole.content)
        head = client.head(path, headers={**h["read"], "Range": "bytes=0-1"})
        assert (head.status_code, head.headers["content-length"]) == (200, str(size))
    # The adapter tarball is an object stored at publish on a bucket (ranges as above); from a local install it
    # is built while sent, its length unknown: no Accept-Ranges, and a Range gets the whole body.
    whole = client.get(TARBALL, headers=h["read"])
    r = client.get(TARBALL, headers={**h["read"], "Range": "bytes=1-3"})
    if st.artifact_url:
        assert (r.status_code, r.content, r.headers["content-range"]) == (206, whole.content[1:4],
                                                                          f"bytes 1-3/{len(whole.content)}")
    else:
        assert (r.status_code, r.content, "accept-ranges" in whole.headers) == (200, whole.content, False)


def test_the_headers_of_a_download_do_not_depend_on_the_store(settings, s3_server, s3_bucket, tmp_path,
                                                              _sqlite_template):
    """Before: a bucket sent every file as application/octet-stream, without Accept-Ranges."""
    shutil.copy(_sqlite_template, tmp_path / "b.db")  # a second install: the same version in a bucket
    bucket = s3_settings(settings, s3_server, s3_bucket, database_url=f"sqlite:///{tmp_path / 'b.db'}",
                         data_dir=tmp_path / "b")
    apps = [_api(settings, tmp_path / "l")[:2], _api(bucket, tmp_path / "b")[:2]]
    for path in (FILE, "/v1/adapters/chat/versions/1/files/README.md"):
        a, b = (c.get(path, headers={**h["read"], "Range": "bytes=0-3"}) for c, h in apps)
        assert (a.status_code, a.content) == (b.status_code, b.content) == (206, a.content)
        names = ("content-type", "content-length", "content-range", "accept-ranges", "content-disposition")
        assert {n: a.headers.get(n) for n in names} == {n: b.headers.get(n) for n in names}, path
