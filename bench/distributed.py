"""Training throughput on 1 vs N processes (torchrun, gloo on CPU / NCCL on GPUs), in one run.

    .venv/bin/python bench/distributed.py [--model smollm2|tiny] [--processes 2] [--batch 4] [--steps 4] [--rounds 1]

Both runs go through the worker's launcher (``worker.train_launch``: torchrun, rank 0 reports) on the
same rows and the same global batch: 1 process x (N x batch) against N processes x batch. On a CPU the
cores are shared fairly: the single process gets all of them as torch threads, each of the N processes
cores / N. Figures are rank 0's: ``train_tokens_per_s`` counts the global microbatch's tokens over the
optimiser steps' own time (the reference pass and model loading excluded); ``wall_s`` is the whole
launch (torchrun start, loading, reference pass, steps, writing the adapter). Rounds alternate the two
layouts; medians are reported. The two runs' losses differ a little by design: KL partners come from
each process's own shard (README: Training on several processes).

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(folder: Path, rows: list[dict], config, threads: int, work: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.train_launch import train_in_processes

    os.environ["OMP_NUM_THREADS"] = str(threads)  # torchrun passes it to every rank
    started = time.perf_counter()
    result = train_in_processes(AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                                rows, config, base_path=str(folder), work=work, checkpoint_dir=None,
                                should_stop=lambda: False)
    return {"tokens_per_s": result.metrics["train_tokens_per_s"], "wall_s": time.perf_counter() - started,
            "final_loss": result.metrics["loss"], "tokens": result.metrics["total_tokens"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="examples per process (the global batch is N x this)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch
    from transformers import AutoTokenizer

    from alignment.config import KTOConfig
    from bench.train import model_dir, synthetic_rows

    cache = Path(tempfile.mkdtemp(prefix="prospect-bench-dist-"))
    folder = model_dir("tiny", cache) if args.model == "tiny" else model_dir(
        "smollm2", ROOT / "var/models/smollm2-135m-instruct")
    n = args.processes
    rows = synthetic_rows(n * args.batch * args.steps, AutoTokenizer.from_pretrained(folder), max_length=256)
    base = {"max_steps": args.steps, "max_length": 256, "shuffle": False, "group_by_length": False,
            "stratify": False}
    layouts = {1: KTOConfig(**base, batch_size=n * args.batch, processes=1),
               n: KTOConfig(**base, batch_size=args.batch, processes=n)}
    cores = os.cpu_count() or 1
    gpu = torch.cuda.is_available()
    figures: dict[int, list[dict]] = {1: [], n: []}
    for _ in range(args.rounds):
        for procs, config in layouts.items():
            threads = max(1, cores // procs)
            figures[procs].append(run(folder, rows, config, threads, cache / f"work-{procs}"))

    def median(procs: int, key: str) -> float:
        return statistics.median(f[key] for f in figures[procs])

    out = {
        "model": args.model, "device": "cuda" if gpu else "cpu", "cores": cores,
        "load_avg_1m": os.getloadavg()[0], "processes": n, "global_batch": n * args.batch, "steps": args.steps,
        "rounds": args.rounds, "tokens": figures[1][0]["tokens"],
        "tokens_per_s_1": median(1, "tokens_per_s"), f"tokens_per_s_{n}": median(n, "tokens_per_s"),
        "speedup": median(n, "tokens_per_s") / median(1, "tokens_per_s"),
        "wall_s_1": median(1, "wall_s"), f"wall_s_{n}": median(n, "wall_s"),
        "final_loss_1": figures[1][-1]["final_loss"], f"final_loss_{n}": figures[n][-1]["final_loss"],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
