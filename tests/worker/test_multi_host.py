"""Hosts that share nothing but Postgres, Redis and the object store (SeaweedFS).

The API (uvicorn), a worker (`prospect worker`) and beat (`prospect beat`) run as processes with a data
folder each. Feedback goes in through the API; a job on the bundled SmolLM2 is trained, published and
downloaded through the API, then loaded with PEFT. Then the tiny test model, registered from the bucket,
trains a longer job; its worker is killed -9 after a checkpoint reached the bucket, and a second worker
(its own data folder) fetches the base model, resumes from the bucket's checkpoint, and publishes one
version. The tiny model serves the kill/resume half: SmolLM2 steps are too slow on a loaded 2-core CPU
to kill one mid-job reliably in the test's time.
"""

from __future__ import annotations

import io
import os
import random
import signal
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from core.db import make_engine
from core.migrate import upgrade
from tests.conftest import NO_PG, NO_REDIS, PG_URL, REDIS_URL, create_pg_database, drop_pg_database
from tests.s3kit import client
from tests.tiny import build_tiny_model_dir
from tests.worker.jobkit import ROOT, TINY_CONFIG, api_keys, feedback_events, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]

BIN = Path(sys.executable).parent
CRASH_CONFIG = {**TINY_CONFIG, "max_steps": 80, "checkpoint_every": 10}
SMOL_CONFIG = {"max_steps": 2, "batch_size": 2, "max_length": 32, "lora_r": 4, "lora_alpha": 8, "warmup_ratio": 0.0,
               "learning_rate": 1e-3}
TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Role:
    """One role of the stack in its own process group, with its own data folder and log."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], data_dir: Path):
        data_dir.mkdir(parents=True)
        self.name, self.data_dir, self.log_path = name, data_dir, data_dir.parent / f"{name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, cwd=ROOT, env={**env, "PROSPECT_DATA_DIR": str(data_dir)},
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
        self._log.close()

    def tail(self) -> str:
        return f"--- {self.name}\n" + self.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture
def cluster(request, tmp_path):
    if not PG_URL:
        pytest.skip(NO_PG)
    if not REDIS_URL:
        pytest.skip(NO_REDIS)
    s3_server, s3_bucket = request.getfixturevalue("s3_server"), request.getfixturevalue("s3_bucket")
    db = create_pg_database()
    upgrade(db)
    # A Redis database of its own: other test runs on this Redis consume the same queue names.
    redis_url = f"{REDIS_URL.rsplit('/', 1)[0]}/{random.randint(1, 14)}"
    env = {**os.environ, "PROSPECT_DATABASE_URL": db, "PROSPECT_BROKER_URL": redis_url,
           "PROSPECT_RESULT_BACKEND": redis_url, "PROSPECT_ARTIFACT_URL": f"s3://{s3_bucket}/prospect",
           "PROSPECT_S3_ENDPOINT_URL": s3_server.endpoint, "PROSPECT_HEARTBEAT_INTERVAL_S": "0.5",
           "PROSPECT_HEARTBEAT_TIMEOUT_S": "4", "PROSPECT_REAPER_INTERVAL_S": "2", "PROSPECT_LOG_LEVEL": "INFO",
           "PROSPECT_REGISTER_BUNDLED_MODEL": "false", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    engine = make_engine(db)
    roles: list[Role] = []

    class Cluster:
        keys = api_keys(engine)
        bucket, s3 = s3_bucket, client(s3_server)

        @staticmethod
        def start(name: str, argv: list[str], **extra: str) -> Role:
            roles.append(Role(name, argv, {**env, **extra}, tmp_path / name))
            return roles[-1]

        @staticmethod
        def logs() -> str:
            return "\n".join(r.tail() for r in roles)

    try:
        yield Cluster
    finally:
        for role in roles:
            role.stop()
        engine.dispose()
        drop_pg_database(db)


def _api(cluster) -> httpx.Client:
    port = _free_port()
    cluster.start("api", [str(BIN / "uvicorn"), "--factory", "api.main:create_app", "--host", "127.0.0.1",
                          "--port", str(port)], PROSPECT_REGISTER_BUNDLED_MODEL="true")
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

    def up() -> bool:
        try:
            return http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    wait_for(up, timeout=60, interval=0.5, what="the API to answer", on_timeout=cluster.logs)
    return http


def _wait_done(cluster, http, job_id: str) -> dict:
    def done():
        job = http.get(f"/v1/jobs/{job_id}", headers=cluster.keys["train"]).json()
        return job["status"] in ("succeeded", "failed") and job

    job = wait_for(done, timeout=TIMEOUT_S, interval=1.0, what=f"job {job_id}", on_timeout=cluster.logs)
    assert job["status"] == "succeeded", (job["error"], cluster.logs())
    return job


def _load_downloaded(cluster, http, job: dict, base_dir: Path, target: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    resp = http.get(f"/v1/adapters/{job['adapter']}/versions/{job['adapter_version']['version']}/download",
                    headers=cluster.keys["train"])
    assert resp.status_code == 200, resp.text
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:gz") as tar:
        tar.extractall(target, filter="data")
    adapter_dir = next(p.parent for p in target.rglob("adapter_config.json"))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    trained = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained and any(p.abs().sum() > 0 for p in trained)  # the published LoRA, not a fresh one


def test_api_workers_and_beat_on_separate_data_folders(cluster, tmp_path):
    http = _api(cluster)
    cluster.start("beat", [str(BIN / "prospect"), "beat"])
    first = cluster.start("worker-1", [str(BIN / "prospect"), "worker", "--concurrency", "2"],
                          PROSPECT_REGISTER_BUNDLED_MODEL="true")
    resp = http.post("/v1/feedback/batch", headers=cluster.keys["ingest"], json={"events": feedback_events()})
    assert resp.status_code == 200 and resp.json()["created"] == 48, resp.text

    # The bundled model: queued while worker 1 converts it, then trained and published.
    bundled = "smollm2-135m-instruct"
    resp = http.post("/v1/jobs", headers=cluster.keys["train"],
                     json={"adapter": "smol", "base_model": bundled, "config": SMOL_CONFIG,
                           "options": {"heldout_fraction": 0.25}, "force_publish": True})
    assert resp.status_code == 202, resp.text
    smol = _wait_done(cluster, http, resp.json()["id"])
    _load_downloaded(cluster, http, smol, first.data_dir / "models" / bundled, tmp_path / "smol")

    # The tiny model, registered from the bucket: no host but the store holds it.
    folder = build_tiny_model_dir(tmp_path / "upload")
    for path in folder.iterdir():
        cluster.s3.upload_file(str(path), cluster.bucket, f"base/tiny/{path.name}")
    resp = http.post("/v1/base-models", headers=cluster.keys["admin"],
                     json={"name": "tiny", "source": f"s3://{cluster.bucket}/base/tiny"})
    assert resp.status_code == 201, resp.text
    resp = http.post("/v1/jobs", headers=cluster.keys["train"],
                     json={"adapter": "crashy", "base_model": "tiny", "config": CRASH_CONFIG})
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["id"]

    def checkpoint_in_store() -> int:
        job = http.get(f"/v1/jobs/{job_id}", headers=cluster.keys["train"]).json()
        listed = cluster.s3.list_objects_v2(Bucket=cluster.bucket, Prefix=f"prospect/checkpoints/{job_id}/")
        return bool(listed.get("KeyCount")) and job["progress"]["step"]

    wait_for(checkpoint_in_store, timeout=TIMEOUT_S, interval=0.05, what="a checkpoint in the bucket",
             on_timeout=cluster.logs)
    first.stop(signal.SIGKILL)  # worker 1, pool and all: nothing acknowledged, its disk is never read again
    killed = http.get(f"/v1/jobs/{job_id}", headers=cluster.keys["train"]).json()
    assert killed["status"] == "running" and 10 <= killed["progress"]["step"] < CRASH_CONFIG["max_steps"], killed

    second = cluster.start("worker-2", [str(BIN / "prospect"), "worker"])
    done = _wait_done(cluster, http, job_id)  # beat's reaper re-queued it; worker 2 resumed it
    resumed = done["resumed_from_step"]
    assert done["attempts"] == 2 and resumed % 10 == 0 and 10 <= resumed <= killed["progress"]["step"], done
    assert f"resumed from the checkpoint at step {resumed}" in second.log_path.read_text()
    metrics = http.get(f"/v1/jobs/{job_id}/metrics", headers=cluster.keys["train"]).json()["steps"]
    assert {m["attempt"] for m in metrics if m["step"] > resumed} == {2}  # nothing before it was retrained
    versions = http.get("/v1/adapters/crashy/versions", headers=cluster.keys["train"]).json()
    assert [v["job_id"] for v in versions] == [job_id]  # exactly one version for the job
    assert list((second.data_dir / "base-models").iterdir())  # worker 2 fetched the base model itself
    _load_downloaded(cluster, http, done, folder, tmp_path / "crashy")
