"""/v1/adapters over HTTP: listing, manifests, downloads (ETag/304), files (no traversal), alias CAS."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from core.adapters import publish_adapter_version
from core.base_models import register_base_model
from core.db import session_factory, session_scope
from tests.api_client import make_api
from tests.artifacts import make_model_dir, make_staged


@pytest.fixture
def api(settings, tmp_path):
    client, h = make_api(settings)
    engine = client.app.state.engine
    with session_scope(engine) as s:
        base = register_base_model(s, settings=settings, name="base", source=str(make_model_dir(tmp_path / "m")))
    for n in (1, 2):
        publish_adapter_version(session_factory(engine), settings=settings, adapter_name="chat",
                                staged_dir=make_staged(tmp_path / f"s{n}", payload=b"weights %d" % n),
                                job_id=f"job{n}", base_model=base, snapshot=None, hyperparameters={"beta": 0.1},
                                class_counts={}, class_weights={}, eval_metrics={"adapter": {"loss": 0.1 * n}})
    return client, h


def test_list_versions_and_manifest(api):
    client, h = api
    r = client.get("/v1/adapters", headers=h["read"])
    assert r.status_code == 200
    [adapter] = r.json()
    assert (adapter["name"], adapter["n_versions"], adapter["latest_version"], adapter["aliases"]) == (
        "chat", 2, 2, {"latest": 2})
    versions = client.get("/v1/adapters/chat/versions", headers=h["read"]).json()
    assert [(v["version"], v["job_id"], v["base_model"], v["aliases"]) for v in versions] == [
        (1, "job1", "base", []), (2, "job2", "base", ["latest"])]
    r = client.get("/v1/adapters/chat/versions/latest", headers=h["read"])
    assert r.json()["version"] == 2 and r.json()["job_id"] == "job2"
    assert r.headers["etag"] == f'"{versions[1]["manifest_sha256"]}"'
    assert client.get("/v1/adapters/chat/versions/1", headers=h["read"]).json()["eval_metrics"] == {
        "adapter": {"loss": 0.1}}
    for url in ("/v1/adapters/chat/versions/3", "/v1/adapters/chat/versions/champion", "/v1/adapters/nope/versions"):
        assert client.get(url, headers=h["read"]).status_code == 404, url
    assert client.get("/v1/adapters", headers=h["ingest"]).status_code == 403


def test_download_is_stable_with_etag_and_304(api):
    client, h = api
    r = client.get("/v1/adapters/chat/versions/latest/download", headers=h["read"])
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    etag = r.headers["etag"]
    assert etag == f'"{hashlib.sha256(r.content).hexdigest()}"'
    assert 'filename="chat-v2.tar.gz"' in r.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        assert tar.extractfile("chat-v2/adapter_model.safetensors").read() == b"weights 2"
        assert json.load(tar.extractfile("chat-v2/adapter_config.json"))["base_model_name_or_path"] == "base"
    again = client.get("/v1/adapters/chat/versions/2/download", headers=h["read"])
    assert again.content == r.content and again.headers["etag"] == etag
    r = client.get("/v1/adapters/chat/versions/2/download", headers={**h["read"], "If-None-Match": etag})
    assert (r.status_code, r.content, r.headers["etag"]) == (304, b"", etag)
    r = client.get("/v1/adapters/chat/versions/1/download", headers={**h["read"], "If-None-Match": etag})
    assert r.status_code == 200 and r.headers["etag"] != etag


def test_files_of_the_manifest_only(api):
    client, h = api
    r = client.get("/v1/adapters/chat/versions/1/files/adapter_model.safetensors", headers=h["read"])
    assert (r.status_code, r.content) == (200, b"weights 1")
    assert r.headers["etag"] == f'"{hashlib.sha256(b"weights 1").hexdigest()}"'
    r2 = client.get("/v1/adapters/chat/versions/1/files/adapter_model.safetensors",
                    headers={**h["read"], "If-None-Match": r.headers["etag"]})
    assert r2.status_code == 304
    assert client.get("/v1/adapters/chat/versions/1/files/manifest.json", headers=h["read"]).json()["version"] == 1
    for name in ("..%2F2%2Fadapter_model.safetensors", "..%2F..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd",
                 "/etc/passwd", "../2/manifest.json", "%2e%2e", "%2e%2e%2fmanifest.json", "config.json",
                 "adapter_model.safetensors%00"):  # a bare ".." is resolved by the client itself
        r = client.get(f"/v1/adapters/chat/versions/1/files/{name}", headers=h["read"])
        assert r.status_code == (422 if "%00" in name else 404), (name, r.status_code)
        assert b"root:" not in r.content and b"weights" not in r.content


def test_alias_compare_and_swap_over_http(api):
    client, h = api
    url = "/v1/adapters/chat/aliases/champion"
    r = client.put(url, json={"version": 1}, headers=h["train"])
    assert (r.status_code, r.json()["version"]) == (200, 1)
    r = client.put(url, json={"version": 2, "expected_version": 1}, headers=h["train"])
    assert (r.status_code, r.json()["version"]) == (200, 2)
    r = client.put(url, json={"version": 1, "expected_version": 1}, headers=h["train"])
    assert r.status_code == 409 and "points to version 2" in r.json()["detail"]
    assert client.get("/v1/adapters/chat/versions/champion", headers=h["read"]).json()["version"] == 2
    refusals = [("/v1/adapters/chat/aliases/latest", {"version": 1}, 422), (url, {"version": 9}, 404),
                (url, {"version": 0}, 422), ("/v1/adapters/chat/aliases/7up", {"version": 1}, 422),
                ("/v1/adapters/chat/aliases/new", {"version": 1, "expected_version": 1}, 409)]
    for target, body, status in refusals:
        assert client.put(target, json=body, headers=h["train"]).status_code == status, (target, body)
    assert client.put(url, json={"version": 1}, headers=h["read"]).status_code == 403
    history = client.get(f"{url}/history", headers=h["read"]).json()
    assert [(m["from_version"], m["to_version"]) for m in history] == [(None, 1), (1, 2)]
    assert history[0]["moved_by"].endswith("(train)")
    assert client.get("/v1/adapters/chat/aliases/new/history", headers=h["read"]).status_code == 404
