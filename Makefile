# Argus: `make demo` runs the main job on embedded defaults, `make test` runs the tests.
# Each target sets up what it needs (virtual environment, Kafka jars) and is safe to rerun.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Airflow (for the DAG's tests only) conflicts with Argus's pins: it gets its own environment.
AIRFLOW_VENV  := .venv-airflow
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed-stamp
AIRFLOW_PINS  := infra/schedule/airflow-constraints.txt

.PHONY: help setup demo test test-airflow flink-jobserver test-flink lint mypy bench dist clean

help:
	@echo "make demo   Kafka, a world streamed in, the nightly chain, streaming, alerts, report, precision/recall"
	@echo "make test   run the test suite (starts and stops its own Kafka broker)"
	@echo "make test-airflow  load the Airflow DAG with Airflow's DagBag (own venv: $(AIRFLOW_VENV))"
	@echo "make flink-jobserver  the Beam Flink job server (embedded Flink) and its matching Python env, once"
	@echo "make test-flink  the optional Flink group: the streaming pipeline through that job server"
	@echo "make lint   ruff and mypy"
	@echo "make bench  generator throughput (JSON)"
	@echo "make dist   the wheel, dist/argus_behaviour-VERSION-py3-none-any.whl (import packages under argus.)"

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

$(AIRFLOW_STAMP): $(AIRFLOW_PINS)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/pip install -q --upgrade pip
	$(AIRFLOW_VENV)/bin/pip install -q -c $(AIRFLOW_PINS) apache-airflow pytest
	@touch $(AIRFLOW_STAMP)

# The DAG's tests (pytest marker `airflow`), in Airflow's environment; conftest.py needs Argus's, so it is not loaded.
test-airflow: $(STAMP) $(AIRFLOW_STAMP)
	AIRFLOW_HOME=$(CURDIR)/$(AIRFLOW_VENV)/home ARGUS_PYTHON=$(CURDIR)/$(BIN)/python \
		$(AIRFLOW_VENV)/bin/pytest -q --noconftest -p no:cacheprovider -m airflow tests/test_airflow_dag.py

# The Beam Flink job server (infra/flink/pom.xml, Beam 2.62.0 from Maven Central) and a Python env with
# apache-beam at the same version in $ARGUS_HOME/cache/beam-<version>-venv (see infra/README.md, Flink).
flink-jobserver: $(STAMP)
	@bash infra/prerequisites.sh
	$(BIN)/python -m argus.infra.flink fetch

# The Flink group (pytest marker `flink`): starts the job server on a free port and a Kafka broker.
test-flink: flink-jobserver
	$(BIN)/pytest -q -m flink tests/test_flink.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@$(MAKE) --no-print-directory mypy

# mypy cannot follow setuptools' editable finder (argus.detectors is the folder detectors/), so it checks
# the package as the wheel lays it out: a throwaway install of the working tree in build/mypy (errors name
# argus/detectors/x.py for detectors/x.py).
mypy: $(STAMP)
	rm -rf build/mypy && $(BIN)/pip install -q --no-deps --no-compile --target build/mypy .
	cd build/mypy && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(CURDIR)/.mypy_cache -p argus

bench: setup
	$(BIN)/argus bench generate --json

# The wheel: every import package under argus. (argus.detectors, argus.jobs, ...), its data files, the
# `argus` command. `argus batch ...` ships the same modules to Spark's executors (see infra/README.md).
dist: $(STAMP)
	rm -rf dist build/lib build/bdist.*
	$(BIN)/pip wheel -q --no-deps --wheel-dir dist .
	@ls dist/*.whl

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) .pytest_cache .ruff_cache .mypy_cache dist build
