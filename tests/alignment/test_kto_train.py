"""train_kto / evaluate_kto on the tiny random Llama."""

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignment.config import KTOConfig
from alignment.data import Example, collate, tokenize_rows
from alignment.evaluate import evaluate_kto
from alignment.logps import sequence_logps
from alignment.train import (
    CHECKPOINT_FILE,
    CheckpointMismatch,
    Plan,
    TrainingCancelled,
    _fingerprint,
    _runtime,
    train_kto,
)

FAST = {"batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0.0, "max_length": 64, "device": "cpu"}


def losses(result):
    return [h["loss"] for h in result.history]


def test_training_lowers_the_loss_and_touches_only_lora(tiny_model, tiny_tokenizer, rows):
    base_before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    config = KTOConfig(num_epochs=4, **FAST)
    result = train_kto(tiny_model, tiny_tokenizer, rows, config)
    model = result.model

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert result.target_modules == ["k_proj", "o_proj", "q_proj", "v_proj"]
    base_after = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
                  for n, p in model.named_parameters() if "lora_" not in n}
    assert base_after.keys() == base_before.keys()
    assert all(torch.equal(base_before[n], base_after[n]) for n in base_before)
    assert any(torch.count_nonzero(p) for n, p in model.named_parameters() if "lora_B" in n)

    # Same rows, no adapter: every log-ratio is 0, so the loss is exactly 0.5 (weights 1, 1).
    with model.disable_adapter():
        before = evaluate_kto(model, tiny_tokenizer, rows, config)
    after = evaluate_kto(model, tiny_tokenizer, rows, config)
    assert before["loss"] == pytest.approx(0.5) and before["reward_margin"] == pytest.approx(0.0)
    assert after["loss"] < 0.4
    assert after["reward_margin"] > 0 and after["accuracy"] > 0.75
    first_epoch, last_epoch = losses(result)[:4], losses(result)[-4:]
    assert sum(last_epoch) < sum(first_epoch)


def test_metrics_and_progress_callback(tiny_model, tiny_tokenizer, rows):
    calls, phases = [], []
    result = train_kto(tiny_model, tiny_tokenizer, rows, KTOConfig(max_steps=3, grad_accumulation=2, **FAST),
                       on_progress=lambda step, total, m: calls.append((step, total, m)), on_phase=phases.append)
    assert [(s, t) for s, t, _ in calls] == [(1, 3), (2, 3), (3, 3)]
    # Before the first step: the reference pass, by rows (4 microbatches of 4 of the 16 rows).
    assert phases == [f"reference pass {n}/16" for n in (4, 8, 12, 16)]
    keys = {"loss", "kl", "reward_desirable", "reward_undesirable", "reward_margin", "logps_desirable",
            "logps_undesirable", "grad_norm", "learning_rate", "tokens_per_s", "step", "epoch", "tokens",
            "kl_estimate"}
    assert keys <= calls[0][2].keys()
    assert all(m["kl"] >= max(0.0, m["kl_estimate"]) - 1e-9 for *_, m in calls)  # the mean of clamped z0s
    assert result.history == [m for _, _, m in calls]
    # Step 1 at a fresh adapter: policy == reference, so loss 0.5 and kl 0.
    assert calls[0][2]["loss"] == pytest.approx(0.5) and calls[0][2]["kl"] == 0.0
    # Two microbatches of 4 per step, 16 rows: 2 steps per epoch.
    assert calls[-1][2]["epoch"] == pytest.approx(1.5)
    assert result.metrics["steps"] == 3 and result.metrics["total_tokens"] == sum(m["tokens"] for *_, m in calls)


def test_precomputed_reference_equals_computing_it_every_step(tiny_dir, tiny_tokenizer, rows):
    runs = []
    for precompute in (True, False):
        model = AutoModelForCausalLM.from_pretrained(tiny_dir)
        runs.append(losses(train_kto(model, tiny_tokenizer, rows,
                                     KTOConfig(max_steps=6, precompute_reference=precompute, **FAST))))
    assert runs[0] == pytest.approx(runs[1], abs=1e-6)


def test_kl_mode_zero_reports_no_kl(tiny_model, tiny_tokenizer, rows):
    result = train_kto(tiny_model, tiny_tokenizer, rows, KTOConfig(max_steps=3, kl_mode="zero", **FAST))
    assert all(h["kl"] == 0.0 for h in result.history)
    assert losses(result)[-1] != 0.5


def test_saved_adapter_reloads_with_the_same_log_probs(tiny_model, tiny_dir, tiny_tokenizer, rows, tmp_path):
    from peft import PeftModel

    result = train_kto(tiny_model, tiny_tokenizer, rows, KTOConfig(max_steps=4, **FAST))
    result.model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), tmp_path / "adapter")
    reloaded.eval()
    examples = tokenize_rows(rows[:6], tiny_tokenizer)
    batch = collate(examples, list(range(6)), max_length=64, prompt_budget=32, pad_id=0)
    with torch.no_grad():
        trained = sequence_logps(result.model, batch.matched)
        again = sequence_logps(reloaded, batch.matched)
        with reloaded.disable_adapter():
            base = sequence_logps(reloaded, batch.matched)
    assert torch.allclose(trained, again, atol=1e-6, rtol=0)
    assert not torch.allclose(trained, base, atol=1e-3)


def test_resume_from_checkpoint_reproduces_the_uninterrupted_losses(tiny_dir, tiny_tokenizer, rows, tmp_path):
    config = KTOConfig(max_steps=8, checkpoint_every=3, **FAST)  # lora_dropout 0.05: RNG state matters
    full = train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, config)

    ckpt = tmp_path / "ckpt"
    done = []
    with pytest.raises(TrainingCancelled) as cancelled:
        train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, config,
                  on_progress=lambda step, total, m: done.append(step), should_stop=lambda: len(done) >= 5,
                  checkpoint_dir=ckpt)
    assert cancelled.value.step == 5 and (ckpt / CHECKPOINT_FILE).is_file()  # last checkpoint: step 3

    resumed_steps = []
    resumed = train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, config,
                        on_progress=lambda step, total, m: resumed_steps.append(step),
                        checkpoint_dir=ckpt, resume=True)
    assert resumed_steps == [4, 5, 6, 7, 8]
    assert losses(resumed) == losses(full)  # exactly, not approximately
    assert [h["grad_norm"] for h in resumed.history] == [h["grad_norm"] for h in full.history]


def test_resume_refuses_a_checkpoint_of_other_rows(tiny_dir, tiny_tokenizer, rows, tmp_path):
    config = KTOConfig(max_steps=2, checkpoint_every=1, **FAST)
    train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, config, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="other rows or hyper-parameters"):
        train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows[:12], config,
                  checkpoint_dir=tmp_path, resume=True)


def test_cancel_before_the_first_step_raises(tiny_model, tiny_tokenizer, rows):
    with pytest.raises(TrainingCancelled) as cancelled:
        train_kto(tiny_model, tiny_tokenizer, rows, KTOConfig(max_steps=3, **FAST), should_stop=lambda: True)
    assert cancelled.value.step == 0


def test_a_single_class_needs_the_explicit_mode(tiny_model, tiny_tokenizer, rows):
    from alignment.weights import ClassWeightError

    ups = [r for r in rows if r["label"]]
    with pytest.raises(ClassWeightError, match="no undesirable"):
        train_kto(tiny_model, tiny_tokenizer, ups, KTOConfig(max_steps=1, **FAST))
    result = train_kto(tiny_model, tiny_tokenizer, ups, KTOConfig(max_steps=2, allow_single_class=True, **FAST))
    assert result.weights.reason.startswith("single-class") and len(result.history) == 2


def test_evaluation_reports_accuracy_and_length_drift(tiny_model, tiny_tokenizer, rows):
    result = train_kto(tiny_model, tiny_tokenizer, rows, KTOConfig(max_steps=2, **FAST))
    metrics = evaluate_kto(result.model, tiny_tokenizer, rows[:6], result.config, length_sample=2, max_new_tokens=5)
    assert metrics["n"] == 6 and metrics["n_desirable"] == 3
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert 1 <= metrics["length_before"] <= 5 and 1 <= metrics["length_after"] <= 5
    assert result.model.training is False


def test_resume_refuses_a_checkpoint_of_another_dtype_or_device(tiny_dir, tiny_tokenizer, rows, tmp_path):
    config = KTOConfig(max_steps=2, checkpoint_every=1, dtype="float32", **FAST)
    train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, config, checkpoint_dir=tmp_path)
    # The same rows and hyper-parameters in another dtype: its moments and reference log-probs do not carry over.
    with pytest.raises(CheckpointMismatch, match="written on cpu in float32, this run is on cpu in bfloat16"):
        train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows,
                  dataclasses.replace(config, dtype="bfloat16"), checkpoint_dir=tmp_path, resume=True)
    examples = tokenize_rows(rows, tiny_tokenizer)
    cpu = _fingerprint(examples, config, _runtime(torch.device("cpu"), torch.float32))
    assert cpu != _fingerprint(examples, config, _runtime(torch.device("cuda", 0), torch.bfloat16))
    assert cpu != _fingerprint(examples, config, _runtime(torch.device("cpu"), torch.bfloat16))
    assert _fingerprint(examples, config, _runtime(torch.device("cuda", 0), torch.bfloat16)) == _fingerprint(
        examples, config, _runtime(torch.device("cuda", 1), torch.bfloat16))


def test_checkpoint_temp_files_are_per_process_and_attempt(tiny_dir, tiny_tokenizer, rows, tmp_path, monkeypatch):
    # Another holder of the same job is halfway through writing its checkpoint (under the old shared name).
    other = tmp_path / f".{CHECKPOINT_FILE}.tmp"
    other.write_bytes(b"another worker's half-written checkpoint")
    written = []
    save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (written.append(Path(f)), save(obj, f, *a, **k)))
    config = KTOConfig(max_steps=2, checkpoint_every=1, **FAST)
    train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, config, checkpoint_dir=tmp_path)
    assert len(written) == 2 and len(set(written)) == 2
    assert all(f".{os.getpid()}." in p.name and p.parent == tmp_path for p in written)
    assert other.read_bytes() == b"another worker's half-written checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, CHECKPOINT_FILE])

    # A write that fails leaves the last good checkpoint and no temporary file of its own.
    def broken(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows,
                  dataclasses.replace(config, max_steps=3), checkpoint_dir=tmp_path / "again")
    assert [p.name for p in (tmp_path / "again").iterdir()] == []


def test_microbatches_hold_both_classes_at_an_imbalance():
    examples = [Example((), (i, i + 1), (7,) * (1 + i % 5), i % 8 == 0) for i in range(80)]  # 1:7
    stratified = Plan(examples, KTOConfig(batch_size=8))
    assert all(sum(examples[i].label for i in b) == 1 for b in stratified.batches)
    plain = Plan(examples, KTOConfig(batch_size=8, stratify=False))
    assert any(not any(examples[i].label for i in b) for b in plain.batches)  # as the shuffle falls
    assert sorted(i for b in stratified.batches for i in b) == list(range(80))
