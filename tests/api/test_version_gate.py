"""Versions published over the gate (force_publish) are marked in the listing."""

from __future__ import annotations

from core.adapter_publish import gate_verdict, publish_adapter_version
from core.base_models import register_base_model
from core.db import session_factory, session_scope
from tests.api_client import make_api
from tests.artifacts import make_model_dir, make_staged

PASSED = {"gate": {"passed": True, "reasons": []}}
FORCED = {"gate": {"passed": None, "would_pass": False, "skipped": "force_publish", "reasons": ["margin"]}}


def test_listing_marks_versions_published_over_the_gate(settings, engine, tmp_path):
    with session_scope(engine) as s:
        base = register_base_model(s, settings=settings, name="base", source=str(make_model_dir(tmp_path / "m")))
    for n, figures in enumerate((PASSED, FORCED, {}), start=1):
        publish_adapter_version(session_factory(engine), settings=settings, adapter_name="bot",
                                staged_dir=make_staged(tmp_path / f"s{n}", payload=b"w%d" % n), job_id=None,
                                base_model=base, snapshot=None, hyperparameters={}, class_counts={},
                                class_weights={}, eval_metrics=figures)
    client, headers = make_api(settings)
    listed = client.get("/v1/adapters/bot/versions", headers=headers["read"]).json()
    assert [v["gate"] for v in listed] == ["passed", "skipped (would have been refused)", None]


def test_gate_verdict():
    assert gate_verdict({"eval_metrics": {"gate": {**FORCED["gate"], "would_pass": True}}}) == (
        "skipped (would have passed)")
    assert gate_verdict({"eval_metrics": None}) is None
