"""The bundled model registered by one worker host trains on another: each host converts it into its own
models folder (the conversion is deterministic) and the pinned hashes check that copy."""

from __future__ import annotations

import json
import shutil

from fastapi.testclient import TestClient

from alignment import bundled
from api.main import create_app
from core import jobs
from core.db import session_scope
from core.models import AlignmentJob
from tests.tiny import build_tiny_model_dir
from tests.worker.jobkit import TINY_CONFIG, api_keys, feedback_events, post_feedback
from worker import bootstrap
from worker.pipeline import run_job


def _fake_convert(target_dir, **_kwargs):
    """A deterministic stand-in for the GGUF conversion (the real one is exercised end to end)."""
    target = build_tiny_model_dir(target_dir)
    (target / bundled.MARKER).write_text(json.dumps({"name": "test"}))
    return target


def test_a_job_on_the_bundled_model_runs_on_a_host_that_did_not_register_it(settings, engine, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(bundled, "convert_bundled", _fake_convert)
    a = settings.model_copy(update={"register_bundled_model": True, "data_dir": tmp_path / "host-a"})
    b = a.model_copy(update={"data_dir": tmp_path / "host-b"})
    name = a.bundled_model_name
    record = bootstrap.ensure_bundled_model(a)
    assert record.path == str((a.models_dir / name).resolve())
    shutil.rmtree(a.data_path)  # host A is gone with its disk

    post_feedback(TestClient(create_app(b)), api_keys(engine)["ingest"], feedback_events())
    with session_scope(engine) as s:
        job_id = jobs.create_job(s, adapter_name="bot", base_model_name=name, config=TINY_CONFIG).id
    outcome = run_job(job_id, settings=b, worker="host-b:1")
    with session_scope(engine) as s:
        assert outcome.status == "succeeded", s.get(AlignmentJob, job_id).error
    assert (b.models_dir / name / "config.json").is_file()  # converted on host B, checked against the pins

    c = a.model_copy(update={"data_dir": tmp_path / "host-c"})
    bootstrap.ensure_bundled_model(c)  # a worker starting on a third host converts it before any job
    assert (c.models_dir / name / "config.json").is_file()
