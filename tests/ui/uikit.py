"""Helpers for the dashboard tests: a finished job with its per-step metrics and gate, published versions."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

from core.adapters import publish_adapter_version
from core.base_models import register_base_model
from core.db import session_factory, session_scope
from core.models import AlignmentJob, JobMetric, utcnow
from core.settings import Settings
from tests.artifacts import make_model_dir, make_staged

STEPS = 12
GATE = {
    "passed": True, "reasons": [], "heldout_counts": {"desirable": 12, "undesirable": 11},
    "heldout_weights": {"desirable": 1.0, "undesirable": 1.09}, "method": "paired cluster bootstrap",
    "confidence": 0.95, "n_resamples": 2000, "seed": 42, "n_prompts": 12,
    "loss_improvement": {"estimate": 0.081, "interval": [0.042, 0.12]},
    "loss_improvement_desirable": {"estimate": 0.07, "interval": [0.01, 0.13]},
    "loss_improvement_undesirable": {"estimate": 0.09, "interval": [0.02, 0.15]},
    "reward_margin": {"estimate": 0.31, "interval": [0.12, 0.5]},
    "options": {"gate_min_loss_improvement": 0.01, "gate_min_reward_margin": 0.0},
}


def step_metrics(step: int) -> dict:
    return {"loss": 0.5 - 0.02 * step, "kl": 0.01 * step, "reward_desirable": 0.05 * step,
            "reward_undesirable": -0.04 * step, "learning_rate": 1e-3 * (1 - step / (STEPS + 1)),
            "tokens": 400, "tokens_per_s": 80.0}


def seed(settings: Settings, engine, tmp: Path, *, versions: int = 2) -> dict:
    """A base model, a succeeded job with STEPS metric rows and a passed gate, ``versions`` published versions
    of adapter ``chat`` (the first from that job), and ``champion`` on v1."""
    with session_scope(engine) as s:
        base = register_base_model(s, settings=settings, name="tiny-base", source=str(make_model_dir(tmp / "m")))
        job = AlignmentJob(adapter_name="chat", base_model_id=base.id, status="succeeded", progress_step=STEPS,
                           progress_total=STEPS, metrics=step_metrics(STEPS), n_desirable=40, n_undesirable=20,
                           class_weights={"desirable": 1.0, "undesirable": 1.5, "n_desirable": 40,
                                          "n_undesirable": 20, "ratio": 1.333,
                                          "reason": "undesirable up-weighted to bring the weighted ratio into "
                                                    "[1, 4/3]"},
                           eval_metrics={"gate": GATE, "adapter": {"loss": 0.41, "kl": 0.02},
                                         "reference": {"loss": 0.49, "kl": 0.0}},
                           started_at=utcnow() - timedelta(minutes=3), finished_at=utcnow(), attempts=1)
        s.add(job)
        s.flush()
        for step in range(1, STEPS + 1):
            s.add(JobMetric(job_id=job.id, step=step, metrics=step_metrics(step)))
        job_id = job.id
    for n in range(1, versions + 1):
        publish_adapter_version(
            session_factory(engine), settings=settings, adapter_name="chat",
            staged_dir=make_staged(tmp / f"staged{n}", payload=b"weights %d" % n), job_id=job_id if n == 1 else None,
            base_model=base, snapshot=None, hyperparameters={"beta": 0.1},
            class_counts={"desirable": 40, "undesirable": 20}, class_weights={},
            eval_metrics={"gate": GATE, "adapter": {"loss": 0.41}, "reference": {"loss": 0.49}})
    with session_scope(engine) as s:
        from core.adapter_aliases import move_alias

        move_alias(s, adapter_name="chat", alias="champion", version=1, moved_by="test")
    return {"job_id": job_id}


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def sign_in(client, authorization: dict) -> None:
    """Sign a TestClient in with the key of an Authorization header."""
    key = authorization["Authorization"].removeprefix("Bearer ")
    token = csrf_of(client.get("/ui/login").text)
    r = client.post("/ui/login", data={"csrf": token, "key": key, "next": "/ui/feedback"}, follow_redirects=False)
    assert r.status_code == 303, r.text
