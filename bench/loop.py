"""Benchmark: two jobs back to back in one worker process, "start a job" to "version published".

A fresh embedded database (SQLite) in a temporary data folder, feedback
posted through the API, the bundled SmolLM2-135M-Instruct registered (converted
once into ``var/models/``, shared with ``bench/train.py``), then two jobs on it
run one after the other by ``worker.pipeline.run_job`` in this process, as a
Celery worker child runs them. Each job takes its own snapshot and trains a few
steps (``--steps``), force-published so both reach ``publish`` whatever the gate
says. The second job finds the base model warm (``worker/warm.py``,
``PROSPECT_WARM_MODELS``): the difference between the two is what the cache saves.

Prints ONE JSON line: each job's per-phase seconds (the job record's ``timings``),
``startup_s`` (snapshot + split + load: the time before the reference pass starts)
and the ratios of both's ``load`` and ``startup_s``.

    .venv/bin/python bench/loop.py [--steps 2] [--warm-models 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench.loop")
STARTUP = ("snapshot", "split", "load")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warm-models", type=int, default=1, help="PROSPECT_WARM_MODELS for the run (0: cold)")
    parser.add_argument("--model-dir", default=str(ROOT / "var/models/smollm2-135m-instruct"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    from fastapi.testclient import TestClient

    from alignment.bundled import convert_bundled
    from api.main import create_app
    from core import jobs
    from core.base_models import register_base_model
    from core.db import get_engine, session_scope
    from core.migrate import upgrade
    from core.models import AlignmentJob
    from core.settings import Settings
    from tests.worker.jobkit import api_keys, feedback_events, post_feedback
    from worker.pipeline import run_job

    folder = convert_bundled(args.model_dir)
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'prospect.db'}"
        upgrade(url)
        settings = Settings(data_dir=Path(tmp) / "var", database_url=url, register_bundled_model=False,
                            base_model_dirs=[folder.parent], warm_models=args.warm_models,
                            broker_url=f"sqla+sqlite:///{Path(tmp) / 'broker.db'}")
        settings.ensure_dirs()
        engine = get_engine(settings)
        post_feedback(TestClient(create_app(settings)), api_keys(engine)["ingest"], feedback_events(24))
        with session_scope(engine) as s:
            register_base_model(s, settings=settings, name="smollm2", source=str(folder), allow_download=False)
        config = {"max_steps": args.steps, "batch_size": 4, "max_length": 128}
        runs = []
        for adapter in ("first", "second"):
            with session_scope(engine) as s:
                job_id = jobs.create_job(s, adapter_name=adapter, base_model_name="smollm2", config=config,
                                         force_publish=True).id
            started = time.perf_counter()
            outcome = run_job(job_id, settings=settings, engine=engine)
            wall = time.perf_counter() - started
            with session_scope(engine) as s:
                job = s.get(AlignmentJob, job_id)
                timings, status, error = dict(job.timings or {}), job.status, job.error
            if outcome.status != "succeeded":
                raise SystemExit(f"job {adapter} {status}: {error}")
            runs.append({**{k: round(v, 3) for k, v in timings.items()}, "wall_s": round(wall, 3),
                         "startup_s": round(sum(timings[k] for k in STARTUP), 3)})
        engine.dispose()

    first, second = runs
    print(json.dumps({
        "model": "SmolLM2-135M-Instruct", "steps": args.steps, "warm_models": args.warm_models,
        "cpus": os.cpu_count(), "first": first, "second": second,
        "load_ratio": first["load"] / max(second["load"], 1e-9),
        "startup_ratio": first["startup_s"] / max(second["startup_s"], 1e-9),
    }))


if __name__ == "__main__":
    main()
