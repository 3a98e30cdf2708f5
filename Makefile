# Two commands on a fresh machine: `make repro` (the pipeline) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: repro test test-all install bench bench-full gpu-check clean-venv

# PyTorch's OpenMP threads busy-wait by default: on a machine where anything else runs, a CPU
# training step then gets several times slower (reports/wait_policy.md). The package sets this
# itself before torch loads (frcnn/__init__.py), so `dvc exp run` from a plain shell gets it too;
# exported here as well for the tools make runs before any frcnn import.
export OMP_WAIT_POLICY ?= PASSIVE

# Re-install whenever pyproject.toml changes; the stamp makes repeated runs instant.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# dvc runs each stage's `python stages/...` through the shell: the venv must come first on PATH
repro: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

# everything, the `slow` end-to-end rehearsals included (`make test` leaves them out)
test-all: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -m ""

# ours vs torchvision, interleaved rounds until a stated precision or budget: quick <= ~5 min,
# full <= ~30 min on 2 cores -> reports/benchmarks.{md,json}
bench: $(STAMP)
	$(BIN)/frcnn bench --quick

bench-full: $(STAMP)
	$(BIN)/frcnn bench

# For the GPU machine: its system Python (torch + torchvision; no venv, no dvc, mlflow or
# pycocotools) runs the prepared check, ~4 min on one H200 -> reports/gpu_check.{json,md}.
# `make test` runs the same script's CPU dry run (tests/benchmarks/test_gpu_check.py).
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --out reports

clean-venv:
	rm -rf $(VENV)
