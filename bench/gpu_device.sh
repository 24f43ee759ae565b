#!/usr/bin/env bash
# What the device machine runs (bench/gpu.py's measurements), from the repository root there:
#   carry: .whl (wheels of what its image lacks) and .gpu (the bundled tokenizer), both made here by
#   bench/gpu_prepare.sh. The image has torch, transformers, peft, accelerate; nothing can be fetched.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-var/gpu-bench}
mkdir -p "$OUT"
python3 bench/gpu.py --out "$OUT" --tokenizer .gpu/tokenizer --budget-s "${BUDGET_S:-500}" "$@" 2>&1 \
    | tee "$OUT/log.txt"
