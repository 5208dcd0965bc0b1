# `make demo` and `make test` install what they need themselves, on a fresh machine too.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite-table

.PHONY: demo test test-fast bench install clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(AZURITE)

demo: $(STAMP)
	$(PY) -m demo

test: $(STAMP) $(AZURITE)
	bash scripts/ensure-postgres.sh
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest tests/unit

bench: $(STAMP)
	$(PY) bench/initial_sync.py

clean:
	rm -rf $(VENV) node_modules .pytest_cache .dualsync
