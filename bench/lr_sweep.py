"""Learning-rate sweep for KTO + LoRA on the bundled SmolLM2-135M-Instruct.

Trains one adapter per learning rate on the same synthetic feedback (right vs
wrong answers to arithmetic and capital-city questions) and scores it on
held-out rows of the same kind. Prints one JSON line.

    .venv/bin/python bench/lr_sweep.py [--steps 12] [--lrs 5e-5,2e-4,...]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment import KTOConfig, evaluate_kto, load_bundled, train_kto

CAPITALS = [("France", "Paris", "Lyon"), ("Italy", "Rome", "Milan"), ("Spain", "Madrid", "Seville"),
            ("Germany", "Berlin", "Munich"), ("Japan", "Tokyo", "Osaka"), ("Canada", "Ottawa", "Toronto"),
            ("Australia", "Canberra", "Sydney"), ("Egypt", "Cairo", "Alexandria"), ("Brazil", "Brasilia", "Rio"),
            ("Kenya", "Nairobi", "Mombasa"), ("Norway", "Oslo", "Bergen"), ("Peru", "Lima", "Cusco")]


def feedback_rows(n: int, seed: int) -> list[dict]:
    """Half thumbs-up (right answer), half thumbs-down (wrong or rude answer)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        up = i % 2 == 0
        if rng.random() < 0.5:
            a, b = rng.randint(2, 60), rng.randint(2, 60)
            prompt = f"What is {a} + {b}?"
            answer = a + b if up else a + b + rng.choice([-3, -1, 1, 2, 7])
            completion = f"{a} + {b} = {answer}."
        else:
            country, capital, other = rng.choice(CAPITALS)
            prompt = f"What is the capital of {country}?"
            completion = (f"The capital of {country} is {capital}." if up else
                          rng.choice([f"The capital of {country} is {other}.", "Look it up yourself."]))
        rows.append({"prompt": prompt, "completion": completion, "label": up})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--heldout", type=int, default=32)
    parser.add_argument("--lrs", default="5e-5,2e-4,1e-3,5e-3")
    parser.add_argument("--model-dir", default="var/models/smollm2-135m-instruct")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    train_rows, heldout = feedback_rows(args.rows, seed=1), feedback_rows(args.heldout, seed=2)
    results = {}
    for lr in [float(x) for x in args.lrs.split(",")]:
        model, tokenizer = load_bundled(args.model_dir)
        config = KTOConfig(learning_rate=lr, max_steps=args.steps, batch_size=8, device="cpu")
        started = time.perf_counter()
        result = train_kto(model, tokenizer, train_rows, config)
        train_s = time.perf_counter() - started
        evaluation = evaluate_kto(result.model, tokenizer, heldout, config)
        losses = [h["loss"] for h in result.history]
        results[f"{lr:g}"] = {
            "train_loss_first4": sum(losses[:4]) / 4, "train_loss_last4": sum(losses[-4:]) / 4,
            "train_kl_max": max(h["kl"] for h in result.history),
            "eval_loss": evaluation["loss"], "eval_accuracy": evaluation["accuracy"],
            "eval_margin": evaluation["reward_margin"], "eval_kl": evaluation["kl"], "train_s": train_s,
        }
        print(f"lr {lr:g}: {json.dumps(results[f'{lr:g}'])}", file=sys.stderr, flush=True)
    print(json.dumps({"steps": args.steps, "rows": args.rows, "heldout": args.heldout, "results": results}))


if __name__ == "__main__":
    main()
