# The two set-up commands of the README:
#   make demo   start the local broker if needed, build .venv, run the demo
#   make test   start the local broker if needed, build .venv, run the tests
# Both work on a fresh Debian machine (they install rabbitmq-server,
# python3-venv, ping, iproute2, openssl when missing) and are quick when all is
# in place. Under CI (env CI set) a test whose prerequisite is still missing
# fails naming it, and any skip fails the run (tests/prereq.py, conftest.py).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
# per-test timeout in seconds (pytest-timeout); the whole run is bounded too
PYTEST_TIMEOUT ?= 120
TEST_RUN_TIMEOUT ?= 3600
PYTEST_ARGS ?=

.PHONY: help demo test lint bench broker venv os-packages clean

help:
	@echo "make demo   - run the demo (starts RabbitMQ and builds $(VENV) if needed)"
	@echo "make test   - run the test suite (same set-up)"
	@echo "make lint   - ruff + mypy"
	@echo "make bench  - run every script in benchmarks/ (not _helpers.py)"
	@echo "make clean  - remove $(VENV) and caches"

broker:
	@scripts/ensure_rabbitmq.sh

os-packages:
	@scripts/ensure_os_packages.sh

venv:
	@VENV=$(VENV) scripts/bootstrap.sh

demo: broker os-packages venv
	$(PY) -m miros_rabbitmq demo

test: broker os-packages venv
	timeout --signal=INT --kill-after=30 $(TEST_RUN_TIMEOUT) \
		$(PY) -m pytest -q --timeout=$(PYTEST_TIMEOUT) $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: broker os-packages venv
	@shopt -s nullglob; scripts=(); \
	for f in benchmarks/*.py; do [[ $$(basename "$$f") == _* ]] || scripts+=("$$f"); done; \
	if [ $${#scripts[@]} -eq 0 ]; then echo "no benchmarks in benchmarks/"; exit 1; fi; \
	for script in "$${scripts[@]}"; do \
		echo "=== $$script"; \
		$(PY) "$$script"; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
