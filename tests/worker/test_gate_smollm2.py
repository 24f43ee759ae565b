"""The publish gate on the bundled SmolLM2-135M-Instruct, through the whole job pipeline.

Feedback is generated here: arithmetic questions ("What is 17 + 25?"), one
answer per question, right or wrong. A diverged run (learning rate 0.1) must
be refused whichever class dominates the held-out rows, an adapter trained on
labels unrelated to the answers must be refused, and a learnable task (right
answers up, wrong answers down) must publish with the default gate options.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from core import jobs
from core.base_models import register_base_model
from core.db import session_scope
from core.models import AlignmentJob
from tests.worker.jobkit import api_keys, post_feedback
from worker.pipeline import run_job

pytestmark = pytest.mark.slow

SMALL = {"batch_size": 8, "max_length": 64}  # every other KTOConfig field at its default


@pytest.fixture(scope="module")
def bundled_dir(tmp_path_factory) -> Path:
    from alignment.bundled import convert_bundled

    return convert_bundled(tmp_path_factory.mktemp("bundled") / "smollm2")


def arithmetic_events(n: int, *, up_share: float, seed: int, random_labels: bool = False) -> list[dict]:
    """``n`` distinct questions, one answer each; a share ``up_share`` of them thumbs-up.

    Thumbs-up answers are right and thumbs-down answers wrong, unless
    ``random_labels``: then whether an answer is right is a coin flip of its own.
    """
    rng = random.Random(seed)
    pairs = rng.sample([(a, b) for a in range(11, 80) for b in range(11, 80)], n)
    events = []
    for i, (a, b) in enumerate(pairs):
        up = i < round(up_share * n)
        right = rng.random() < 0.5 if random_labels else up
        answer = a + b if right else a + b + rng.choice([-10, -3, -1, 1, 2, 9])
        events.append({"event_id": f"arith-{seed}-{i}", "prompt": f"What is {a} + {b}?",
                       "response": f"{a} + {b} = {answer}.", "label": "up" if up else "down"})
    return events


@pytest.fixture
def smol(settings, engine, bundled_dir, tmp_path):
    if not settings.sqlalchemy_url.startswith("sqlite"):
        pytest.skip("the gate's statistics do not depend on the database: SQLite only, to keep CI short")
    model_dir = shutil.copytree(bundled_dir, tmp_path / "smollm2")
    with session_scope(engine) as s:
        register_base_model(s, settings=settings, name="smol", source=str(model_dir))
    client = TestClient(create_app(settings))
    keys = api_keys(engine)

    def train(events: list[dict], config: dict) -> AlignmentJob:
        post_feedback(client, keys["ingest"], events)
        with session_scope(engine) as s:
            job_id = jobs.create_job(s, adapter_name="arith", base_model_name="smol", config=config).id
        run_job(job_id, settings=settings)
        with session_scope(engine) as s:
            return s.get(AlignmentJob, job_id)

    return train


def _gate(job: AlignmentJob) -> dict:
    return job.eval_metrics["gate"]


@pytest.mark.parametrize("up_share", [0.3, 0.7])
def test_a_diverged_run_is_refused_whatever_the_class_ratio(smol, up_share):
    job = smol(arithmetic_events(100, up_share=up_share, seed=1), {**SMALL, "learning_rate": 0.1, "max_steps": 8})
    assert job.status == "failed" and job.error.startswith("the gate refused to publish"), job.error
    gate = _gate(job)
    assert gate["passed"] is False
    n_up = round(up_share * 100)
    assert gate["heldout_counts"] == {"desirable": max(10, round(0.2 * n_up)),
                                      "undesirable": max(10, round(0.2 * (100 - n_up)))}


def test_an_adapter_trained_on_random_labels_is_refused(smol):
    job = smol(arithmetic_events(120, up_share=0.5, seed=2, random_labels=True), {**SMALL, "num_epochs": 2})
    assert job.status == "failed" and job.error.startswith("the gate refused to publish"), job.error
    lo = _gate(job)["reward_margin"]["interval"][0]
    assert lo <= 0 or _gate(job)["loss_improvement"]["interval"][0] <= 0.01


def test_a_learnable_task_publishes_with_the_default_gate(smol):
    job = smol(arithmetic_events(120, up_share=0.5, seed=3), SMALL)
    assert job.status == "succeeded", job.error
    gate = _gate(job)
    assert gate["passed"] is True and gate["options"] == jobs.JobOptions().to_dict()
    assert gate["loss_improvement"]["interval"][0] > 0.01 and gate["reward_margin"]["interval"][0] > 0
