"""worker.pipeline.run_job in process on a tiny model: publish, gate, tampered base, cancel, busy."""

from __future__ import annotations

import shutil
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from api.main import create_app
from core import jobs
from core.adapters import version_dir
from core.base_models import register_base_model
from core.db import session_scope
from core.models import AdapterVersion, AliasHistory, AlignmentJob, JobMetric, Snapshot, utcnow
from tests.tiny import build_tiny_model_dir
from tests.worker.jobkit import TINY_CONFIG, api_keys, feedback_events, post_feedback
from worker.heldout_split import split_snapshot
from worker.job_dirs import checkpoint_dir
from worker.liveness import Liveness
from worker.pipeline import _Run, run_job


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
    phases = ("snapshot", "split", "load", "reference_pass", "train", "evaluate", "publish")
    assert set(job.timings) == {"queue_wait", "total", *phases} and min(job.timings.values()) >= 0
    assert job.timings["total"] == pytest.approx(sum(job.timings[p] for p in phases), abs=0.01)
    assert job.timings["reference_pass"] > 0 and job.timings["train"] > 0
    assert job.class_weights["reason"].startswith("counts ratio 1.000 already inside")
    gate = job.eval_metrics["gate"]
    assert gate["passed"] is True and gate["reasons"] == []
    # 24 prompts, one up and one down each: 10 held out (the per-class floor), 14 train.
    assert gate["heldout_counts"] == {"desirable": 10, "undesirable": 10}
    assert job.eval_metrics["split"]["train"] == {"desirable": 14, "undesirable": 14}
    assert gate["loss_improvement"]["interval"][0] > 0.01 and gate["reward_margin"]["interval"][0] > 0
    assert gate["method"].startswith("paired cluster bootstrap") and gate["n_prompts"] == 10
    adapter, reference = job.eval_metrics["adapter"], job.eval_metrics["reference"]
    assert adapter["loss"] < reference["loss"] and adapter["reward_margin"] > 0
    assert not checkpoint_dir(settings, job_id).exists() and not any((settings.data_path / "staging").iterdir())

    with session_scope(engine) as s:
        version = s.get(AdapterVersion, job.adapter_version_id)
        snapshot = s.get(Snapshot, job.snapshot_id)
    assert (version.adapter_name, version.version, version.job_id) == ("bot", 1, job_id)
    assert version.manifest["eval_metrics"]["adapter"]["loss"] == pytest.approx(adapter["loss"])
    # The published files reproduce the worker's held-out figures exactly.
    heldout = split_snapshot(lambda: session_scope(engine), settings, snapshot, jobs.JobOptions()).heldout
    base = AutoModelForCausalLM.from_pretrained(stack["model_dir"], dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, version_dir(settings, version))
    weights = gate["heldout_weights"]
    figures = evaluate_kto(loaded, AutoTokenizer.from_pretrained(stack["model_dir"]), heldout,
                           KTOConfig.from_dict(TINY_CONFIG), desirable_weight=weights["desirable"],
                           undesirable_weight=weights["undesirable"])
    for key in ("loss", "logps_desirable", "logps_undesirable", "reward_margin"):
        assert figures[key] == pytest.approx(adapter[key], abs=1e-5), key


def test_gate_thresholds_refuse_and_force_publish_skips(stack):
    engine = stack["engine"]
    strict = {"gate_min_reward_margin": 1e6}
    refused = _job(engine, options=strict)
    assert run_job(refused, settings=stack["settings"]).status == "failed"
    job, n_metrics, n_versions = _state(engine, refused)
    assert job.error.startswith("the gate refused to publish: held-out reward margin: 95% interval lower end")
    assert "is not above gate_min_reward_margin 1e+06" in job.error
    gate_record = job.eval_metrics["gate"]
    assert gate_record["passed"] is False and gate_record["options"]["gate_min_reward_margin"] == 1e6
    assert job.eval_metrics["adapter"]["reward_margin"] > 0 and (n_metrics, n_versions) == (12, 0)

    forced = _job(engine, options=strict, force_publish=True)
    assert run_job(forced, settings=stack["settings"]).status == "succeeded"
    job, _, n_versions = _state(engine, forced)
    forced_gate = job.eval_metrics["gate"]
    assert (forced_gate["passed"], forced_gate["skipped"], forced_gate["would_pass"]) == (None, "force_publish", False)
    assert forced_gate["reasons"] and n_versions == 1


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


def _versions(engine) -> list[tuple]:
    with session_scope(engine) as s:
        return [(v.version, v.job_id) for v in s.scalars(select(AdapterVersion).order_by(AdapterVersion.version))]


def test_a_reaped_but_alive_delivery_never_publishes_a_second_version(stack, monkeypatch):
    """Delivery A is reaped while alive (network split, clock skew) and reaches its publish after
    delivery B has published: A's publish transaction sees it no longer holds the job."""
    engine, settings = stack["engine"], stack["settings"]
    job_id = _job(engine)
    a_at_publish, a_go_on, calls = threading.Event(), threading.Event(), []
    real_publish = _Run._publish

    def publish(self, *args, **kwargs):
        calls.append(self.token)
        if len(calls) == 1:  # delivery A waits at the door while B takes over and publishes
            a_at_publish.set()
            assert a_go_on.wait(120)
        return real_publish(self, *args, **kwargs)

    monkeypatch.setattr(_Run, "_publish", publish)
    outcome = {}
    a = threading.Thread(target=lambda: outcome.update(a=run_job(job_id, settings=settings, worker="host-a:1")))
    a.start()
    try:
        assert a_at_publish.wait(120)
        with session_scope(engine) as s:
            reaped = jobs.reap_stale_jobs(s, heartbeat_timeout_s=settings.heartbeat_timeout_s,
                                          now=utcnow() + timedelta(seconds=settings.heartbeat_timeout_s + 1))
        assert reaped.requeued == [job_id]
        outcome["b"] = run_job(job_id, settings=settings, worker="host-b:2")
    finally:
        a_go_on.set()
        a.join(timeout=120)
    assert outcome["b"].status == "succeeded"
    assert outcome["a"].status is None and "no longer holds it" in outcome["a"].reason
    assert len(calls) == 2 and calls[0] != calls[1]
    assert _versions(engine) == [(1, job_id)]
    job, _, _ = _state(engine, job_id)
    with session_scope(engine) as s:
        latest_moves = s.scalars(select(AliasHistory).where(AliasHistory.alias == "latest")).all()
        version_id = s.scalar(select(AdapterVersion.id))
    assert (job.status, job.attempts, job.adapter_version_id) == ("succeeded", 2, version_id)
    assert [(m.from_version, m.to_version) for m in latest_moves] == [(None, 1)]
    assert sorted(p.name for p in (settings.artifacts_dir / "adapters" / "bot").iterdir()) == ["1"]


def test_version_rows_are_unique_per_job(stack):
    engine = stack["engine"]
    job_id = _job(engine)
    assert run_job(job_id, settings=stack["settings"]).status == "succeeded"
    with pytest.raises(IntegrityError, match="(?i)unique"), session_scope(engine) as s:
        first = s.scalar(select(AdapterVersion))
        s.add(AdapterVersion(adapter_name="bot", version=2, path="x", manifest={}, manifest_sha256="0" * 64,
                             job_id=job_id, base_model_id=first.base_model_id))


def test_a_cancel_that_arrives_before_the_publish_commits_wins(stack, monkeypatch):
    engine, settings = stack["engine"], stack["settings"]
    job_id = _job(engine)
    real_publish = _Run._publish

    def publish(self, *args, **kwargs):  # after the last should_stop check, before the commit
        with session_scope(engine) as s:
            jobs.request_cancel(s, job_id=job_id)
        return real_publish(self, *args, **kwargs)

    monkeypatch.setattr(_Run, "_publish", publish)
    assert run_job(job_id, settings=settings).status == "cancelled"
    job, _, n_versions = _state(engine, job_id)
    assert (job.status, job.adapter_version_id, n_versions) == ("cancelled", None, 0)
    assert list((settings.artifacts_dir / "adapters" / "bot").iterdir()) == []


def test_too_few_heldout_rows_fail_before_training_and_say_how_many_more(stack):
    engine = stack["engine"]
    job_id = _job(engine, options={"gate_min_heldout_per_class": 20})
    assert run_job(job_id, settings=stack["settings"]).status == "failed"
    job, n_metrics, n_versions = _state(engine, job_id)
    # 24 prompts, one up and one down each: at most half of a class is held out (12 of 24).
    assert job.error.startswith("the held-out rows hold 12 thumbs-up and 12 thumbs-down; the gate needs at least 20")
    assert "collect about 40 more thumbs-up, about 40 more thumbs-down on new prompts" in job.error
    assert (n_metrics, n_versions, job.eval_metrics["split"]["heldout"]) == (
        0, 0, {"desirable": 12, "undesirable": 12})


def test_an_unreachable_database_stops_the_delivery_for_a_retry():
    from sqlalchemy.exc import OperationalError

    from core.db import make_engine

    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2", pool_pre_ping=False)
    live = Liveness(engine, job_id="j", token="t", interval_s=60, deadline=utcnow() + timedelta(hours=1))
    assert live.should_stop() is True and live.unreachable is not None
    run = _Run(job_id="j", settings=None, engine=engine, token="t", attempt=1)
    with pytest.raises(OperationalError):
        run._stopped(live)  # the task retries it; the next attempt resumes from the checkpoint


def test_a_job_past_its_time_limit_fails_with_the_reason(stack):
    settings = stack["settings"].model_copy(update={"job_time_limit_s": 0.001})
    job_id = _job(stack["engine"])
    assert run_job(job_id, settings=settings).status == "failed"
    job, _, n_versions = _state(stack["engine"], job_id)
    assert "ran past its wall-clock limit of 0.001 s (PROSPECT_JOB_TIME_LIMIT_S)" in job.error and n_versions == 0


def test_a_worker_host_whose_clock_runs_ahead_keeps_its_time_limit(stack, monkeypatch):
    """Job times are on the database's clock (core.clock); a host running an hour fast checks the limit
    against its own clock shifted by the same offset, so a 30-minute limit is not already spent."""
    import worker.liveness
    import worker.pipeline

    if stack["engine"].dialect.name != "postgresql":
        pytest.skip("SQLite is one host's embedded file: its clock is that host's")
    for module in (worker.pipeline, worker.liveness):  # the deadline is set in one, checked in the other
        monkeypatch.setattr(module, "utcnow", lambda: utcnow() + timedelta(hours=1))
    settings = stack["settings"].model_copy(update={"job_time_limit_s": 1800})
    job_id = _job(stack["engine"])
    assert run_job(job_id, settings=settings).status == "succeeded", _state(stack["engine"], job_id)[0].error
    assert _state(stack["engine"], job_id)[0].timings["queue_wait"] < 600  # not the hour of skew


def test_a_policy_job_starts_its_rollout_in_the_publish_commit(stack):
    from core.adapter_aliases import move_alias
    from core.policies import create_policy
    from core.rollouts import running_rollout

    engine, settings = stack["engine"], stack["settings"]
    assert run_job(_job(engine), settings=settings).status == "succeeded"
    with session_scope(engine) as s:
        move_alias(s, adapter_name="bot", alias="champion", version=1, moved_by="test")
        policy = create_policy(s, adapter_name="bot", base_model_name="tiny", config=TINY_CONFIG,
                               rollout={"traffic": 0.25, "min_votes": 50})
        policy_id = policy.id
    assert run_job(_job(engine, policy_id=policy_id), settings=settings).status == "succeeded"
    with session_scope(engine) as s:
        rollout = running_rollout(s, adapter_name="bot")
        assert (rollout.candidate_version, rollout.baseline_version, rollout.traffic) == (2, 1, 0.25)


def test_a_checkpoint_that_cannot_continue_is_dropped_and_the_job_starts_afresh(stack, monkeypatch):
    """E.g. a bf16 checkpoint of a GPU worker found by a CPU worker: the job trains from scratch."""
    import alignment.train as train_module

    settings = stack["settings"]
    job_id = _job(stack["engine"])
    ckpt = checkpoint_dir(settings, job_id)
    ckpt.mkdir(parents=True)
    (ckpt / train_module.CHECKPOINT_FILE).write_bytes(b"written elsewhere")

    def mismatch(*args, **kwargs):
        raise train_module.CheckpointMismatch("checkpoint written on cuda in bfloat16, this run is cpu float32")

    monkeypatch.setattr(train_module, "load_checkpoint", mismatch)
    assert run_job(job_id, settings=settings).status == "succeeded"
    job, n_metrics, _ = _state(stack["engine"], job_id)
    assert (job.resumed_from_step, n_metrics) == (None, 12)


def test_the_split_streams_training_rows_and_keeps_only_heldout_rows(stack):
    from core.snapshots import create_snapshot, iter_snapshot_rows

    settings, engine = stack["settings"], stack["engine"]
    with session_scope(engine) as s:
        snapshot = create_snapshot(s, settings=settings)
    split = split_snapshot(lambda: session_scope(engine), settings, snapshot, jobs.JobOptions())
    train = list(split.train_rows())
    assert not hasattr(split, "train") and len(split.heldout) == 20
    assert {"desirable": sum(r["label"] for r in train), "undesirable": sum(not r["label"] for r in train)} == \
        split.counts("train") == {"desirable": 14, "undesirable": 14}
    everything = list(iter_snapshot_rows(settings, snapshot))
    assert sorted(map(repr, train + split.heldout)) == sorted(map(repr, everything))
    # The stored sides are keyed like the votes, so they can be joined with them.
    from core.models import PromptSplit, Vote

    with session_scope(engine) as s:
        split_keys = set(s.scalars(select(PromptSplit.prompt_key)))
        vote_keys = set(s.scalars(select(Vote.prompt_key)))
    assert len(split_keys) == 24 and split_keys == vote_keys
