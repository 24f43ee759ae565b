"""A worker keeps a verified base model loaded between jobs (worker.warm) without changing any result."""

from __future__ import annotations

import os

import pytest
import torch
import transformers
from safetensors.torch import load_file

from core.adapters import version_dir
from core.base_models import register_base_model
from core.db import session_scope
from core.models import AdapterVersion
from tests.tiny import build_tiny_model_dir
from tests.worker import test_pipeline
from tests.worker.jobkit import TINY_CONFIG
from tests.worker.test_pipeline import _job, _state
from worker import warm
from worker.pipeline import run_job

stack, tiny_dir = test_pipeline.stack, test_pipeline.tiny_dir  # the same fixtures as the pipeline's tests


@pytest.fixture
def counted(monkeypatch):
    """How often base models are verified (hashed) and loaded from disk; starts from an empty cache."""
    warm.process_cache(1).clear()
    calls = {"verify": 0, "load": 0}
    verify, load = warm.verify_base_model, transformers.AutoModelForCausalLM.from_pretrained

    def counting_verify(record, folder=None):
        calls["verify"] += 1
        return verify(record, folder)

    def counting_load(*args, **kwargs):
        calls["load"] += 1
        return load(*args, **kwargs)

    monkeypatch.setattr(warm, "verify_base_model", counting_verify)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", counting_load)
    yield calls
    warm.process_cache(1).clear()


def _adapter(engine, settings, job_id) -> dict[str, torch.Tensor]:
    job, _, _ = _state(engine, job_id)
    with session_scope(engine) as s:
        version = s.get(AdapterVersion, job.adapter_version_id)
        folder = version_dir(settings, version)
    return load_file(folder / "adapter_model.safetensors")


def test_second_job_is_warm_and_trains_the_same_bits_as_a_cold_worker(stack, counted):
    settings, engine = stack["settings"], stack["engine"]
    config = {**TINY_CONFIG, "lora_dropout": 0.05}  # the default dropout: its masks must repeat too
    # The first job trains another adapter shape on more modules: nothing of it may reach the next job.
    first = _job(engine, adapter="first", force_publish=True,
                 config={**config, "lora_r": 8, "lora_target_modules": ["q_proj", "v_proj", "up_proj"]})
    assert run_job(first, settings=settings).status == "succeeded"
    snapshot_id = _state(engine, first)[0].snapshot_id
    assert counted == {"verify": 1, "load": 1}

    warm_job = _job(engine, adapter="warm", config=config, snapshot_id=snapshot_id, force_publish=True)
    assert run_job(warm_job, settings=settings).status == "succeeded"
    assert counted == {"verify": 1, "load": 1}  # neither hashed nor loaded again

    # What the cache keeps is still exactly the model on disk (no LoRA layers, no other dtype or values).
    (kept,) = warm.process_cache(1)._entries.values()
    pristine, on_disk = kept.model.state_dict(), warm.load_pretrained(str(stack["model_dir"]))[0].state_dict()
    assert pristine.keys() == on_disk.keys()
    assert all(torch.equal(pristine[k], on_disk[k]) and pristine[k].dtype == on_disk[k].dtype for k in on_disk)
    counted["load"] -= 1

    warm.process_cache(1).clear()  # a cold worker
    cold_job = _job(engine, adapter="cold", config=config, snapshot_id=snapshot_id, force_publish=True)
    assert run_job(cold_job, settings=settings).status == "succeeded"
    assert counted == {"verify": 2, "load": 2}

    warm_adapter, cold_adapter = _adapter(engine, settings, warm_job), _adapter(engine, settings, cold_job)
    assert warm_adapter.keys() == cold_adapter.keys() and warm_adapter
    for name, tensor in warm_adapter.items():
        assert torch.equal(tensor, cold_adapter[name]), name
    warm_figures, cold_figures = _state(engine, warm_job)[0].eval_metrics, _state(engine, cold_job)[0].eval_metrics
    assert warm_figures["adapter"] == cold_figures["adapter"]
    untimed = [{k: v for k, v in f["train"].items() if not k.endswith(("_s", "per_s"))} for f in (warm_figures,
                                                                                            cold_figures)]
    assert untimed[0] == untimed[1] and "loss" in untimed[0]


def test_a_base_changed_on_disk_is_not_served_from_the_cache(stack, counted):
    settings, engine = stack["settings"], stack["engine"]
    assert run_job(_job(engine, adapter="first"), settings=settings).status == "succeeded"
    # Same size, and the modification time set back: only the content (and the ctime) differ.
    weights = next(stack["model_dir"].glob("*.safetensors"))
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    job_id = _job(engine, adapter="second")
    assert run_job(job_id, settings=settings).status == "failed"
    assert "base model 'tiny' changed on disk" in _state(engine, job_id)[0].error
    assert counted["verify"] == 2 and len(warm.process_cache(1)) == 0


# ---------------------------------------------------------------- the cache alone


@pytest.fixture
def bases(settings, engine, tmp_path):
    records = []
    with session_scope(engine) as s:
        for name in ("a", "b", "c"):
            folder = build_tiny_model_dir(tmp_path / name)
            records.append(register_base_model(s, settings=settings, name=name, source=str(folder)))
        s.expunge_all()
    return records


def _loader(log: list):
    def load(folder):
        log.append(os.path.basename(folder))
        return torch.nn.Linear(2, 2), {"tokenizer": folder}
    return load


def test_lru_keeps_at_most_the_setting_and_hands_out_copies(bases):
    a, b, c = bases
    loads: list[str] = []
    cache = warm.BaseModelCache(2)
    model, _, was_warm = cache.get(a, load=_loader(loads))
    assert not was_warm
    with torch.no_grad():
        model.weight.add_(1.0)  # what a job does to its copy stays in the job
    again, _, was_warm = cache.get(a, load=_loader(loads))
    assert was_warm and again is not model and not torch.equal(again.weight, model.weight)
    cache.get(b, load=_loader(loads))
    cache.get(a, load=_loader(loads))  # a is now the most recent
    cache.get(c, load=_loader(loads))  # evicts b, the least recently used
    assert len(cache) == 2
    assert cache.get(a, load=_loader(loads))[2] and not cache.get(b, load=_loader(loads))[2]
    assert loads == ["a", "b", "c", "b"]


def test_zero_keeps_none(bases):
    loads: list[str] = []
    cache = warm.BaseModelCache(0)
    assert [cache.get(bases[0], load=_loader(loads))[2] for _ in range(2)] == [False, False]
    assert len(cache) == 0 and loads == ["a", "a"]


def test_a_new_pin_or_dtype_is_another_entry(bases):
    a = bases[0]
    loads: list[str] = []
    cache = warm.BaseModelCache(3)
    cache.get(a, load=_loader(loads))
    assert not cache.get(a, dtype="bfloat16", load=_loader(loads))[2]
    a.sha256 = "0" * 64  # re-registered under another pin
    a.files = {**a.files}
    assert warm.BaseModelCache.key(a, "float32") not in cache._entries
