# The README's two commands: `make demo` (the main job) and `make test`. Both set up a fresh
# machine first (virtual environment, dependencies, offline dataset) via scripts/bootstrap.sh.
VENV ?= .venv
BIN := $(VENV)/bin
# make test runs the suite in this many workers (pytest-xdist; tests/conftest.py says how they share it)
WORKERS ?= 2

.PHONY: setup demo test test-fast lint bench-generalist clean

setup:
	@VENV=$(VENV) scripts/bootstrap.sh

demo: setup
	$(BIN)/askexpert demo

test: setup
	$(BIN)/python -m pytest -q --durations=25 -n $(WORKERS) --dist loadgroup

test-fast: setup
	$(BIN)/python -m pytest -q --durations=25 -m "not slow"

lint: setup
	$(BIN)/ruff check src lab tests benchmarks

bench-generalist: setup
	$(BIN)/python benchmarks/train_generalist.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
