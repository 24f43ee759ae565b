"""bench/head.py on a small shape: both ways agree, and the chunked one keeps only the (N, H) gradient."""

from tests.bench.benchkit import run_bench


def test_head_benchmark_reports_agreement_and_what_each_way_keeps():
    out = run_bench("head.py", "--tokens", "30", "--hidden", "16", "--vocab", "500", "--rounds", "2")
    assert out["kept_elements_chunked"] == 30 * 16
    assert out["kept_elements_autograd"] >= 30 * 500  # at least the (N, V) logits
    assert out["max_abs_value_diff"] <= 1e-5 and out["max_abs_grad_diff"] <= 1e-5
    assert out["autograd_s"] > 0 and out["chunked_s"] > 0
