# Every target sets itself up on a fresh machine. Torch is installed first, pinned by constraints.txt, before
# anything that depends on it. Where pip's indexes offer a CUDA build (stock PyPI on Linux), add PyTorch's CPU
# index to get the CPU one:  PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make test
# Another torch: make test CONSTRAINTS=my-constraints.txt
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
export HF_HUB_OFFLINE ?= 1

.PHONY: install dev scan test lint bench-scan clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) "$$(grep '^torch' $(CONSTRAINTS))"
	$(PIP) install -q -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev

scan: install
	$(BIN)/lmshield scan --out runs/scan-default

test: dev
	$(BIN)/python -m pytest -q -n auto

lint: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench-scan: install
	$(BIN)/python benchmarks/bench_scan.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
