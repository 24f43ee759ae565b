"""bench/train.py end to end on the tiny model: the JSON line has its figures and Prospect's loss agrees
with TRL's on the same adapter and batch. Needs the `bench` extra (TRL); skipped without it."""

import pytest

from tests.bench.benchkit import run_bench

pytest.importorskip("trl", reason="TRL is in the `bench` extra: pip install -e '.[bench]'")
pytest.importorskip("datasets", reason="datasets is in the `bench` extra")

FIELDS = ("prospect_tokens_per_s", "trl_tokens_per_s", "trl_default_tokens_per_s", "trl_precompute_tokens_per_s",
          "speedup", "prospect_peak_mb", "trl_peak_mb", "parity_loss_prospect", "parity_loss_trl",
          "parity_loss_abs_diff", "parity_kl_abs_diff", "prospect_final_loss", "trl_final_loss")


@pytest.mark.slow
def test_tiny_benchmark_prints_figures_and_parity_holds():
    out = run_bench("train.py", "--model", "tiny", "--steps", "2")
    for name in FIELDS:
        assert isinstance(out[name], float) and out[name] == out[name], name  # present, a number, not NaN
    assert out["tokens_match"] is True  # both trainers saw the same prompt + completion tokens
    # Prospect at its defaults (LoRA dropout on, on threads); TRL given the same LoRA.
    assert (out["lora_dropout"], out["lr"], out["lora_r"], out["lora_alpha"]) == (0.05, 1e-3, 16, 32)
    assert out["sequence_layout"] == "per_sequence" and out["sequence_workers"] >= 1
    assert out["trl_tokens_per_s"] == max(out["trl_default_tokens_per_s"], out["trl_precompute_tokens_per_s"])
    # After 2 steps the adapter is not the identity: the loss is not the step-0 value 0.5 ...
    assert out["parity_loss_prospect"] != 0.5
    # ... and both trainers compute the same loss and KL estimate with it.
    assert out["parity_loss_abs_diff"] <= 1e-4
    assert out["parity_kl_abs_diff"] <= 1e-4
