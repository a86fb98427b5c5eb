# Argus: `make demo` runs the main job on embedded defaults, `make test` runs the tests.
# Each target sets up what it needs (virtual environment, Kafka jars) and is safe to rerun.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: help setup demo test lint bench clean

help:
	@echo "make demo   start Kafka, generate a world, stream it in, read it back (embedded defaults)"
	@echo "make test   run the test suite (starts and stops its own Kafka broker)"
	@echo "make lint   ruff and mypy"
	@echo "make bench  generator throughput (JSON)"

$(STAMP): pyproject.toml
	@bash infra/prerequisites.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP)
	@bash infra/prerequisites.sh
	@$(BIN)/argus kafka fetch
	@$(BIN)/argus stream fetch

demo: setup
	$(BIN)/argus demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy schemas world infra argus pipelines detectors jobs

bench: setup
	$(BIN)/argus bench generate --json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
