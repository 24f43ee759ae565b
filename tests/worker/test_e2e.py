"""End to end with real Celery worker processes: feedback -> job -> adapter -> download.

The API runs in process (TestClient); the worker is ``celery -A worker.celery_app
worker`` in its own process group, configured through PROSPECT_* variables to
use the test's data dir, database and broker. Embedded default: SQLite + the
SQLAlchemy broker; with PROSPECT_TEST_DATABASE_URL / PROSPECT_TEST_REDIS_URL
also Postgres + Redis.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from api.queue import celery_client
from core import jobs
from core.base_models import register_base_model
from core.db import make_engine, session_scope
from core.migrate import upgrade
from core.models import AdapterVersion, AlignmentJob, BaseModelRecord, JobMetric, Snapshot
from core.settings import Settings
from tests.conftest import NO_PG, NO_REDIS, PG_URL, REDIS_URL, create_pg_database, drop_pg_database
from tests.tiny import build_tiny_model_dir
from tests.worker.jobkit import TINY_CONFIG, Worker, api_keys, feedback_events, post_feedback, wait_for
from worker.heldout_split import split_snapshot
from worker.job_dirs import checkpoint_dir

JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


def _settings(tmp_path: Path, backend: str, **overrides) -> Settings:
    if backend == "embedded":
        db = f"sqlite:///{tmp_path / 'prospect.db'}"
        broker = f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    else:
        if not PG_URL:
            pytest.skip(NO_PG)
        if not REDIS_URL:
            pytest.skip(NO_REDIS)
        db = create_pg_database()
        broker = REDIS_URL
        redis.Redis.from_url(REDIS_URL).flushdb()  # no task of an earlier test run
    upgrade(db)
    values = {"register_bundled_model": False, "heartbeat_interval_s": 0.5, **overrides}
    return Settings(data_dir=tmp_path / "var", database_url=db, broker_url=broker,
                    result_backend=f"db+sqlite:///{tmp_path / 'results.db'}", **values)


class Stack:
    """API client, keys, engine and workers of one test; everything is stopped at the end."""

    def __init__(self, settings: Settings, model_dir: Path | None = None):
        self.settings = settings
        self.engine = make_engine(settings.sqlalchemy_url)
        self.client = TestClient(create_app(settings))
        self.keys = api_keys(self.engine)
        self.workers: list[Worker] = []
        if model_dir is not None:
            with session_scope(self.engine) as s:
                register_base_model(s, settings=settings, name="tiny", source=str(model_dir))

    def worker(self, name: str, **kwargs) -> Worker:
        w = Worker(self.settings, name, **kwargs)
        self.workers.append(w)
        return w

    def logs(self) -> str:
        return "\n".join(f"--- {w.log_path.name}\n{w.log_tail()}" for w in self.workers)

    def start_job(self, adapter: str, **body) -> dict:
        body.setdefault("config", TINY_CONFIG)
        resp = self.client.post("/v1/jobs", headers=self.keys["train"],
                                json={"adapter": adapter, "base_model": body.pop("base_model", "tiny"), **body})
        assert resp.status_code == 202, resp.text
        return resp.json()

    def job(self, job_id: str) -> dict:
        resp = self.client.get(f"/v1/jobs/{job_id}", headers=self.keys["train"])
        assert resp.status_code == 200, resp.text
        return resp.json()

    def wait_status(self, job_id: str, *statuses: str, timeout: float = JOB_TIMEOUT_S) -> dict:
        return wait_for(lambda: (j := self.job(job_id))["status"] in statuses and j, timeout=timeout,
                        what=f"job {job_id} to be {'/'.join(statuses)}", on_timeout=self.logs)

    def count(self, model, *where) -> int:
        with session_scope(self.engine) as s:
            return s.scalar(select(func.count()).select_from(model).where(*where))

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.engine.dispose()
        if self.settings.sqlalchemy_url.startswith("postgresql"):
            drop_pg_database(self.settings.sqlalchemy_url)


@pytest.fixture
def make_stack(tmp_path):
    stacks = []

    def make(backend: str = "embedded", model_dir: Path | None = None, **overrides) -> Stack:
        stack = Stack(_settings(tmp_path, backend, **overrides), model_dir)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


def _adapter_figures(stack: Stack, job: dict, adapter_dir: Path, model_dir: Path) -> dict:
    """Held-out figures of the downloaded adapter, recomputed here."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignment.config import KTOConfig
    from alignment.evaluate import evaluate_kto

    with session_scope(stack.engine) as s:
        snapshot = s.get(Snapshot, job["snapshot_id"])
    heldout = split_snapshot(lambda: session_scope(stack.engine), stack.settings, snapshot,
                             jobs.JobOptions.from_dict(job["options"])).heldout
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir)
    weights = job["eval_metrics"]["gate"]["heldout_weights"]
    return evaluate_kto(model, AutoTokenizer.from_pretrained(model_dir), heldout,
                        KTOConfig.from_dict(job["config"]), desirable_weight=weights["desirable"],
                        undesirable_weight=weights["undesirable"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["embedded", pytest.param("pg-redis", marks=[pytest.mark.postgres,
                                                                                pytest.mark.redis])])
def test_feedback_to_downloaded_adapter_one_running_job_per_adapter(make_stack, tiny_dir, tmp_path, backend):
    stack = make_stack(backend, tiny_dir)
    post_feedback(stack.client, stack.keys["ingest"], feedback_events())
    stack.worker("w1", concurrency=2)
    # Two jobs of one adapter, two pool processes: the second must wait for the first.
    first, second = stack.start_job("support-bot"), stack.start_job("support-bot")
    running_seen = []

    def both_done():
        running_seen.append(stack.count(AlignmentJob, AlignmentJob.status == "running"))
        return all(stack.job(j["id"])["status"] in ("succeeded", "failed") for j in (first, second))

    wait_for(both_done, timeout=2 * JOB_TIMEOUT_S, what="both jobs to finish", on_timeout=stack.logs)
    a, b = stack.job(first["id"]), stack.job(second["id"])
    assert (a["status"], b["status"]) == ("succeeded", "succeeded"), (a["error"], b["error"], stack.logs())
    assert max(running_seen) == 1
    ordered = sorted([a, b], key=lambda j: j["started_at"])
    assert ordered[1]["started_at"] >= ordered[0]["finished_at"]
    assert sorted(j["adapter_version"]["version"] for j in (a, b)) == [1, 2]
    for job in (a, b):
        assert (job["attempts"], job["progress"], job["error"]) == (1, {"step": 12, "total": 12}, None)
        assert job["class_counts"] == {"desirable": 24, "undesirable": 24}
        assert job["eval_metrics"]["gate"]["passed"] is True
    metrics = stack.client.get(f"/v1/jobs/{a['id']}/metrics", headers=stack.keys["train"]).json()["steps"]
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert stack.count(AlignmentJob, AlignmentJob.status == "running") == 0

    # Download the second version as one tarball and load it with PEFT.
    resp = stack.client.get(f"/v1/adapters/support-bot/versions/{ordered[1]['adapter_version']['version']}/download",
                            headers=stack.keys["train"])
    assert resp.status_code == 200, resp.text
    target = tmp_path / "download"
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:gz") as tar:
        tar.extractall(target, filter="data")
    adapter_dir = next(p.parent for p in target.rglob("adapter_config.json"))
    figures = _adapter_figures(stack, ordered[1], adapter_dir, tiny_dir)
    trained = ordered[1]["eval_metrics"]["adapter"]
    for key in ("loss", "logps_desirable", "logps_undesirable", "reward_margin"):
        assert figures[key] == pytest.approx(trained[key], abs=1e-5), key


@pytest.mark.slow
def test_cancel_queued_and_running_jobs_and_tampered_base(make_stack, tiny_dir, tmp_path):
    stack = make_stack("embedded", tiny_dir)
    post_feedback(stack.client, stack.keys["ingest"], feedback_events())
    queued = stack.start_job("early")
    resp = stack.client.post(f"/v1/jobs/{queued['id']}/cancel", headers=stack.keys["train"])
    assert resp.json()["status"] == "cancelled"  # at once: no worker is running yet

    stack.worker("w1")
    long = stack.start_job("long", config={**TINY_CONFIG, "max_steps": 2000})
    wait_for(lambda: stack.job(long["id"])["progress"]["step"] >= 3, timeout=JOB_TIMEOUT_S,
             what="the long job to train", on_timeout=stack.logs)
    asked = stack.client.post(f"/v1/jobs/{long['id']}/cancel", headers=stack.keys["train"]).json()
    assert asked["cancel_requested"] is True
    done = stack.wait_status(long["id"], "cancelled", "failed", "succeeded", timeout=60)
    assert done["status"] == "cancelled"
    assert done["progress"]["step"] <= asked["progress"]["step"] + 1  # within one step
    assert stack.count(AdapterVersion) == 0
    wait_for(lambda: not checkpoint_dir(stack.settings, long["id"]).exists(), timeout=30, what="checkpoint removal")

    # A base model whose weights changed after registration: the job fails with the reason.
    copy = shutil.copytree(tiny_dir, tmp_path / "tampered")
    with session_scope(stack.engine) as s:
        register_base_model(s, settings=stack.settings, name="tampered", source=str(copy))
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-8] ^= 0x01
    weights.write_bytes(bytes(data))
    tampered = stack.wait_status(stack.start_job("t", base_model="tampered")["id"], "failed", "succeeded")
    assert tampered["status"] == "failed"
    assert "base model 'tampered' changed on disk: sha256 expected" in tampered["error"]
    assert stack.count(JobMetric, JobMetric.job_id == tampered["id"]) == 0

    # The cancelled job's task was delivered meanwhile and did nothing.
    early = stack.job(queued["id"])
    assert (early["status"], early["attempts"], early["started_at"]) == ("cancelled", 0, None)
    assert stack.count(AdapterVersion) == 0
    assert stack.count(AlignmentJob, AlignmentJob.status.in_(("queued", "running"))) == 0


def _assert_resumed(stack: Stack, job: dict, *, killed_at: int, every: int, total: int) -> None:
    assert job["status"] == "succeeded", (job["error"], stack.logs())
    assert job["attempts"] == 2
    resumed = job["resumed_from_step"]
    # The last checkpoint before the kill (a kill during a checkpoint write leaves the previous one).
    assert resumed is not None and resumed % every == 0 and killed_at - every <= resumed <= killed_at
    steps = stack.client.get(f"/v1/jobs/{job['id']}/metrics", headers=stack.keys["train"]).json()["steps"]
    assert [m["step"] for m in steps] == list(range(1, total + 1))
    assert {m["attempt"] for m in steps if m["step"] <= resumed} == {1}
    assert {m["attempt"] for m in steps if m["step"] > resumed} == {2}
    assert stack.count(AlignmentJob, AlignmentJob.status == "running") == 0
    assert stack.count(AdapterVersion, AdapterVersion.job_id == job["id"]) == 1
    # Removed right after the job's final commit.
    wait_for(lambda: not checkpoint_dir(stack.settings, job["id"]).exists(), timeout=30, what="checkpoint removal")


CRASH_CONFIG = {**TINY_CONFIG, "max_steps": 80, "checkpoint_every": 10}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["embedded", pytest.param("pg-redis", marks=[pytest.mark.postgres,
                                                                                pytest.mark.redis])])
def test_worker_killed_mid_job_is_reaped_and_resumes_from_checkpoint(make_stack, tiny_dir, backend):
    stack = make_stack(backend, tiny_dir, heartbeat_timeout_s=3.0)
    post_feedback(stack.client, stack.keys["ingest"], feedback_events())
    first = stack.worker("doomed")
    job = stack.start_job("crashy", config=CRASH_CONFIG)
    wait_for(lambda: stack.job(job["id"])["progress"]["step"] >= 14, timeout=JOB_TIMEOUT_S,
             what="training past the first checkpoint", interval=0.05, on_timeout=stack.logs)
    first.kill()  # the whole worker, pool included: nothing is acknowledged or restored
    killed_at = stack.job(job["id"])["progress"]["step"]
    assert killed_at < CRASH_CONFIG["max_steps"] and stack.job(job["id"])["status"] == "running"

    stack.worker("rescuer")
    # The broker will not hand the lost message back (SQLAlchemy transport: never; Redis: after the
    # visibility timeout): the reaper re-queues the job once its heartbeat is stale.
    client = celery_client(stack.settings)

    def reaped() -> bool:
        client.send_task("prospect.jobs.reap", queue="default").get(timeout=60)
        return stack.job(job["id"])["attempts"] == 2 or stack.job(job["id"])["status"] == "queued"

    wait_for(reaped, timeout=60, interval=1.0, what="the reaper to re-queue the job", on_timeout=stack.logs)
    done = stack.wait_status(job["id"], "succeeded", "failed")
    _assert_resumed(stack, done, killed_at=killed_at, every=10, total=CRASH_CONFIG["max_steps"])


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["embedded", pytest.param("pg-redis", marks=[pytest.mark.postgres,
                                                                                pytest.mark.redis])])
def test_worker_killed_holding_a_queued_jobs_message_the_job_still_runs(make_stack, tiny_dir, backend):
    """A queued job's message dies with the worker that held it (a busy-adapter retry waiting for its
    ETA, or a delivery in progress): the SQLAlchemy broker never hands it back, Redis only after its
    visibility timeout (48 h). The reaper sends the job again since no delivery has seen it lately."""
    # Busy retries wait 3 heartbeats (6 s): the holder keeps the retry message that long.
    stack = make_stack(backend, tiny_dir, heartbeat_timeout_s=3.0, heartbeat_interval_s=2.0)
    post_feedback(stack.client, stack.keys["ingest"], feedback_events())
    with session_scope(stack.engine) as s:  # a job of the same adapter runs elsewhere: ours is busy
        blocker = jobs.create_job(s, adapter_name="patient", base_model_name="tiny", config=TINY_CONFIG).id
        token = jobs.claim_job(s, job_id=blocker, worker="elsewhere:1", heartbeat_timeout_s=3600).token
    holder = stack.worker("holder")
    job = stack.start_job("patient")
    # Received twice: the first delivery found the adapter busy and the holder now holds its retry.
    wait_for(lambda: holder.log_tail(100_000).count("prospect.jobs.run[") >= 3 and
             holder.log_tail(100_000).count("] received") >= 2, timeout=120, interval=0.05,
             what="the holder to receive the busy job's retry", on_timeout=stack.logs)
    holder.kill()
    with session_scope(stack.engine) as s:
        jobs.fail(s, job_id=blocker, token=token, error="done elsewhere")
    assert stack.job(job["id"])["status"] == "queued"

    stack.worker("rescuer")
    client = celery_client(stack.settings)

    def resent() -> bool:
        client.send_task("prospect.jobs.reap", queue="default").get(timeout=60)
        return stack.job(job["id"])["status"] != "queued"

    wait_for(resent, timeout=60, interval=1.0, what="the reaper to send the job again", on_timeout=stack.logs)
    done = stack.wait_status(job["id"], "succeeded", "failed")
    assert done["status"] == "succeeded", done["error"]
    assert stack.count(AdapterVersion, AdapterVersion.adapter_name == "patient") == 1


@pytest.mark.slow
def test_killed_pool_process_is_redelivered_at_once_and_resumes(make_stack, tiny_dir):
    import os
    import signal

    stack = make_stack("embedded", tiny_dir)  # heartbeat timeout 300 s: no reaper involved
    post_feedback(stack.client, stack.keys["ingest"], feedback_events())
    stack.worker("w1")
    job = stack.start_job("oom", config=CRASH_CONFIG)
    wait_for(lambda: stack.job(job["id"])["progress"]["step"] >= 14, timeout=JOB_TIMEOUT_S,
             what="training past the first checkpoint", interval=0.05, on_timeout=stack.logs)
    pid = int(stack.job(job["id"])["worker"].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)  # like the OOM killer: only the training process dies
    killed_at = stack.job(job["id"])["progress"]["step"]
    done = stack.wait_status(job["id"], "succeeded", "failed")
    _assert_resumed(stack, done, killed_at=killed_at, every=10, total=CRASH_CONFIG["max_steps"])
    assert int(done["worker"].rsplit(":", 1)[1]) != pid


@pytest.mark.slow
def test_bundled_smollm2_bootstraps_trains_and_refuses_a_diverged_run(make_stack):
    """The real architecture, tokenizer and chat template, a few steps each on CPU. (The gate's
    statistics on this model are tested in tests/worker/test_gate_smollm2.py.)"""
    stack = make_stack("embedded", register_bundled_model=True)
    # 24 prompts, one up and one down each: 10 of each class held out (the gate's minimum), 14 trained on.
    post_feedback(stack.client, stack.keys["ingest"], feedback_events(24))
    stack.worker("smol")
    name = stack.settings.bundled_model_name

    def registered():
        with session_scope(stack.engine) as s:
            return s.scalar(select(BaseModelRecord).where(BaseModelRecord.name == name))

    base = wait_for(registered, timeout=240, interval=1.0, what="the bundled model to be registered",
                    on_timeout=stack.logs)
    assert Path(base.path) == stack.settings.models_dir / name and (Path(base.path) / "config.json").is_file()
    small = {"max_steps": 3, "batch_size": 4, "max_length": 96, "lora_r": 8, "lora_alpha": 16,
             "warmup_ratio": 0.0}
    options = {"heldout_fraction": 0.25}
    diverged = stack.start_job("smol-hot", base_model=name, config={**small, "learning_rate": 0.1},
                               options=options)
    # Three steps cannot prove much to the gate: publish anyway, to run the publish path on this model.
    sane = stack.start_job("smol", base_model=name, config={**small, "learning_rate": 1e-3}, options=options,
                           force_publish=True)
    hot = stack.wait_status(diverged["id"], "succeeded", "failed")
    assert hot["status"] == "failed" and hot["error"].startswith("the gate refused to publish"), hot["error"]
    assert hot["eval_metrics"]["gate"]["passed"] is False
    good = stack.wait_status(sane["id"], "succeeded", "failed")
    assert good["status"] == "succeeded", good["error"]
    assert good["eval_metrics"]["adapter"]["loss"] < good["eval_metrics"]["reference"]["loss"]
    with session_scope(stack.engine) as s:
        versions = s.scalars(select(AdapterVersion.adapter_name)).all()
    assert versions == ["smol"]
