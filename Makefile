# `make run` and `make test` do all set-up on a fresh machine, then run.
.DEFAULT_GOAL := help
.PHONY: help run test lint format bench clean system-deps-run system-deps-test

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Reinstalled whenever pyproject.toml changes.
INSTALLED := $(VENV)/.installed

help:
	@echo "make run    - set up, migrate, load the demo and serve on http://127.0.0.1:8000"
	@echo "make test   - set up, lint (ruff + mypy) and run the whole test suite"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - benchmarks (figures in docs/benchmarks.md)"

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "ccm needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

system-deps-run:
	@scripts/system-deps.sh run

system-deps-test:
	@scripts/system-deps.sh test

run: system-deps-run $(INSTALLED)
	@scripts/run.sh

lint: $(INSTALLED)
	$(BIN)/ruff check ccm tests benchmarks
	$(BIN)/ruff format --check ccm tests benchmarks
	$(BIN)/mypy

format: $(INSTALLED)
	$(BIN)/ruff format ccm tests benchmarks
	$(BIN)/ruff check --fix ccm tests benchmarks

test: system-deps-test $(INSTALLED) lint
	$(BIN)/pytest

bench: system-deps-test $(INSTALLED)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
