#!/usr/bin/env bash
# Here, before a device run: the wheels the device image lacks into .whl/ and the bundled tokenizer
# into .gpu/tokenizer (both git-ignored through .git/info/exclude; carried by the device call).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
grep -qxF '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl .gpu
# trl and datasets (with what datasets needs beyond the image), bitsandbytes for nf4.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 bitsandbytes==0.50.2
.venv/bin/python - <<'PY'
from alignment.bundled import convert_bundled
from transformers import AutoTokenizer
AutoTokenizer.from_pretrained(convert_bundled("var/models/smollm2-135m-instruct")).save_pretrained(".gpu/tokenizer")
PY
du -sh .whl .gpu
