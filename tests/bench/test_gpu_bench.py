"""bench/gpu.py, the device run's script, end to end on the tiny model on a CPU: every measurement
writes its JSON file with MFU by the stated formula, and the Prospect-only runs carry their options."""

import json
import subprocess
import sys

import pytest

from tests.bench.benchkit import ROOT

pytest.importorskip("trl", reason="TRL is in the `bench` extra: pip install -e '.[bench]'")
pytest.importorskip("datasets", reason="datasets is in the `bench` extra")


@pytest.mark.slow
def test_the_gpu_script_runs_every_measurement_on_the_tiny_model(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--out", str(out), "--models", "tiny",
                           "--work", str(tmp_path / "models"), "--peak-tflops", "100"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["baseline-tiny.json", "checkpointing-tiny.json", "environment.json", "nf4-tiny.json",
                     "train-tiny.json"]
    results = {name: json.loads((out / name).read_text()) for name in files}
    assert results["environment.json"]["trl"] and results["environment.json"]["torch"]
    train = results["train-tiny.json"]
    assert "error" not in train, train
    assert train["parity_loss_abs_diff"] <= 1e-4 and train["tokens_match"] is True
    for key in ("prospect", "trl", "trl_default", "trl_precompute"):
        expected = 6 * train["parameters"] * train[f"{key}_tokens_per_s"] / 100e12
        assert train[f"{key}_mfu"] == pytest.approx(expected, rel=1e-12)
    checkpointing = results["checkpointing-tiny.json"]
    assert checkpointing["overrides"] == {"gradient_checkpointing": True}
    assert checkpointing["sequence_layout"] == "batched"  # checkpointing takes the batched layout
    assert results["baseline-tiny.json"]["overrides"] == {}
    nf4 = results["nf4-tiny.json"]
    if "error" not in nf4:  # bitsandbytes installed (the dev extra has it)
        assert nf4["overrides"] == {"quantization": "nf4"} and nf4["prospect_final_loss"] > 0
