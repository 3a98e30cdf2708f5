# Two commands on a fresh machine: `make repro` (the pipeline) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: repro test test-all install bench clean-venv

# PyTorch's OpenMP threads busy-wait by default: on a machine where anything else runs, a CPU
# training step then gets 5-20x slower. Sleeping threads cost ~15% on an idle machine instead.
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

bench: $(STAMP)
	$(BIN)/frcnn bench --quick

clean-venv:
	rm -rf $(VENV)
