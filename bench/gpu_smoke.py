"""A few KTO steps of the bundled SmolLM2 on the accelerator (bf16 on CUDA):
tokens/s and peak memory as one JSON line. For sessions that have a GPU.

    .venv/bin/python bench/gpu_smoke.py [--steps 8] [--batch 8] [--max-length 512] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lr_sweep import feedback_rows


def main() -> None:
    import torch

    from alignment import KTOConfig, load_bundled, train_kto

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-dir", default="var/models/smollm2-135m-instruct")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model, tokenizer = load_bundled(args.model_dir)
    config = KTOConfig(max_steps=args.steps, batch_size=args.batch, max_length=args.max_length, device=args.device)
    cuda = torch.cuda.is_available() and config.device != "cpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = train_kto(model, tokenizer, feedback_rows(args.steps * args.batch, seed=1), config)
    # Skip the first step (allocator and kernel warm-up).
    timed = result.history[1:] or result.history
    print(json.dumps({
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "dtype": str(next(p for p in result.model.parameters() if not p.requires_grad).dtype),
        "steps": len(result.history),
        "tokens_per_s": sum(h["tokens"] for h in timed) / sum(h["tokens"] / h["tokens_per_s"] for h in timed),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "final_loss": result.history[-1]["loss"],
    }))


if __name__ == "__main__":
    main()
