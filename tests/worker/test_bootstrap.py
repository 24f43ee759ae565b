"""worker.bootstrap: leftovers removed, the bundled model registered once (the conversion itself is
exercised by the SmolLM2 end-to-end test)."""

from __future__ import annotations

import json
import shutil

from sqlalchemy import func, select

from alignment.bundled import MARKER
from core import jobs
from core.db import session_scope
from core.models import BaseModelRecord
from tests.tiny import build_tiny_model_dir
from worker import bootstrap


def _active_and_finished(engine) -> tuple[str, str]:
    with session_scope(engine) as s:
        s.add(BaseModelRecord(name="tiny", source="/m", path="/m", sha256="0" * 64))
    with session_scope(engine) as s:
        active = jobs.create_job(s, adapter_name="a", base_model_name="tiny").id
        finished = jobs.create_job(s, adapter_name="b", base_model_name="tiny").id
    with session_scope(engine) as s:
        jobs.request_cancel(s, job_id=finished)
    return active, finished


def test_cleanup_keeps_checkpoints_of_active_jobs_only(settings, engine):
    active, finished = _active_and_finished(engine)
    for job_id in (active, finished, "unknown"):
        (settings.data_path / "checkpoints" / job_id).mkdir(parents=True)
    (settings.data_path / "staging" / f"job-{finished}").mkdir(parents=True)
    orphan = settings.artifacts_dir / "adapters" / "a" / "7"
    orphan.mkdir(parents=True)

    removed = bootstrap.cleanup(settings)
    assert sorted(p.name for p in removed) == sorted(["7", finished, "unknown", f"job-{finished}"])
    assert [p.name for p in (settings.data_path / "checkpoints").iterdir()] == [active]


def test_bundled_model_is_registered_once(settings, engine, tmp_path):
    # A folder that already holds a converted model (the marker makes convert_bundled a no-op).
    folder = settings.models_dir / settings.bundled_model_name
    build_tiny_model_dir(folder)
    (folder / MARKER).write_text(json.dumps({"name": "test"}))
    settings = settings.model_copy(update={"register_bundled_model": True})

    bootstrap.run(settings)
    record = bootstrap.ensure_bundled_model(settings)  # second start: nothing new
    assert record.name == settings.bundled_model_name and record.path == str(folder.resolve())
    with session_scope(engine) as s:
        assert s.scalar(select(func.count()).select_from(BaseModelRecord)) == 1
    shutil.rmtree(folder)


def test_cleanup_removes_distributed_work_folders_and_killed_base_model_fetches(settings, engine):
    """A worker killed -9 mid-training leaves distributed/<job>/rows.jsonl (users' rows, which erasure
    does not reach) and mid-fetch a base model's .part folder (a model's size): both go, unless the job
    may still run here or the fetch is still being written."""
    import os
    import time

    active, finished = _active_and_finished(engine)
    for job_id in (active, finished):
        work = settings.data_path / "distributed" / f"{job_id}-token"
        work.mkdir(parents=True)
        (work / "rows.jsonl").write_text('{"prompt": "private", "completion": "x", "label": true}\n')
    models = settings.data_path / "base-models"
    killed, fetching = models / ".abc.1234.part", models / ".abc.5678.part"
    for part in (killed, fetching):
        part.mkdir(parents=True)
        (part / "model.safetensors").write_bytes(b"half")
    old = time.time() - 2 * 86400  # two days
    for p in (killed / "model.safetensors", killed):
        os.utime(p, (old, old))
    (models / ("0" * 3)).mkdir()  # a finished cache folder stays

    removed = bootstrap.cleanup(settings)
    assert settings.data_path / "distributed" / f"{finished}-token" in removed and killed in removed
    assert [p.name for p in (settings.data_path / "distributed").iterdir()] == [f"{active}-token"]
    assert sorted(p.name for p in models.iterdir()) == sorted([fetching.name, "000"])
