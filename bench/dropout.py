"""LoRA dropout masks: torch's ``bernoulli_`` (the old masks) against :class:`alignment.lora.MaskStream`.

One microbatch of ``bench/train.py``'s rows (8 examples on SmolLM2-135M, LoRA
at ``KTOConfig``'s defaults, dropout 0.05, examples on threads): the policy's
forward (matched and KL pairs) and the backward of the matched sums, as a
training step runs them. The two mask sources alternate, ``--rounds`` times
each, in one process, so load on the machine hits both, and with them the
same step without dropout (PEFT's Identity, as ``lora_dropout=0`` builds it):
what dropout still costs. The minimum and the median of each are reported. Also one mask of a 200 x 576 input alone.

    .venv/bin/python bench/dropout.py [--rounds 4] [--model smollm2|tiny]

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class BernoulliMasks:
    """The masks before MaskStream: one torch generator per example, ``bernoulli_`` into bools."""

    def __init__(self, seed: int):
        import torch

        self.generator = torch.Generator().manual_seed(seed)

    def keep(self, shape, p: float):
        import torch

        return torch.empty(shape, dtype=torch.bool).bernoulli_(1 - p, generator=self.generator)


def _timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def one_mask(rounds: int) -> dict:
    """Milliseconds to draw one 200 x 576 mask and apply it (forward of the dropout alone)."""
    import torch

    from alignment.lora import MaskStream

    x, shape = torch.randn(200, 576), torch.Size([200, 576])
    old, new = BernoulliMasks(0), MaskStream(0)
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {
            "old_mask_ms": min(_timed(lambda: x.mul(old.keep(shape, 0.05)), rounds * 50)) * 1e3,
            "new_mask_ms": min(_timed(lambda: x.mul(new.keep(shape, 0.05)), rounds * 50)) * 1e3,
        }
    finally:
        torch.set_num_threads(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import alignment.logps
    from alignment.data import tokenize_rows
    from alignment.lora import MaskStream, attach_lora
    from alignment.train import Collator, pair_logps
    from bench.train import _prospect_config, model_dir, synthetic_rows

    with tempfile.TemporaryDirectory(prefix="bench-dropout-") as tmp:
        folder = model_dir(args.model, Path(tmp) if args.model == "tiny" else ROOT / "var/models/smollm2-135m-instruct")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    rows = synthetic_rows(16, tokenizer, max_length=256)
    config = _prospect_config({"beta": 0.1, "lr": 1e-3, "steps": 2, "batch": 8, "max_length": 256,
                               "lora_dropout": 0.05})
    model = attach_lora(model, config)
    model.train()
    collate = Collator(tokenize_rows(rows, tokenizer), tokenizer, config, torch.device("cpu"), model)
    params = [p for p in model.parameters() if p.requires_grad]
    batch = collate(list(range(8)), microbatch=0)

    def step(masks) -> None:
        alignment.logps.MaskStream = masks  # what per_sequence_logps seeds for each example
        try:
            matched, _ = pair_logps(model, batch)
            torch.autograd.grad(matched.sum(), params)
        finally:
            alignment.logps.MaskStream = MaskStream

    def without_dropout() -> None:  # what the same step costs with lora_dropout=0 (PEFT's Identity)
        dropouts = [(m.lora_dropout, name, d) for m in model.modules()
                    if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict)
                    for name, d in m.lora_dropout.items()]
        for holder, name, _ in dropouts:
            holder[name] = torch.nn.Identity()
        try:
            step(MaskStream)
        finally:
            for holder, name, d in dropouts:
                holder[name] = d

    step(MaskStream)  # warm-up: allocator, thread pool
    times: dict[str, list[float]] = {"old": [], "new": [], "none": []}
    for _ in range(args.rounds):
        times["old"] += _timed(lambda: step(BernoulliMasks), 1)
        times["new"] += _timed(lambda: step(MaskStream), 1)
        times["none"] += _timed(without_dropout, 1)
    print(json.dumps({
        "model": args.model, "examples": len(batch.indices), "tokens": batch.num_tokens, "rounds": args.rounds,
        "lora_dropout": config.lora_dropout, "sequence_workers": collate.workers,
        "old_step_s_min": min(times["old"]), "new_step_s_min": min(times["new"]),
        "old_step_s_median": statistics.median(times["old"]), "new_step_s_median": statistics.median(times["new"]),
        "no_dropout_step_s_min": min(times["none"]), "no_dropout_step_s_median": statistics.median(times["none"]),
        "step_speedup_min": min(times["old"]) / min(times["new"]),
        **one_mask(args.rounds),
    }))


if __name__ == "__main__":
    main()
