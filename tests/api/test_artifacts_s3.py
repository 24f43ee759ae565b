"""Publishing and downloading through the API with artifacts in a real S3 server (SeaweedFS):
same bytes and ETag/304 as the local store, presigned redirects, nothing on the API's disk."""

from __future__ import annotations

import hashlib
import io
import tarfile

import httpx
import pytest

from core import adapters
from core.adapter_objects import tarball_key
from core.artifact_store import get_store
from core.base_models import register_base_model
from core.db import session_factory, session_scope
from core.models import AdapterVersion
from core.snapshots import create_snapshot
from tests.api_client import make_api
from tests.artifacts import make_model_dir, make_staged
from tests.s3kit import s3_settings


def _publish(engine, settings, tmp_path, n: int, **kw) -> AdapterVersion:
    with session_scope(engine) as s:
        base = register_base_model(s, settings=settings, name=f"base{n}", source=str(make_model_dir(tmp_path / f"m{n}")))
    return adapters.publish_adapter_version(
        session_factory(engine), settings=settings, adapter_name="chat",
        staged_dir=make_staged(tmp_path / f"s{n}", payload=b"weights %d" % n), job_id=f"job{n}", base_model=base,
        snapshot=None, hyperparameters={"beta": 0.1}, class_counts={}, class_weights={},
        eval_metrics={"adapter": {"loss": 0.1 * n}}, **kw)


@pytest.fixture
def s3(settings, s3_server, s3_bucket):
    return s3_settings(settings, s3_server, s3_bucket)


def test_publish_and_download_through_the_api(s3, tmp_path):
    client, h = make_api(s3)
    engine = client.app.state.engine
    _v1, v2 = (_publish(engine, s3, tmp_path, n) for n in (1, 2))
    store = get_store(s3)
    # The version's objects sit under a key with a staging id the row records; nothing on local disk.
    assert v2.path.startswith("adapters/chat/2.") and len(v2.path.split(".")[-1]) == 32
    assert {e.key.rsplit("/", 1)[1] for e in store.list(v2.path)} == {
        "README.md", "adapter_config.json", "adapter_model.safetensors", "manifest.json", ".prospect-download.tar.gz"}
    assert not any(p.is_file() for p in (s3.artifacts_dir / "adapters").rglob("*"))

    r = client.get("/v1/adapters/chat/versions/latest/download", headers=h["read"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    etag = r.headers["etag"]
    assert etag == f'"{hashlib.sha256(r.content).hexdigest()}"' == f'"{v2.tarball_sha256}"'
    assert 'filename="chat-v2.tar.gz"' in r.headers["content-disposition"]
    # The stored tarball is the deterministic one, byte for byte, as built from the files in the bucket.
    assert r.content == b"".join(adapters.iter_tarball(s3, v2))
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        assert tar.extractfile("chat-v2/adapter_model.safetensors").read() == b"weights 2"
    r304 = client.get("/v1/adapters/chat/versions/2/download", headers={**h["read"], "If-None-Match": etag})
    assert (r304.status_code, r304.content, r304.headers["etag"]) == (304, b"", etag)
    assert client.get("/v1/adapters/chat/versions/1/download",
                      headers={**h["read"], "If-None-Match": etag}).status_code == 200

    f = client.get("/v1/adapters/chat/versions/1/files/adapter_model.safetensors", headers=h["read"])
    assert (f.status_code, f.content) == (200, b"weights 1")
    assert f.headers["etag"] == f'"{hashlib.sha256(b"weights 1").hexdigest()}"'
    assert client.get("/v1/adapters/chat/versions/1/files/adapter_model.safetensors",
                      headers={**h["read"], "If-None-Match": f.headers["etag"]}).status_code == 304
    for name in (".prospect-download.tar.gz", "..%2F2%2Fmanifest.json"):
        assert client.get(f"/v1/adapters/chat/versions/1/files/{name}", headers=h["read"]).status_code == 404


def test_presigned_redirect_serves_the_same_bytes(s3, tmp_path):
    presigned = s3.model_copy(update={"download_redirect": "presigned"})
    client, h = make_api(presigned)
    engine = client.app.state.engine
    v = _publish(engine, presigned, tmp_path, 1)
    r = client.get("/v1/adapters/chat/versions/1/download", headers=h["read"], follow_redirects=False)
    assert r.status_code == 302 and r.headers["etag"] == f'"{v.tarball_sha256}"'
    fetched = httpx.get(r.headers["location"])
    assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == v.tarball_sha256
    assert 'filename="chat-v1.tar.gz"' in fetched.headers["content-disposition"]
    assert fetched.content == get_store(presigned).read_bytes(tarball_key(v))
    r = client.get("/v1/adapters/chat/versions/1/download", follow_redirects=False,
                   headers={**h["read"], "If-None-Match": f'"{v.tarball_sha256}"'})
    assert r.status_code == 304  # a client that has the bytes is not sent to the store
    r = client.get("/v1/adapters/chat/versions/1/files/adapter_model.safetensors", headers=h["read"],
                   follow_redirects=False)
    assert r.status_code == 302 and httpx.get(r.headers["location"]).content == b"weights 1"


def test_snapshot_export_from_s3(s3):
    client, h = make_api(s3)
    engine = client.app.state.engine
    r = client.post("/v1/feedback/batch", headers=h["ingest"], json={"events": [
        {"prompt": "2+2?", "response": "4", "label": "up"}, {"prompt": "2+2?", "response": "5", "label": "down"}]})
    assert r.status_code == 200
    with session_scope(engine) as s:
        snap = create_snapshot(s, settings=s3)
    assert get_store(s3).exists(f"snapshots/{snap.id}.jsonl") and not (s3.artifacts_dir / "snapshots").exists()
    r = client.get(f"/v1/snapshots/{snap.id}/export", headers=h["read"])
    assert r.status_code == 200 and r.headers["etag"] == f'"{snap.content_hash}"'
    assert hashlib.sha256(r.content).hexdigest() == snap.content_hash and r.content.count(b"\n") == 2
    assert client.get(f"/v1/snapshots/{snap.id}/export",
                      headers={**h["read"], "If-None-Match": r.headers["etag"]}).status_code == 304


def test_a_publish_that_fails_before_its_commit_leaves_nothing(s3, tmp_path):
    client, _ = make_api(s3)

    def refuse(session, row):
        raise RuntimeError("the fence said no")

    with pytest.raises(RuntimeError):
        _publish(client.app.state.engine, s3, tmp_path, 1, before_commit=refuse)
    assert list(get_store(s3).list("adapters")) == []


def test_an_install_copied_from_local_disk_to_the_bucket_downloads_the_same(settings, s3, tmp_path):
    """Moving to S3 = copying ``<data>/artifacts`` into the bucket: the rows' paths are the keys; a version
    published on disk has no stored tarball, so the API builds it from the objects (same bytes, same ETag)."""
    client, h = make_api(settings)
    _publish(client.app.state.engine, settings, tmp_path, 1)
    local = client.get("/v1/adapters/chat/versions/1/download", headers=h["read"])
    store = get_store(s3)
    for path in settings.artifacts_dir.rglob("*"):
        if path.is_file():
            store.put_file(path.relative_to(settings.artifacts_dir).as_posix(), path)
    moved = s3.model_copy(update={"data_dir": tmp_path / "elsewhere", "database_url": settings.database_url})
    client2, _ = make_api(moved)
    r = client2.get("/v1/adapters/chat/versions/1/download", headers=h["read"])
    assert (r.status_code, r.content, r.headers["etag"]) == (200, local.content, local.headers["etag"])
    f = client2.get("/v1/adapters/chat/versions/1/files/adapter_model.safetensors", headers=h["read"])
    assert f.content == b"weights 1"


def test_an_upload_that_fails_half_way_leaves_nothing(s3, tmp_path, monkeypatch):
    client, _ = make_api(s3)
    store = get_store(s3)
    real_put, calls = store.put_file, []

    def flaky(key, path):
        calls.append(key)
        if len(calls) == 2:
            raise OSError("connection reset by the store")
        real_put(key, path)

    monkeypatch.setattr(store, "put_file", flaky)
    with pytest.raises(OSError):
        _publish(client.app.state.engine, s3, tmp_path, 1)
    assert len(calls) == 2 and list(store.list("adapters")) == []
    monkeypatch.setattr(store, "put_file", real_put)
    assert _publish(client.app.state.engine, s3, tmp_path, 2).version == 1


@pytest.mark.parametrize("where", ["s3", "local"])
def test_a_version_whose_files_were_deleted_is_a_clear_404_not_a_cut_200(settings, request, tmp_path, where):
    """Before, the download fell back to building the tarball while streaming: a 200 whose body stopped at
    the first missing object (a traceback in the server log)."""
    st = request.getfixturevalue("s3") if where == "s3" else settings
    client, h = make_api(st)
    client = type(client)(client.app, raise_server_exceptions=False)
    v = _publish(client.app.state.engine, st, tmp_path, 1)
    store = get_store(st)
    store.delete([e.key for e in store.list(v.path)])
    r = client.get("/v1/adapters/chat/versions/1/download", headers=h["read"])
    assert r.status_code == 404, (r.status_code, r.content[:100])
    assert "missing from the artifact store" in r.json()["detail"]
    assert "adapter_model.safetensors" in r.json()["detail"]
    r = client.get("/v1/adapters/chat/versions/1/files/adapter_model.safetensors", headers=h["read"])
    assert r.status_code == 404 and "missing" in r.json()["detail"]


def test_a_refused_publish_raises_its_own_error_when_its_cleanup_fails_too(s3, tmp_path, monkeypatch):
    """A reaped delivery's publish is refused by the fence (LostClaim) while the store is down: the fence's
    error must reach the pipeline (it decides what the delivery reports), not the cleanup's; the orphan
    sweep removes the objects later."""
    client, _ = make_api(s3)
    store = get_store(s3)

    def refuse(session, row):
        monkeypatch.setattr(store, "delete", lambda keys: (_ for _ in ()).throw(OSError("the store is down")))
        raise RuntimeError("the fence said no")

    with pytest.raises(RuntimeError, match="the fence said no"):
        _publish(client.app.state.engine, s3, tmp_path, 1, before_commit=refuse)
    monkeypatch.undo()
    assert [e.key.split("/")[1] for e in store.list("adapters")]  # left for the sweep
