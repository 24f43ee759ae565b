"""Data-parallel KTO (alignment.distributed): 2 processes x batch 4 under torchrun (gloo, CPU) train the
same adapter as one process computing the global batch of 8; cancelling stops every rank."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignment.config import KTOConfig
from alignment.distributed import ShardError, shard_sizes, shards
from alignment.train import CheckpointMismatch, Plan, TrainingCancelled, train_kto
from tests.processes import alive
from tests.tiny import tiny_rows
from worker.train_launch import train_in_processes

# Dropout on (seeded per global example index), a cosine schedule, clipping: everything a step does.
DP = {"batch_size": 4, "processes": 2, "learning_rate": 1e-2, "warmup_ratio": 0.0, "max_length": 64,
      "device": "cpu", "max_steps": 3, "lora_dropout": 0.1}


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n.replace(".default", ""): p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def test_shards_are_contiguous_and_even():
    assert shard_sizes(8, 2) == [4, 4] and shard_sizes(9, 2) == [5, 4] and shard_sizes(10, 4) == [3, 3, 2, 2]
    assert shards([7, 3, 5, 1, 2], 2) == [[7, 3, 5], [1, 2]]


def test_plan_is_the_global_batch_and_a_small_last_one_joins(tiny_tokenizer):
    from alignment.data import tokenize_rows

    examples = tokenize_rows(tiny_rows(10), tiny_tokenizer)
    dp = Plan(examples, KTOConfig(**DP))
    one = Plan(examples, KTOConfig(**{**DP, "batch_size": 8, "processes": 1}))
    # 10 rows, global batch 8: a last microbatch of 2 would give each process 1; it joins the first.
    assert [len(b) for b in dp.batches] == [10]
    assert [len(b) for b in one.batches] == [8, 2]


def test_too_few_rows_per_process_is_refused_with_the_fix(tiny_model, tiny_tokenizer):
    with pytest.raises(ShardError, match=r"processes=4 .* use processes <= 1, or train on more rows"):
        train_kto(tiny_model, tiny_tokenizer, tiny_rows(3), KTOConfig(**{**DP, "processes": 4}))


def test_two_shards_in_one_process_differ_from_one_shard_only_by_the_kl_pairs(tiny_dir, tiny_tokenizer):
    """Same microbatches either way; the loss differs because z0 uses other (shard-local) pairs.
    With z0 = 0 (kl_mode zero) nothing differs at all: the global loss is the same mean."""
    rows = tiny_rows(24)
    zero = {**DP, "kl_mode": "zero"}
    a = train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, KTOConfig(**zero))
    b = train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows,
                  KTOConfig(**{**zero, "batch_size": 8, "processes": 1}))
    assert [h["loss"] for h in a.history] == pytest.approx([h["loss"] for h in b.history], abs=1e-6)
    assert [h["grad_norm"] for h in a.history] == pytest.approx([h["grad_norm"] for h in b.history], rel=1e-5)
    # The gradients are summed in another order. Adam's update is about lr * sign(g) where g is near zero,
    # so a rounding-level difference there can move a weight by a good share of lr (1e-2): compare at 1e-4.
    for name, value in lora_weights(a.model).items():
        torch.testing.assert_close(value, lora_weights(b.model)[name], atol=1e-4, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["per_sequence", "batched"])
def test_two_processes_match_one_process_on_the_global_batch(tiny_dir, tiny_tokenizer, tmp_path, layout):
    rows = tiny_rows(24)
    config = KTOConfig(**DP, sequence_layout=layout)
    one = train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, config)
    phases = []
    two = train_in_processes(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, config,
                             base_path=str(tiny_dir), work=tmp_path / "dp", checkpoint_dir=None,
                             should_stop=lambda: False, on_phase=phases.append)
    assert len(two.history) == 3 and two.metrics["processes"] == 2
    for mine, theirs in zip(one.history, two.history, strict=True):
        for key in ("loss", "kl", "kl_estimate", "reward_margin", "grad_norm", "tokens"):
            assert theirs[key] == pytest.approx(mine[key], rel=1e-5, abs=1e-6), key
    assert any(p.startswith("reference pass") for p in phases)
    expected = lora_weights(one.model)
    got = lora_weights(two.model)
    assert got.keys() == expected.keys() and expected
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in got.items() if "lora_B" in k)  # it trained


@pytest.mark.slow
def test_cancel_stops_every_rank_and_resume_continues_with_the_same_n(tiny_dir, tiny_tokenizer, tmp_path):
    rows = tiny_rows(24)
    config = KTOConfig(**{**DP, "max_steps": 400, "checkpoint_every": 1})
    work, ckpt = tmp_path / "dp", tmp_path / "ckpt"
    steps: list[int] = []
    seen: dict[str, list[int]] = {}

    def should_stop() -> bool:
        pids = [int(f.read_text()) for f in (work / "ranks").glob("*.pid")] if (work / "ranks").exists() else []
        if len(pids) == 2 and len(steps) >= 2:
            seen["ranks"] = pids
            return True
        return False

    with pytest.raises(TrainingCancelled):
        train_in_processes(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, config,
                           base_path=str(tiny_dir), work=work, checkpoint_dir=ckpt, should_stop=should_stop,
                           on_progress=lambda step, total, metrics: steps.append(step))
    assert len(seen["ranks"]) == 2
    deadline = time.monotonic() + 10
    while any(alive(p) for p in seen["ranks"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in seen["ranks"]), "a rank outlived the cancel"

    # Resume on 2 processes: the checkpoint (rank 0's) continues where the cancelled run stopped.
    saved = torch.load(ckpt / "checkpoint.pt", weights_only=True)["step"]
    assert saved >= 2
    short = KTOConfig(**{**DP, "max_steps": 400, "checkpoint_every": 1})
    resumed: dict[int, float] = {}
    stop_after = saved + 2
    with pytest.raises(TrainingCancelled):
        train_in_processes(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, short,
                           base_path=str(tiny_dir), work=work, checkpoint_dir=ckpt,
                           should_stop=lambda: max(resumed, default=0) >= stop_after,
                           on_progress=lambda step, total, metrics: resumed.update({step: metrics["loss"]}))
    assert min(resumed) == saved + 1
    # ... with the losses of an uninterrupted run (one process computing both shards).
    straight: dict[int, float] = {}
    with pytest.raises(TrainingCancelled):
        train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows, short,
                  should_stop=lambda: max(straight, default=0) >= max(resumed),
                  on_progress=lambda step, total, metrics: straight.update({step: metrics["loss"]}))
    for step, loss in resumed.items():
        assert loss == pytest.approx(straight[step], rel=1e-5, abs=1e-6), step
    # Another number of processes is another run: the checkpoint is refused, not silently mixed in.
    with pytest.raises(CheckpointMismatch):
        train_kto(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer, rows,
                  KTOConfig(**{**DP, "max_steps": 400, "checkpoint_every": 1, "processes": 1, "batch_size": 8}),
                  checkpoint_dir=ckpt, resume=True)


LAUNCH = """
import sys
from pathlib import Path
from transformers import AutoModelForCausalLM, AutoTokenizer
from alignment.config import KTOConfig
from tests.tiny import tiny_rows
from worker.train_launch import train_in_processes
tiny, work = sys.argv[1], Path(sys.argv[2])
config = KTOConfig(batch_size=4, processes=2, max_length=64, device="cpu", max_steps=100000)
train_in_processes(AutoModelForCausalLM.from_pretrained(tiny), AutoTokenizer.from_pretrained(tiny), tiny_rows(24),
                   config, base_path=tiny, work=work, checkpoint_dir=None, should_stop=lambda: False)
"""


@pytest.mark.slow
def test_ranks_die_with_the_worker_process_killed_hard(tiny_dir, tmp_path):
    import signal
    import subprocess
    import sys

    work = tmp_path / "dp"
    task = subprocess.Popen([sys.executable, "-c", LAUNCH, str(tiny_dir), str(work)],
                            cwd=Path(__file__).resolve().parents[2])
    try:
        pids: list[int] = []
        deadline = time.monotonic() + 180
        while len(pids) < 2 and time.monotonic() < deadline:
            assert task.poll() is None
            pids = [int(f.read_text()) for f in (work / "ranks").glob("*.pid")] if (work / "ranks").exists() else []
            time.sleep(0.2)
        assert len(pids) == 2 and all(alive(p) for p in pids)
    finally:
        task.send_signal(signal.SIGKILL)  # the Celery pool process dies without a chance to clean up
        task.wait()
    deadline = time.monotonic() + 15
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(p) for p in pids), "ranks kept training after their worker died"
