"""bench/distributed.py on the tiny model: one JSON line with both layouts' figures."""

import pytest

from tests.bench.benchkit import run_bench


@pytest.mark.slow
def test_distributed_benchmark_prints_one_line_of_figures():
    out = run_bench("distributed.py", "--model", "tiny", "--steps", "1", timeout_s=600)
    assert out["processes"] == 2 and out["global_batch"] == 8 and out["tokens"] > 0
    for name in ("tokens_per_s_1", "tokens_per_s_2", "speedup", "wall_s_1", "wall_s_2"):
        assert isinstance(out[name], float) and out[name] > 0, name
    assert abs(out["final_loss_1"] - out["final_loss_2"]) < 0.05  # same data; only the KL pairs differ
