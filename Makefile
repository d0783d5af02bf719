# mgrec: `make install` once, then `make train` / `make test`. Everything runs from the repo's .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the CPU build of torch; on a GPU machine install your own torch into .venv first (see README)
TORCH_SPEC ?= torch==2.13.0

.PHONY: help install train test test-slow test-all lint format bench clean

help:  ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python  ## create .venv and install mgrec with its dev tools (torch pinned first)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"

train: install  ## train the default model on the default data set (ml100k, built on first use)
	$(BIN)/python train.py $(ARGS)

test: install  ## the default test suite (fast; real-data and long tests are marked slow)
	$(BIN)/python -m pytest -q $(ARGS)

test-slow: install  ## the slow tests only (real data, long training runs)
	$(BIN)/python -m pytest -q -m slow $(ARGS)

test-all: install  ## every test
	$(BIN)/python -m pytest -q -m "slow or not slow" $(ARGS)

lint: install  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install  ## speed and memory benchmarks, written to docs/benchmarks.md
	$(BIN)/python scripts/bench.py $(ARGS)

clean:  ## remove logs, caches and build artefacts (keeps .venv and data/)
	rm -rf logs outputs multirun .pytest_cache .ruff_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -not -path "./.venv/*" -exec rm -rf {} +
