"""The LM head's log-probs, autograd's way against the chunked function (alignment/head.py), in one run.

    .venv/bin/python bench/head.py [--tokens 200] [--hidden 576] [--vocab 49152] [--rounds 5] [--threads 1]

Forward and backward of the completion tokens' log-probs through a frozen bias-free head at SmolLM2's
shape, alternating the two ways; the median seconds of each, the elements each keeps for its backward
(the head's weight aside), and how far apart the values and gradients are. Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch
    import torch.nn.functional as F

    from alignment.head import token_logps

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False).requires_grad_(False)
    states = torch.randn(args.tokens, args.hidden)
    targets = torch.randint(0, args.vocab, (args.tokens,))
    upstream = torch.randn(args.tokens)

    def autograd_way(s):
        return -F.cross_entropy(head(s).float(), targets, reduction="none")

    def chunked_way(s):
        return token_logps(head, s, targets)

    def run(fn):
        s = states.clone().requires_grad_()
        kept = [0]

        def pack(t):  # elements kept for the backward, the head's own weight (a reference, not a copy) aside
            if t.data_ptr() != head.weight.data_ptr():
                kept[0] += t.numel()
            return t

        started = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(s)
        out.backward(upstream)
        return time.perf_counter() - started, out.detach(), s.grad, kept[0]

    times = {"autograd": [], "chunked": []}
    for _ in range(args.rounds):
        for name, fn in (("autograd", autograd_way), ("chunked", chunked_way)):
            seconds, *_ = run(fn)
            times[name].append(seconds)
    _, want, want_grad, kept_autograd = run(autograd_way)
    _, got, got_grad, kept_chunked = run(chunked_way)
    print(json.dumps({
        "tokens": args.tokens, "hidden": args.hidden, "vocab": args.vocab, "threads": args.threads,
        "rounds": args.rounds,
        "autograd_s": statistics.median(times["autograd"]), "chunked_s": statistics.median(times["chunked"]),
        "speedup": statistics.median(times["autograd"]) / statistics.median(times["chunked"]),
        "kept_elements_autograd": kept_autograd, "kept_elements_chunked": kept_chunked,
        "max_abs_value_diff": float((got - want).abs().max()),
        "max_abs_grad_diff": float((got_grad - want_grad).abs().max()),
    }))


if __name__ == "__main__":
    main()
