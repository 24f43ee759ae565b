"""The artifact store's contract, on the local folder and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import os
import time

import pytest

from core.artifact_store import LocalStore, S3Options, S3Store, get_store, parse_artifact_url
from core.errors import InvalidInput, NotFound
from tests.s3kit import s3_settings


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "artifacts")
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return S3Store(bucket, "some/prefix", S3Options(endpoint_url=server.endpoint, spool=tmp_path / "spool",
                                                    connect_timeout_s=5, read_timeout_s=30, max_attempts=3))


def test_put_open_stat_list_delete(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"line one\nline two\n" + os.urandom(3 << 20))  # past one read chunk
    store.put_file("a/b/data.bin", src)
    store.put_bytes("a/b/small.txt", b"hello")
    store.put_bytes("a/c/other.txt", b"x")
    assert store.read_bytes("a/b/data.bin") == src.read_bytes()
    assert b"".join(store.iter_chunks("a/b/data.bin")) == src.read_bytes()
    with store.open("a/b/data.bin") as fh:
        assert [next(fh), next(fh)] == [b"line one\n", b"line two\n"]  # lines keep their newline
    entry = store.stat("a/b/small.txt")
    assert entry.size == 5 and abs(entry.mtime - time.time()) < 300
    assert store.stat("a/b/missing") is None and not store.exists("a/b/missing")
    assert sorted(e.key for e in store.list("a/b")) == ["a/b/data.bin", "a/b/small.txt"]
    assert sorted(e.key for e in store.list("a")) == ["a/b/data.bin", "a/b/small.txt", "a/c/other.txt"]
    assert list(store.list("a/b/data")) == []  # a folder prefix, not a string prefix
    store.put_bytes("a/b/small.txt", b"replaced")  # a write replaces the whole key
    assert store.read_bytes("a/b/small.txt") == b"replaced"
    assert store.delete_prefix("a/b") == 2
    assert [e.key for e in store.list("a")] == ["a/c/other.txt"]
    store.delete(["a/c/other.txt", "a/c/never-was"])
    assert list(store.list("a")) == []
    with pytest.raises(NotFound):
        store.open("a/c/other.txt")


def test_a_failed_write_stores_nothing(store):
    with pytest.raises(RuntimeError), store.writer("w/file.jsonl") as fh:
        fh.write(b"half a file")
        raise RuntimeError("the writer died")
    assert not store.exists("w/file.jsonl")
    store.put_bytes("w/file.jsonl", b"v1")
    with pytest.raises(RuntimeError), store.writer("w/file.jsonl") as fh:
        fh.write(b"v2 half")
        raise RuntimeError("again")
    assert store.read_bytes("w/file.jsonl") == b"v1"  # readers never see a half replacement


def test_trees_round_trip(store, tmp_path):
    src = tmp_path / "tree"
    src.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (src / name).write_bytes(name.encode() * 100)
    assert store.put_tree("adapters/x/1", src) == ["adapters/x/1/adapter_config.json",
                                                   "adapters/x/1/adapter_model.safetensors"]
    store.get_tree("adapters/x/1", tmp_path / "copy")
    assert {p.name: p.read_bytes() for p in (tmp_path / "copy").iterdir()} == \
        {p.name: p.read_bytes() for p in src.iterdir()}


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
def test_hostile_keys_are_refused(store, key):
    with pytest.raises(InvalidInput):
        store.put_bytes(key, b"x")


def test_presigned_url_only_on_s3(store):
    store.put_bytes("p/file", b"abc")
    url = store.presigned_url("p/file", filename="file", expires_s=60)
    if isinstance(store, LocalStore):
        assert url is None
    else:
        import httpx

        assert httpx.get(url).content == b"abc"


def test_settings_pick_the_backend(settings, s3_server, s3_bucket):
    assert isinstance(get_store(settings), LocalStore)
    assert get_store(settings).local_root == settings.artifacts_dir
    remote = get_store(s3_settings(settings, s3_server, s3_bucket))
    assert isinstance(remote, S3Store) and remote.local_root is None
    assert (remote.bucket, remote.prefix) == (s3_bucket, "prospect")
    assert parse_artifact_url("s3://b/p/q") == ("b", "p/q")
    with pytest.raises(InvalidInput):
        parse_artifact_url("gs://b/p")
