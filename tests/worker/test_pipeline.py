"""worker.pipeline.run_job in process on a tiny model: publish, gate, tampered base, cancel, busy."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from core import jobs
from core.adapters import version_dir
from core.base_models import register_base_model
from core.db import session_scope
from core.models import AdapterVersion, AlignmentJob, JobMetric, Snapshot
from core.snapshots import iter_snapshot_rows
from tests.tiny import build_tiny_model_dir
from tests.worker.jobkit import TINY_CONFIG, api_keys, feedback_events, post_feedback
from worker.pipeline import checkpoint_dir, gate, reference_figures, run_job, split_by_prompt, staging_dir


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def stack(settings, engine, tiny_dir, tmp_path):
    """Feedback in the database, the tiny model (a private copy) registered as 'tiny'."""
    model_dir = shutil.copytree(tiny_dir, tmp_path / "tiny")
    client = TestClient(create_app(settings))
    keys = api_keys(engine)
    post_feedback(client, keys["ingest"], feedback_events())
    with session_scope(engine) as s:
        register_base_model(s, settings=settings, name="tiny", source=str(model_dir))
    return {"settings": settings, "engine": engine, "model_dir": model_dir}


def _job(engine, **kwargs) -> str:
    kwargs.setdefault("config", TINY_CONFIG)
    with session_scope(engine) as s:
        return jobs.create_job(s, adapter_name=kwargs.pop("adapter", "bot"), base_model_name="tiny", **kwargs).id


def _state(engine, job_id):
    with session_scope(engine) as s:
        job = s.get(AlignmentJob, job_id)
        n_metrics = s.scalar(select(func.count()).select_from(JobMetric).where(JobMetric.job_id == job_id))
        n_versions = s.scalar(select(func.count()).select_from(AdapterVersion).where(AdapterVersion.job_id == job_id))
    return job, n_metrics, n_versions


def test_split_by_prompt_is_deterministic_and_disjoint():
    rows = [{"prompt": p, "completion": c, "label": c == "a"}
            for p in [f"q{i}" for i in range(200)] + [[{"role": "user", "content": "m"}]] for c in ("a", "b")]
    train, heldout = split_by_prompt(rows, 0.2)
    assert (train, heldout) == split_by_prompt(list(rows), 0.2)
    assert len(train) + len(heldout) == len(rows)
    key = lambda r: repr(r["prompt"])
    assert not {key(r) for r in train} & {key(r) for r in heldout}
    assert 0.12 < len(heldout) / len(rows) < 0.28
    # A prompt's side does not depend on the other rows.
    _, small_heldout = split_by_prompt(rows[:40], 0.2)
    assert {key(r) for r in small_heldout} == {key(r) for r in heldout if r in rows[:40]}


def test_reference_figures_and_gate():
    heldout = [{"label": True}] * 3 + [{"label": False}]
    ref = reference_figures(heldout, desirable=1.0, undesirable=2.0)
    assert ref["loss"] == pytest.approx((3 * 1.0 + 1 * 2.0) / (2 * 4))
    assert (ref["reward_margin"], ref["accuracy"]) == (0.0, 0.0)
    options = jobs.JobOptions()
    assert gate({"loss": 0.5, "reward_margin": 0.1}, ref, options) == (True, [])
    # A collapsed adapter scores the reference's loss up to float noise: refused.
    assert gate({"loss": ref["loss"] - 1e-7, "reward_margin": 1.4}, ref, options)[0] is False
    passed, reasons = gate({"loss": 0.7, "reward_margin": -0.1}, ref, options)
    assert not passed and len(reasons) == 2 and "not below the reference's 0.625000" in reasons[0]
    strict = jobs.JobOptions(gate_min_reward_margin=0.5)
    assert gate({"loss": 0.5, "reward_margin": 0.1}, ref, strict)[0] is False
    assert gate({"loss": None, "reward_margin": None}, ref, options)[0] is False  # NaN recorded as null


def test_job_trains_evaluates_and_publishes(stack):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.config import KTOConfig
    from alignment.evaluate import evaluate_kto

    settings, engine = stack["settings"], stack["engine"]
    job_id = _job(engine)
    outcome = run_job(job_id, settings=settings)
    job, n_metrics, n_versions = _state(engine, job_id)
    assert (outcome.status, job.status, job.error) == ("succeeded", "succeeded", None)
    assert (job.attempts, job.progress_step, job.progress_total, n_metrics, n_versions) == (1, 12, 12, 12, 1)
    assert job.resumed_from_step is None
    assert (job.n_desirable, job.n_undesirable) == (24, 24)
    assert job.class_weights["reason"].startswith("counts ratio 1.000 already inside")
    assert job.eval_metrics["gate"]["passed"] is True
    adapter, reference = job.eval_metrics["adapter"], job.eval_metrics["reference"]
    assert adapter["loss"] < reference["loss"] and adapter["reward_margin"] > 0
    assert not checkpoint_dir(settings, job_id).exists() and not staging_dir(settings, job_id).exists()

    with session_scope(engine) as s:
        version = s.get(AdapterVersion, job.adapter_version_id)
        snapshot = s.get(Snapshot, job.snapshot_id)
    assert (version.adapter_name, version.version, version.job_id) == ("bot", 1, job_id)
    assert version.manifest["eval_metrics"]["adapter"]["loss"] == pytest.approx(adapter["loss"])
    # The published files reproduce the worker's held-out figures exactly.
    _, heldout = split_by_prompt(list(iter_snapshot_rows(settings, snapshot)), 0.2)
    base = AutoModelForCausalLM.from_pretrained(stack["model_dir"], dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, version_dir(settings, version))
    figures = evaluate_kto(loaded, AutoTokenizer.from_pretrained(stack["model_dir"]), heldout,
                           KTOConfig.from_dict(TINY_CONFIG), desirable_weight=job.class_weights["desirable"],
                           undesirable_weight=job.class_weights["undesirable"])
    for key in ("loss", "logps_desirable", "logps_undesirable", "reward_margin"):
        assert figures[key] == pytest.approx(adapter[key], abs=1e-5), key


def test_gate_thresholds_refuse_and_force_publish_skips(stack):
    engine = stack["engine"]
    strict = {"gate_min_reward_margin": 1e6}
    refused = _job(engine, options=strict)
    assert run_job(refused, settings=stack["settings"]).status == "failed"
    job, n_metrics, n_versions = _state(engine, refused)
    assert job.error.startswith("the gate refused to publish: held-out reward margin")
    assert "is not above 1000000.0" in job.error
    gate_record = job.eval_metrics["gate"]
    assert gate_record["passed"] is False and gate_record["gate_min_reward_margin"] == 1e6
    assert job.eval_metrics["adapter"]["reward_margin"] > 0 and (n_metrics, n_versions) == (12, 0)

    forced = _job(engine, options=strict, force_publish=True)
    assert run_job(forced, settings=stack["settings"]).status == "succeeded"
    job, _, n_versions = _state(engine, forced)
    assert job.eval_metrics["gate"] == {"passed": None, "skipped": "force_publish"} and n_versions == 1


def test_tampered_base_model_fails_the_job(stack):
    weights = next(stack["model_dir"].glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    job_id = _job(stack["engine"])
    assert run_job(job_id, settings=stack["settings"]).status == "failed"
    job, n_metrics, n_versions = _state(stack["engine"], job_id)
    assert job.status == "failed" and "base model 'tiny' changed on disk: sha256 expected" in job.error
    assert (n_metrics, n_versions, job.progress_step) == (0, 0, 0)


def test_cancel_while_running_stops_within_a_step_and_publishes_nothing(stack):
    engine = stack["engine"]
    job_id = _job(engine, config={**TINY_CONFIG, "max_steps": 500})
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(o=run_job(job_id, settings=stack["settings"])))
    thread.start()
    try:
        deadline = threading.Event()
        for _ in range(600):
            if _state(engine, job_id)[0].progress_step >= 3:
                break
            deadline.wait(0.1)
        with session_scope(engine) as s:
            jobs.request_cancel(s, job_id=job_id)
            asked_at = s.get(AlignmentJob, job_id).progress_step
    finally:
        thread.join(timeout=120)
    job, n_metrics, n_versions = _state(engine, job_id)
    assert outcome["o"].status == "cancelled" and job.status == "cancelled"
    assert asked_at >= 3 and job.progress_step <= asked_at + 1 and n_metrics == job.progress_step
    assert n_versions == 0 and not checkpoint_dir(stack["settings"], job_id).exists()


def test_busy_adapter_waits_and_finished_job_is_skipped(stack):
    engine, settings = stack["engine"], stack["settings"]
    first, second = _job(engine), _job(engine)
    with session_scope(engine) as s:
        jobs.claim_job(s, job_id=first, worker="elsewhere:1", heartbeat_timeout_s=60)
    assert run_job(second, settings=settings).claim == "busy"
    assert _state(engine, second)[0].status == "queued"
    with session_scope(engine) as s:
        jobs.request_cancel(s, job_id=second)
    assert run_job(second, settings=settings).claim == "skip"
    assert _state(engine, second)[0].attempts == 0
