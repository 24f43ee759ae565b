"""Adapter versions: numbering, atomic publish (crashes included), cleanup, aliases, files, tarballs."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core import adapter_aliases, adapter_publish, adapters
from core.base_models import register_base_model
from core.db import session_factory, session_scope
from core.errors import Conflict, InvalidInput, NotFound
from core.models import AdapterAlias, AdapterVersion, AliasHistory
from core.snapshots import create_snapshot
from tests.artifacts import make_model_dir, make_staged

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def world(engine, settings, tmp_path):
    """A registered base model, a snapshot and a staged adapter."""
    with session_scope(engine) as s:
        base = register_base_model(s, settings=settings, name="base", source=str(make_model_dir(tmp_path / "m")))
        snap = create_snapshot(s, settings=settings)
    return {"factory": session_factory(engine), "settings": settings, "base": base, "snapshot": snap,
            "staged": make_staged(tmp_path / "staged"), "engine": engine}


def publish(world, name="chat", **overrides) -> AdapterVersion:
    kwargs = {
        "settings": world["settings"], "adapter_name": name, "staged_dir": world["staged"],
        # A job publishes at most once (unique adapter_versions.job_id): job1, job2, ... per world.
        "job_id": f"job{world.setdefault('published', 0) + 1}",
        "base_model": world["base"], "snapshot": world["snapshot"], "hyperparameters": {"beta": 0.1, "r": 8},
        "class_counts": {"desirable": 3, "undesirable": 1}, "class_weights": {"desirable": 1.0, "undesirable": 3.0},
        "eval_metrics": {"adapter": {"loss": 0.4}, "reference": {"loss": 0.5}},
    }
    kwargs.update(overrides)
    version = adapters.publish_adapter_version(world["factory"], **kwargs)
    world["published"] += 1
    return version


def _count(engine, model) -> int:
    with session_scope(engine) as s:
        return s.scalar(select(func.count()).select_from(model))


def test_versions_count_1_2_3_and_latest_follows(world):
    published = [publish(world) for _ in range(3)]
    assert [v.version for v in published] == [1, 2, 3]
    assert publish(world, name="other").version == 1
    with session_scope(world["engine"]) as s:
        assert adapters.resolve_version(s, adapter_name="chat", version_or_alias="latest").version == 3
        history = adapter_aliases.alias_history(s, adapter_name="chat", alias="latest")
        assert [(h.from_version, h.to_version, h.moved_by) for h in history] == [
            (None, 1, "publish (job job1)"), (1, 2, "publish (job job2)"), (2, 3, "publish (job job3)")]
        assert [a["name"] for a in adapters.list_adapters(s)] == ["chat", "other"]
        assert adapters.list_adapters(s)[0]["aliases"] == {"latest": 3} and adapters.list_adapters(s)[0]["n_versions"] == 3


def test_version_folder_and_manifest(world):
    v = publish(world)
    folder = adapters.version_dir(world["settings"], v)
    assert folder == world["settings"].artifacts_dir / "adapters" / "chat" / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json",
                                                      "adapter_model.safetensors", "manifest.json"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest == v.manifest
    assert v.manifest_sha256 == hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    assert [f["name"] for f in manifest["files"]] == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    for f in manifest["files"]:
        data = (folder / f["name"]).read_bytes()
        assert (f["sha256"], f["size"]) == (hashlib.sha256(data).hexdigest(), len(data))
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
    assert (folder / "adapter_model.safetensors").read_bytes() == b"lora-weights"
    readme = (folder / "README.md").read_text()
    assert "PeftModel.from_pretrained" in readme and "--lora-modules chat=" in readme
    assert manifest["base_model"]["name"] == "base" and manifest["base_model"]["sha256"] == world["base"].sha256
    assert manifest["snapshot"]["id"] == world["snapshot"].id
    assert manifest["snapshot"]["content_hash"] == world["snapshot"].content_hash
    assert (manifest["adapter"], manifest["version"], manifest["job_id"]) == ("chat", 1, "job1")
    assert manifest["class_weights"] == {"desirable": 1.0, "undesirable": 3.0}
    assert manifest["eval_metrics"]["reference"] == {"loss": 0.5}
    assert manifest["hyperparameters"] == {"beta": 0.1, "r": 8}


def test_concurrent_publishers_get_distinct_numbers(world):
    with ThreadPoolExecutor(4) as pool:
        versions = sorted(pool.map(lambda i: publish(world, job_id=f"parallel-{i}").version, range(4)))
    assert versions == [1, 2, 3, 4]
    assert sorted(p.name for p in (world["settings"].artifacts_dir / "adapters" / "chat").iterdir()) == \
        ["1", "2", "3", "4"]


def test_failed_commit_leaves_nothing(world, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(adapter_publish, "_set_alias", boom)
    with pytest.raises(RuntimeError):
        publish(world)
    assert list((world["settings"].artifacts_dir / "adapters" / "chat").iterdir()) == []
    assert _count(world["engine"], AdapterVersion) == 0 and _count(world["engine"], AdapterAlias) == 0


def test_bad_input_is_refused_before_anything_is_written(world, tmp_path):
    with pytest.raises(InvalidInput, match="adapter name"):
        publish(world, name="Bad/Name")
    (world["staged"] / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidInput, match="adapter_model.safetensors"):
        publish(world)
    assert list((world["settings"].artifacts_dir / "adapters" / "chat").iterdir()) == []


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import core.adapter_publish as ad
    from core.base_models import get_base_model
    from core.db import make_engine, session_factory
    from core.settings import Settings

    url, data_dir, staged, when = sys.argv[1:5]
    real_rename = ad._rename_into_place

    def crash(tmp, final):
        if when == "after-rename":
            real_rename(tmp, final)
        os._exit(17)  # the process dies: no except, no finally

    ad._rename_into_place = crash
    factory = session_factory(make_engine(url))
    with factory() as s:
        base = get_base_model(s, name="base")
    ad.publish_adapter_version(factory, settings=Settings(data_dir=data_dir, database_url=url), adapter_name="chat",
                               staged_dir=Path(staged), job_id="j", base_model=base, snapshot=None,
                               hyperparameters={}, class_counts={}, class_weights={}, eval_metrics={})
""")


def _crash_publish(world, db_url: str, when: str) -> None:
    """Run a publish in a child process that dies (os._exit) just before or just after the rename."""
    settings = world["settings"]
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, db_url, str(settings.data_dir), str(world["staged"]),
                           when], check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 17, proc.stderr


@pytest.mark.parametrize("when", ["before-rename", "after-rename"])
def test_crash_leaves_no_visible_version_and_is_cleaned(world, db_url, when):
    settings = world["settings"]
    _crash_publish(world, db_url, when)
    parent = settings.artifacts_dir / "adapters" / "chat"
    left = sorted(p.name for p in parent.iterdir())
    assert left == ["1"] if when == "after-rename" else (len(left) == 1 and left[0].startswith(".tmp-"))
    assert _count(world["engine"], AdapterVersion) == 0 and _count(world["engine"], AliasHistory) == 0
    with session_scope(world["engine"]) as s:
        with pytest.raises(NotFound):
            adapters.resolve_version(s, adapter_name="chat", version_or_alias="latest")
        # A fresh .tmp-* folder may be a publish still copying: the default grace keeps it.
        kept = adapters.cleanup_leftovers(settings, s)
        assert [p.name for p in kept] == (["1"] if when == "after-rename" else [])
        removed = adapters.cleanup_leftovers(settings, s, tmp_grace_s=0)
    assert list(parent.iterdir()) == []
    assert len(kept) + len(removed) == 1
    assert publish(world).version == 1


def test_publish_replaces_a_crash_leftover_with_the_same_number(world, db_url):
    settings = world["settings"]
    _crash_publish(world, db_url, "after-rename")
    v = publish(world, job_id="job2")
    assert v.version == 1
    folder = adapters.version_dir(settings, v)
    assert json.loads((folder / "manifest.json").read_text())["job_id"] == "job2"


def test_alias_compare_and_swap(world):
    publish(world), publish(world), publish(world)
    engine = world["engine"]
    with session_scope(engine) as s:
        adapter_aliases.move_alias(s, adapter_name="chat", alias="champion", version=1, moved_by="alice")
    with session_scope(engine) as s:
        adapter_aliases.move_alias(s, adapter_name="chat", alias="champion", version=2, expected_version=1, moved_by="bob")
    with session_scope(engine) as s, pytest.raises(Conflict, match="points to version 2, not to the expected version 1"):
        adapter_aliases.move_alias(s, adapter_name="chat", alias="champion", version=3, expected_version=1, moved_by="eve")
    with session_scope(engine) as s, pytest.raises(Conflict, match="does not exist yet"):
        adapter_aliases.move_alias(s, adapter_name="chat", alias="staging", version=3, expected_version=2, moved_by="eve")
    with session_scope(engine) as s:  # a no-op move records nothing
        adapter_aliases.move_alias(s, adapter_name="chat", alias="champion", version=2, expected_version=2, moved_by="bob")
    with session_scope(engine) as s:  # rolling back is moving the alias back
        adapter_aliases.move_alias(s, adapter_name="chat", alias="champion", version=1, moved_by="carol")
    with session_scope(engine) as s:
        assert adapters.resolve_version(s, adapter_name="chat", version_or_alias="champion").version == 1
        assert adapter_aliases.aliases_of(s, adapter_name="chat") == {"champion": 1, "latest": 3}
        history = adapter_aliases.alias_history(s, adapter_name="chat", alias="champion")
        assert [(h.from_version, h.to_version, h.moved_by) for h in history] == [
            (None, 1, "alice"), (1, 2, "bob"), (2, 1, "carol")]
        with pytest.raises(NotFound):
            adapter_aliases.alias_history(s, adapter_name="chat", alias="staging")


@pytest.mark.parametrize(
    ("alias", "version", "error", "message"),
    [("latest", 1, InvalidInput, "moves only when one is published"), ("2nd", 1, InvalidInput, "start with a letter"),
     ("Champ!", 1, InvalidInput, "invalid alias"), ("champion", 7, NotFound, "no version 7")],
)
def test_bad_alias_moves_are_refused(world, alias, version, error, message):
    publish(world)
    with session_scope(world["engine"]) as s, pytest.raises(error, match=message):
        adapter_aliases.move_alias(s, adapter_name="chat", alias=alias, version=version, moved_by="x")
    assert _count(world["engine"], AliasHistory) == 1  # latest's first move only


def test_resolve_version_numbers_and_aliases(world):
    publish(world), publish(world)
    with session_scope(world["engine"]) as s:
        assert adapters.resolve_version(s, adapter_name="chat", version_or_alias="1").version == 1
        assert adapters.resolve_version(s, adapter_name="chat", version_or_alias=2).version == 2
        for ref in ("3", "champion"):
            with pytest.raises(NotFound):
                adapters.resolve_version(s, adapter_name="chat", version_or_alias=ref)
        with pytest.raises(NotFound):
            adapters.list_versions(s, adapter_name="nope")


def test_only_manifest_files_are_served(world):
    v = publish(world)
    for name in ("../1/manifest.json", "/etc/passwd", "..", "", "adapter_config.json/..", "manifest.json ",
                 "ADAPTER_CONFIG.JSON", "%2e%2e%2fmanifest.json", "../../../../../../etc/passwd"):
        with pytest.raises(NotFound):
            adapters.version_file(world["settings"], v, name)
    path, sha = adapters.version_file(world["settings"], v, "adapter_model.safetensors")
    assert path.read_bytes() == b"lora-weights" and sha == hashlib.sha256(b"lora-weights").hexdigest()


def test_tarball_is_deterministic_and_complete(world):
    v = publish(world)
    settings = world["settings"]
    first = b"".join(adapters.iter_tarball(settings, v))
    assert first == b"".join(adapters.iter_tarball(settings, v))
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"chat-v1/{n}" for n in ("README.md", "adapter_config.json",
                                                                       "adapter_model.safetensors", "manifest.json")]
        assert {(m.uid, m.gid, m.mode, m.mtime) for m in members} == {(0, 0, 0o644, int(v.created_at.timestamp()))}
        folder = adapters.version_dir(settings, v)
        for m in members:
            assert tar.extractfile(m).read() == (folder / m.name.split("/", 1)[1]).read_bytes()
    with session_scope(world["engine"]) as s:
        row = s.merge(v)
        assert adapters.tarball_sha256(s, settings=settings, version=row) == hashlib.sha256(first).hexdigest()
    with session_scope(world["engine"]) as s:
        assert s.get(AdapterVersion, v.id).tarball_sha256 == hashlib.sha256(first).hexdigest()


def test_tarball_refuses_a_file_changed_on_disk(world):
    v = publish(world)
    (adapters.version_dir(world["settings"], v) / "adapter_model.safetensors").write_bytes(b"tampered!!!!!")
    with pytest.raises(Conflict, match="changed on disk"):
        b"".join(adapters.iter_tarball(world["settings"], v))
