"""bench/dropout.py on the tiny model: one JSON line with both mask sources timed on the same microbatch."""

import pytest

from tests.bench.benchkit import run_bench


@pytest.mark.slow
def test_dropout_bench_times_both_mask_sources():
    out = run_bench("dropout.py", "--model", "tiny", "--rounds", "1")
    assert out["lora_dropout"] == 0.05 and out["examples"] == 8 and out["tokens"] > 0
    for name in ("old_step_s_min", "new_step_s_min", "old_step_s_median", "new_step_s_median",
                 "step_speedup_min", "old_mask_ms", "new_mask_ms", "no_dropout_step_s_min"):
        assert isinstance(out[name], float) and out[name] > 0, name
    assert out["step_speedup_min"] == pytest.approx(out["old_step_s_min"] / out["new_step_s_min"])
