"""The first hour, through the pipeline on the tiny model: phases, class counts by set, the adapter's
README example, `prospect adapters try`, the base_model_name_or_path option."""

from __future__ import annotations

from core import jobs
from core.adapters import version_dir
from core.db import session_scope
from core.models import AdapterVersion, AlignmentJob, BaseModelRecord
from tests.worker.test_pipeline import _job, _state, stack, tiny_dir  # noqa: F401 - pytest fixtures
from worker.pipeline import run_job


def test_a_running_job_reports_its_phase_before_the_first_step(stack, monkeypatch):  # noqa: F811 - pytest injects the fixture
    settings, engine = stack["settings"], stack["engine"]
    seen, set_phase = [], jobs.set_phase

    def recording(session, *, job_id, token, phase, now=None):
        seen.append(phase)
        return set_phase(session, job_id=job_id, token=token, phase=phase, now=now)

    monkeypatch.setattr(jobs, "set_phase", recording)
    job_id = _job(engine)
    assert run_job(job_id, settings=settings).status == "succeeded"
    references = [p for p in seen if p.startswith("reference pass ")]
    assert seen == ["loading model", *references, "evaluating", "publishing"]
    assert references and references[-1] == "reference pass 28/28"  # the 14 + 14 training rows
    job = _state(engine, job_id)[0]
    assert job.phase is None  # finished: the status says it
    # Class counts named apart, on the job and in the manifest: 24 + 24 in the snapshot, 14 + 14 trained on,
    # 10 + 10 held out.
    expected = {"snapshot": {"desirable": 24, "undesirable": 24}, "train": {"desirable": 14, "undesirable": 14},
                "heldout": {"desirable": 10, "undesirable": 10}}
    assert jobs.counts_by_set(job) == expected
    with session_scope(engine) as s:
        assert s.get(AdapterVersion, job.adapter_version_id).manifest["counts"] == expected


def test_the_adapter_readme_generation_example_runs_as_written(stack, capsys):  # noqa: F811 - pytest injects the fixture
    settings, engine = stack["settings"], stack["engine"]
    job_id = _job(engine)
    assert run_job(job_id, settings=settings).status == "succeeded"
    with session_scope(engine) as s:
        version = s.get(AdapterVersion, s.get(AlignmentJob, job_id).adapter_version_id)
    folder = version_dir(settings, version)
    readme = (folder / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "apply_chat_template" in code and "/v1/chat/completions" in readme
    exec(code.replace('"path/to/bot-v1"', repr(str(folder))), {})  # noqa: S102 - our own README's example
    assert capsys.readouterr().out.strip() != ""  # it generated text with the adapter


def test_adapters_try_answers_with_and_without_the_adapter(stack, monkeypatch):  # noqa: F811 - pytest injects the fixture
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from typer.testing import CliRunner

    from alignment.data import render_prompt
    from alignment.generate import compare
    from core.cli import app
    from core.settings import get_settings

    settings, engine = stack["settings"], stack["engine"]
    job_id = _job(engine)
    assert run_job(job_id, settings=settings).status == "succeeded"
    with session_scope(engine) as s:
        version = s.get(AdapterVersion, s.get(AlignmentJob, job_id).adapter_version_id)
        base_dir = s.get(BaseModelRecord, version.base_model_id).path
    answers = compare(base_dir, version_dir(settings, version), "p3", max_new_tokens=8)
    # "base" is the base model itself: the same greedy answer as the plain model on the same ids.
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    ids = tokenizer(render_prompt("p3", tokenizer), add_special_tokens=False, return_tensors="pt")["input_ids"]
    if tokenizer.bos_token_id is not None and ids[0, 0] != tokenizer.bos_token_id and tokenizer(
            "a")["input_ids"][:1] == [tokenizer.bos_token_id]:
        ids = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), ids], dim=1)
    out = plain.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    assert answers["base"] == tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    monkeypatch.setenv("PROSPECT_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PROSPECT_DATABASE_URL", settings.sqlalchemy_url)
    get_settings.cache_clear()
    try:
        shown = CliRunner().invoke(app, ["adapters", "try", "bot", "latest", "p3", "--max-new-tokens", "8"])
    finally:
        get_settings.cache_clear()
    assert shown.exit_code == 0, shown.output
    assert "tiny (base)" in shown.stdout and "bot v1" in shown.stdout


def test_a_job_sets_the_adapters_base_model_name_or_path(stack):  # noqa: F811 - pytest injects the fixture
    import json

    settings, engine = stack["settings"], stack["engine"]
    job_id = _job(engine, options={"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    assert run_job(job_id, settings=settings).status == "succeeded"
    with session_scope(engine) as s:
        version = s.get(AdapterVersion, s.get(AlignmentJob, job_id).adapter_version_id)
    folder = version_dir(settings, version)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "set by the job's `base_model_name_or_path` option" in (folder / "README.md").read_text()


def test_a_refused_adapter_is_published_after_the_fact_with_a_reason(stack):  # noqa: F811 - pytest injects the fixture
    from fastapi.testclient import TestClient

    from api.main import create_app
    from core.refused import refused_dir
    from tests.worker.jobkit import api_keys

    settings, engine = stack["settings"], stack["engine"]
    refused = _job(engine, options={"gate_min_reward_margin": 1e6})
    assert run_job(refused, settings=settings).status == "failed"
    job = _state(engine, refused)[0]
    assert "options: collect more feedback" in job.error and f"--snapshot {job.snapshot_id}" in job.error
    assert (refused_dir(settings, refused) / "adapter" / "adapter_model.safetensors").is_file()

    client, keys = TestClient(create_app(settings)), api_keys(engine)
    url = f"/v1/jobs/{refused}/publish"
    assert client.post(url, json={}, headers=keys["train"]).status_code == 422  # the reason is required
    assert client.post(url, json={"reason": "x"}, headers=keys["ingest"]).status_code == 403
    done = client.post(url, json={"reason": "reviewed 20 answers by hand"}, headers=keys["train"])
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["adapter_version"]["version"] == 1 and body["status"] == "failed"  # the job's own outcome stays
    override = body["eval_metrics"]["gate"]["override"]
    assert override["reason"] == "reviewed 20 answers by hand" and override["by_key_id"] is not None
    with session_scope(engine) as s:
        version = s.get(AdapterVersion, s.get(AlignmentJob, refused).adapter_version_id)
    assert version.manifest["eval_metrics"]["gate"]["override"] == override
    assert version.manifest["eval_metrics"]["gate"]["skipped"] == "published over a refused gate"
    assert (version_dir(settings, version) / "adapter_model.safetensors").is_file()
    listed = client.get("/v1/adapters/bot/versions", headers=keys["train"]).json()
    assert listed[0]["gate"] == "published over a refused gate"
    assert not refused_dir(settings, refused).exists()
    again = client.post(url, json={"reason": "again"}, headers=keys["train"])
    assert again.status_code == 409 and "already published bot v1" in again.json()["detail"]

    passed = _job(engine)
    assert run_job(passed, settings=settings).status == "succeeded"
    other = client.post(f"/v1/jobs/{passed}/publish", json={"reason": "x"}, headers=keys["train"])
    assert other.status_code == 409
