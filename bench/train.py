"""Prospect's KTO trainer against TRL's KTOTrainer on the same work, in one run.

    .venv/bin/python bench/train.py [--model smollm2|tiny] [--steps 8] [--rounds 1] [--lora-dropout P]

Prospect runs at ``KTOConfig``'s defaults except where a fair comparison
needs TRL's settings: the same rows in the same order (TRL's sequential
sampler; Prospect with ``shuffle=False``, ``group_by_length=False``,
``stratify=False``), batch 8, max length 256, the same learning rate (default:
Prospect's, 1e-3) on the same schedule (linear decay, no warmup), beta 0.1,
weights 1/1, KL partner i-1 (TRL's pairing), max grad norm 1. Everything else
is Prospect's default, LoRA included: r16 / alpha 32 / dropout 0.05 on the
architecture's attention projections (q/k/v/o on SmolLM2), the per-sequence
layout on examples in parallel threads, the reference precomputed. TRL gets
the *same* LoRA (rank, alpha, dropout, targets) and ``disable_dropout=False``
(its default, True, would zero the LoRA dropout as well). fp32 on CPU (bf16
on CUDA); TRL's own default on a CPU is bf16 autocast (``bf16=None`` becomes
True), so ``--cpu-bf16`` also measures both in bf16 there (Prospect
``dtype="bfloat16"``: the frozen base in bf16, LoRA in fp32). TRL runs twice: its defaults and ``precompute_ref_log_probs=True``;
both with ``gradient_checkpointing=False`` (TRL's own default is True, which
only slows it down for a 135M model; pass ``--trl-gradient-checkpointing`` to
measure that too).

Timed work: for Prospect the whole ``train_kto`` call (tokenisation, LoRA,
reference precompute, steps); for TRL ``KTOTrainer(...)`` (tokenisation, LoRA,
and with precompute the reference pass) plus ``train()``. Model loading is not
timed for either. Each run is its own subprocess, so its peak RSS is its own
(peak allocated memory on CUDA); rounds alternate Prospect, TRL default, TRL
precompute so drift on a noisy machine hits all three; the median of each is
reported. Tokens are the prompt + completion tokens of the training rows.

Parity: Prospect's adapter after its timed steps is loaded into a PEFT model;
Prospect's ``evaluate_kto`` and TRL's ``compute_loss`` then score the same
first batch in eval mode (pairing i-1). Eval mode turns dropout off in both,
so the two scores are deterministic and comparable (|loss diff| <= 1e-4)
although the training runs drew different dropout masks; the final training
losses therefore differ a little when dropout > 0 (with ``--lora-dropout 0``
they match as well).

The rows (``synthetic_rows``): deterministic chat-like feedback, half up, half
down. A prompt is 1-6 sentences (5-80 words) under the model's chat template,
a completion 1-8 sentences (5-110 words), both uniform in words; rows whose
prompt + completion exceed max length are shortened at the completion, so no
trainer has to truncate (their truncation rules differ). On SmolLM2 that gives
roughly 50-200 prompt tokens (chat template included) and 10-160 completion tokens.

Prints ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.train")
sys.path.insert(0, str(ROOT))

_VOCABULARY = (
    "the model answer question user data time system people work way code file example result problem "
    "value number list test error function string server request response python table query memory "
    "change update build version issue case point report step team plan price market account order "
    "service support product customer email message note text page book story city country water food "
    "health doctor school student teacher history science music movie game travel weather morning "
    "evening week month year good great simple clear quick small large new old first last best better "
    "different important possible available useful easy hard common specific explain show tell help make "
    "use find give need want write read check try run add remove fix keep start stop call move compare "
    "describe summarise improve choose learn understand because although however therefore also only "
    "really often usually maybe probably always never sometimes"
)
WORDS = _VOCABULARY.split()
OPENERS = ("Can you", "Could you please", "I need to", "How do I", "Please", "Why does", "What is the best way to")


def _sentence(rng: random.Random, n: int, *, question: bool = False) -> str:
    words = [rng.choice(WORDS) for _ in range(max(1, n))]
    if question:
        return f"{rng.choice(OPENERS)} {' '.join(words)}?"
    return " ".join(words).capitalize() + "."


def _text(rng: random.Random, words: int, *, question: bool) -> str:
    sentences, left = [], words
    while left > 0:
        n = min(left, rng.randint(4, 18))
        sentences.append(_sentence(rng, n, question=question and not sentences))
        left -= n
    return " ".join(sentences)


def synthetic_rows(n: int, tokenizer, *, max_length: int, seed: int = 0, most_prompt_words: int = 80,
                   most_completion_words: int = 110) -> list[dict]:
    """Deterministic chat-like rows (see the module docstring for the distribution); the word counts are
    uniform from 5 to ``most_prompt_words`` and ``most_completion_words``."""
    from alignment.data import tokenize_rows

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt_words, completion_words = rng.randint(5, most_prompt_words), rng.randint(5, most_completion_words)
        label = rng.random() < 0.5 if i >= 2 else i == 0  # both classes in the first batch
        while True:
            prompt = _text(random.Random(f"{seed}:p{i}"), prompt_words, question=True)
            completion = _text(random.Random(f"{seed}:c{i}"), completion_words, question=False)
            row = {"prompt": [{"role": "user", "content": prompt}], "completion": completion, "label": label}
            example = tokenize_rows([row], tokenizer)[0]
            prompt_tokens, completion_tokens = len(example.prefix) + len(example.prompt), len(example.completion)
            if prompt_tokens <= max_length // 2 and completion_tokens <= max_length // 2:
                break
            # Shorten so that no pair, matched or KL, needs truncating (the trainers' rules differ there).
            if prompt_tokens > max_length // 2:
                prompt_words = max(1, prompt_words - 4)
            if completion_tokens > max_length // 2:
                completion_words = max(1, completion_words - 4)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- one run per subprocess

def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if _device() == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(_device())
    return model, AutoTokenizer.from_pretrained(model_dir)


def _peak_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


# The optimisations one at a time, for the README's table (``--ablation``): each row adds one to the last.
# The first rows run without dropout (as the table was first measured); the last adds the default dropout.
ABLATION = (
    ("baseline: padded batches, full-vocab head, reference each step",
     {"sequence_layout": "batched", "packing": False, "precompute_reference": False, "lora_dropout": 0.0}, True),
    ("+ LM head only at completion positions",
     {"sequence_layout": "batched", "packing": False, "precompute_reference": False, "lora_dropout": 0.0}, False),
    ("+ reference log-probs precomputed once",
     {"sequence_layout": "batched", "packing": False, "precompute_reference": True, "lora_dropout": 0.0}, False),
    ("+ packed reference pass (each prompt once for both pairs)",
     {"sequence_layout": "batched", "packing": True, "precompute_reference": True, "lora_dropout": 0.0}, False),
    ("+ per-sequence layout (no padding; KL pair from the cached prompt)",
     {"sequence_layout": "per_sequence", "sequence_workers": 1, "precompute_reference": True, "lora_dropout": 0.0},
     False),
    ("+ examples on parallel threads, one intra-op thread each",
     {"sequence_layout": "per_sequence", "precompute_reference": True, "lora_dropout": 0.0}, False),
    ("+ LoRA dropout 0.05 (the default) on the threads: a seeded generator per example (all defaults)",
     {"sequence_layout": "per_sequence", "precompute_reference": True, "lora_dropout": 0.05}, False),
)


def _prospect_config(spec: dict):
    """KTOConfig's defaults, except what must match TRL (see the module docstring) and --ablation's row."""
    from alignment import KTOConfig

    matched_to_trl = {
        "beta": spec["beta"], "learning_rate": spec["lr"], "max_steps": spec["steps"], "batch_size": spec["batch"],
        "max_length": spec["max_length"], "lr_schedule": "linear", "warmup_ratio": 0.0, "kl_pairing": "previous",
        "group_by_length": False, "shuffle": False, "stratify": False, "desirable_weight": 1.0,
        "undesirable_weight": 1.0, "max_grad_norm": 1.0, "seed": 0, "device": _device(),
        "lora_dropout": spec["lora_dropout"],
    }
    return KTOConfig(**{**matched_to_trl, **spec.get("overrides", {})})


def run_prospect(spec: dict) -> dict:
    import torch

    from alignment import train_kto

    if spec.get("full_vocab_head"):
        import alignment.logps

        alignment.logps._split_head = lambda model: None  # every scorer falls back to full logits
    model, tokenizer = _load(spec["model_dir"])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train_kto(model, tokenizer, spec["rows"], _prospect_config(spec))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    result.model.save_pretrained(spec["adapter_dir"])
    return {"seconds": elapsed, "tokens": result.metrics["total_tokens"], "peak_mb": _peak_mb(),
            "final_loss": result.history[-1]["loss"], "sequence_layout": result.metrics["sequence_layout"],
            "sequence_workers": result.metrics["sequence_workers"]}


def _trl_args(spec: dict, out: str, *, precompute: bool, steps: int):
    from trl import KTOConfig as TRLConfig

    cuda = _device() == "cuda"
    return TRLConfig(
        output_dir=out, per_device_train_batch_size=spec["batch"], max_steps=steps, learning_rate=spec["lr"],
        beta=spec["beta"], max_length=spec["max_length"], lr_scheduler_type="linear", warmup_steps=0,
        precompute_ref_log_probs=precompute, train_sampling_strategy="sequential",
        disable_dropout=False,  # True (TRL's default) would also zero the LoRA dropout, which must match ours
        gradient_checkpointing=spec["trl_gradient_checkpointing"], bf16=cuda or spec.get("cpu_bf16", False),
        use_cpu=not cuda,
        desirable_weight=1.0, undesirable_weight=1.0, logging_steps=1, report_to=[], save_strategy="no",
        disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )


def _trl_rows(rows: list[dict], tokenizer) -> list[dict]:
    """TRL's standard (text) format with our rendering of the chat template: TRL appends EOS to the
    completion text itself, as Prospect does with the EOS id (its conversational format would add the
    template's end-of-turn and newline instead)."""
    from alignment.data import adds_bos, render_prompt

    def prompt(row):
        text = render_prompt(row["prompt"], tokenizer)
        # TRL tokenises with the tokenizer's own BOS; a template that writes one too would double it.
        if adds_bos(tokenizer) and text.startswith(tokenizer.bos_token):
            text = text[len(tokenizer.bos_token):]
        return text

    return [{"prompt": prompt(r), "completion": r["completion"], "label": r["label"]} for r in rows]


def _lora_config(spec: dict, model):
    """Prospect's LoRA (its config's rank, alpha and dropout, the architecture's default targets) for TRL."""
    from peft import LoraConfig

    from alignment.lora import default_target_modules

    config = _prospect_config(spec)
    targets = list(config.lora_target_modules or default_target_modules(model))
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      bias="none", task_type="CAUSAL_LM", target_modules=targets)


def run_trl(spec: dict, *, precompute: bool) -> dict:
    import torch
    from datasets import Dataset
    from trl import KTOTrainer

    model, tokenizer = _load(spec["model_dir"])
    dataset = Dataset.from_list(_trl_rows(spec["rows"], tokenizer))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        trainer = KTOTrainer(model=model, args=_trl_args(spec, out, precompute=precompute, steps=spec["steps"]),
                             train_dataset=dataset, processing_class=tokenizer, peft_config=_lora_config(spec, model))
        trainer.train()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
    # The tokens TRL trained on (prompt + completion of the rows its steps saw), to check that they match ours.
    seen = trainer.train_dataset.select(range(min(len(trainer.train_dataset), spec["steps"] * spec["batch"])))
    tokens = sum(len(p) + len(c) for p, c in zip(seen["prompt_ids"], seen["completion_ids"], strict=True))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"seconds": elapsed, "tokens": tokens, "peak_mb": _peak_mb(), "final_loss": losses[-1]}


def run_parity(spec: dict) -> dict:
    """Prospect and TRL score the same batch with the same trained adapter."""
    import torch
    from datasets import Dataset
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file
    from trl import KTOTrainer

    from alignment import evaluate_kto

    rows = spec["rows"][: spec["batch"]]
    model, tokenizer = _load(spec["model_dir"])
    ours = evaluate_kto(PeftModel.from_pretrained(model, spec["adapter_dir"]), tokenizer, rows,
                        _prospect_config(spec))
    # TRL's own PEFT model (reference = adapter disabled), given the same LoRA weights.
    model, tokenizer = _load(spec["model_dir"])
    with tempfile.TemporaryDirectory() as out:
        trainer = KTOTrainer(model=model, args=_trl_args(spec, out, precompute=False, steps=1),
                             train_dataset=Dataset.from_list(_trl_rows(rows, tokenizer)), processing_class=tokenizer,
                             peft_config=_lora_config(spec, model))
        weights = load_file(str(Path(spec["adapter_dir"]) / "adapter_model.safetensors"))
        loaded = set_peft_model_state_dict(trainer.model, weights)
        if loaded.unexpected_keys:
            raise RuntimeError(f"adapter weights did not load into TRL's model: {loaded.unexpected_keys[:3]}")
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.model.eval()
        with torch.no_grad():
            loss = float(trainer.compute_loss(trainer.model, batch))
        kl = trainer._metrics["eval"]["kl"][-1]
    return {"loss_prospect": ours["loss"], "loss_trl": loss, "kl_prospect": ours["kl"], "kl_trl": kl}


def worker(kind: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.manual_seed(0)
    if kind == "prospect":
        out = run_prospect(spec)
    elif kind == "trl_default":
        out = run_trl(spec, precompute=False)
    elif kind == "trl_precompute":
        out = run_trl(spec, precompute=True)
    elif kind == "parity":
        out = run_parity(spec)
    else:
        raise SystemExit(f"unknown worker {kind}")
    print("RESULT " + json.dumps(out), flush=True)


def ablation(spec: dict, tmp: Path, rows: list[int] | None = None) -> list[dict]:
    """Prospect alone, once per row of ABLATION (or of ``rows``, 0-based), in order."""
    table = []
    for name, overrides, full_vocab_head in (ABLATION[i] for i in rows or range(len(ABLATION))):
        path = tmp / "ablation-spec.json"
        path.write_text(json.dumps({**spec, "overrides": {**spec["overrides"], **overrides},  # --cpu-bf16 kept
                                    "full_vocab_head": full_vocab_head}))
        run = spawn("prospect", path)
        table.append({"step": name, "tokens_per_s": run["tokens"] / run["seconds"], "seconds": run["seconds"],
                      "peak_mb": run["peak_mb"], "final_loss": run["final_loss"]})
    return table


def spawn(kind: str, spec_path: Path) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", kind, "--spec", str(spec_path)],
                          capture_output=True, text=True, cwd=ROOT, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-8000:])
        raise SystemExit(f"{kind} run failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len("RESULT "):])
    log.info("%s: %s", kind, result)
    return result


# ---------------------------------------------------------------- the benchmark

def _device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name()})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _overrides(pairs: list[str]) -> dict:
    """``KEY=JSON`` pairs -> a dict, checked against KTOConfig (so a typo fails here, not in a worker)."""
    from alignment import KTOConfig

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--override {pair!r}: expected KEY=JSON, e.g. gradient_checkpointing=true")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value  # a bare string: quantization=nf4
    KTOConfig.from_dict(out)
    return out


def model_dir(name: str, cache: Path) -> Path:
    if name == "tiny":
        from tests.tiny import build_tiny_model_dir

        return build_tiny_model_dir(cache / "tiny")
    from alignment.bundled import convert_bundled

    return convert_bundled(cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=None, help="both trainers (default: KTOConfig's, 1e-3)")
    parser.add_argument("--beta", type=float, default=None, help="both trainers (default: KTOConfig's, 0.1)")
    parser.add_argument("--lora-dropout", type=float, default=None,
                        help="both trainers (default: KTOConfig's, 0.05; 0 reproduces the earlier figures)")
    parser.add_argument("--rounds", type=int, default=1, help="alternation rounds (median per configuration)")
    parser.add_argument("--model-dir", default=None,
                        help="converted model folder (default: var/models/smollm2-135m-instruct, or a tiny one)")
    parser.add_argument("--trl-gradient-checkpointing", action="store_true")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="on a CPU, both in bf16: Prospect dtype=bfloat16 (base in bf16, LoRA in fp32), TRL "
                             "bf16=True (its own default: autocast); parity is then only approximate")
    parser.add_argument("--ablation", action="store_true",
                        help="Prospect only, adding one optimisation at a time; prints the table as JSON")
    parser.add_argument("--ablation-rows", default=None,
                        help="with --ablation: only these rows, 0-based, comma-separated (e.g. 5,6: threads "
                             "without and with dropout)")
    parser.add_argument("--prompt-words", type=int, default=80, help="longest prompt, in words (5-80 by default)")
    parser.add_argument("--completion-words", type=int, default=110,
                        help="longest completion, in words (5-110 by default)")
    parser.add_argument("--only", choices=("all", "prospect"), default="all",
                        help="prospect: Prospect alone (no TRL runs, no parity), e.g. with --override")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                        help="a KTOConfig field for Prospect's run, e.g. gradient_checkpointing=true, "
                             'quantization=\"nf4\" (repeatable)')
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.spec)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from transformers import AutoTokenizer

    from alignment import KTOConfig

    defaults = KTOConfig()
    lr = args.lr if args.lr is not None else defaults.learning_rate
    beta = args.beta if args.beta is not None else defaults.beta
    lora_dropout = args.lora_dropout if args.lora_dropout is not None else defaults.lora_dropout

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        if args.model_dir:
            folder = Path(args.model_dir)
        elif args.model == "tiny":
            folder = model_dir("tiny", tmp)
        else:
            folder = model_dir("smollm2", ROOT / "var/models/smollm2-135m-instruct")
        tokenizer = AutoTokenizer.from_pretrained(folder)
        rows = synthetic_rows(args.steps * args.batch, tokenizer, max_length=args.max_length,
                              most_prompt_words=args.prompt_words, most_completion_words=args.completion_words)
        overrides = {"dtype": "bfloat16"} if args.cpu_bf16 else {}
        overrides.update(_overrides(args.override))
        spec = {"model_dir": str(folder), "rows": rows, "steps": args.steps, "batch": args.batch,
                "max_length": args.max_length, "lr": lr, "beta": beta, "lora_dropout": lora_dropout,
                "adapter_dir": str(tmp / "adapter"), "trl_gradient_checkpointing": args.trl_gradient_checkpointing,
                "cpu_bf16": args.cpu_bf16, "overrides": overrides}
        spec_path = tmp / "spec.json"
        spec_path.write_text(json.dumps(spec))
        if args.ablation:
            rows_wanted = [int(i) for i in args.ablation_rows.split(",")] if args.ablation_rows else None
            table = ablation(spec, tmp, rows_wanted)
            print(json.dumps({"model": args.model, "steps": args.steps, "batch": args.batch,
                              "max_length": args.max_length, "lr": lr, "ablation": table}))
            return

        if args.only == "prospect":
            runs = [spawn("prospect", spec_path) for _ in range(args.rounds)]
            print(json.dumps({"model": args.model if not args.model_dir else str(args.model_dir),
                              "device": _device_name(), "steps": args.steps, "batch": args.batch,
                              "max_length": args.max_length, "rounds": args.rounds, "overrides": overrides,
                              "rows": len(rows), "tokens": runs[0]["tokens"],
                              "prospect_tokens_per_s": statistics.median(r["tokens"] / r["seconds"] for r in runs),
                              "prospect_seconds": statistics.median(r["seconds"] for r in runs),
                              "prospect_peak_mb": max(r["peak_mb"] for r in runs),
                              "prospect_final_loss": runs[-1]["final_loss"],
                              "sequence_layout": runs[0]["sequence_layout"]}))
            return
        runs: dict[str, list[dict]] = {"prospect": [], "trl_default": [], "trl_precompute": []}
        for r in range(args.rounds):
            # Alternate the order too, so that no configuration always runs first (page cache, thermals).
            kinds = list(runs) if r % 2 == 0 else list(reversed(runs))
            for kind in kinds:
                runs[kind].append(spawn(kind, spec_path))
        parity = spawn("parity", spec_path)

    tokens = runs["prospect"][0]["tokens"]

    def tps(kind):
        return statistics.median(tokens / run["seconds"] for run in runs[kind])

    def peak(kind):
        return max(run["peak_mb"] for run in runs[kind])

    prospect, trl_default, trl_pre = tps("prospect"), tps("trl_default"), tps("trl_precompute")
    faster = "trl_precompute" if trl_pre >= trl_default else "trl_default"

    print(json.dumps({
        "model": args.model if not args.model_dir else str(args.model_dir),
        "device": _device_name(),
        "overrides": spec["overrides"],
        "steps": args.steps, "batch": args.batch, "max_length": args.max_length, "rounds": args.rounds,
        "lr": lr, "beta": beta, "lora_dropout": lora_dropout, "lora_r": defaults.lora_r,
        "lora_alpha": defaults.lora_alpha, "sequence_layout": runs["prospect"][0]["sequence_layout"],
        "sequence_workers": runs["prospect"][0]["sequence_workers"],
        "rows": len(rows), "tokens": tokens,
        "tokens_match": all(run["tokens"] == tokens for kind in runs for run in runs[kind]),
        "prospect_tokens_per_s": prospect,
        "trl_tokens_per_s": max(trl_default, trl_pre),
        "trl_faster_config": faster,
        "trl_default_tokens_per_s": trl_default,
        "trl_precompute_tokens_per_s": trl_pre,
        "speedup": prospect / max(trl_default, trl_pre),
        "prospect_seconds": statistics.median(r["seconds"] for r in runs["prospect"]),
        "trl_default_seconds": statistics.median(r["seconds"] for r in runs["trl_default"]),
        "trl_precompute_seconds": statistics.median(r["seconds"] for r in runs["trl_precompute"]),
        "prospect_peak_mb": peak("prospect"),
        "trl_peak_mb": peak(faster),
        "trl_default_peak_mb": peak("trl_default"),
        "trl_precompute_peak_mb": peak("trl_precompute"),
        "prospect_final_loss": runs["prospect"][-1]["final_loss"],
        "trl_final_loss": runs[faster][-1]["final_loss"],
        "trl_gradient_checkpointing": args.trl_gradient_checkpointing,
        "cpu_bf16": args.cpu_bf16,
        "parity_loss_prospect": parity["loss_prospect"],
        "parity_loss_trl": parity["loss_trl"],
        "parity_loss_abs_diff": abs(parity["loss_prospect"] - parity["loss_trl"]),
        "parity_kl_prospect": parity["kl_prospect"],
        "parity_kl_trl": parity["kl_trl"],
        "parity_kl_abs_diff": abs(parity["kl_prospect"] - parity["kl_trl"]),
    }))


if __name__ == "__main__":
    main()
