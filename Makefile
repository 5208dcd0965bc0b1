# `make demo` and `make test` install what they need themselves, on a fresh machine too.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AZURITE := node_modules/.bin/azurite-table
# checkov pins many packages of its own, so it lives in a venv of its own.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

.PHONY: demo test test-fast typecheck soak bench install checkov clean lock

$(STAMP): requirements.txt requirements-cli.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

$(AZURITE): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $(AZURITE)

$(CHECKOV_STAMP): requirements-checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	touch $(CHECKOV_STAMP)

checkov: $(CHECKOV_STAMP)
	$(CHECKOV_VENV)/bin/checkov --directory infra --framework bicep --skip-download --compact

demo: $(STAMP)
	$(PY) -m demo

test: $(STAMP) $(AZURITE) $(CHECKOV_STAMP)
	bash scripts/ensure-postgres.sh
	bash scripts/ensure-chromium.sh
	$(PY) -m mypy
	$(PY) -m pytest

# Every adapter and fake against its port's Protocol (tests/typecheck/port_conformance.py).
typecheck: $(STAMP)
	$(PY) -m mypy

test-fast: $(STAMP)
	$(PY) -m pytest tests/unit

# The model-based checker at length: random seeds, shrinking on, a summary at the end.
SOAK_EXAMPLES ?= 10000
soak: $(STAMP)
	DUALSYNC_MODEL_EXAMPLES=$(SOAK_EXAMPLES) DUALSYNC_MODEL_RANDOM=1 DUALSYNC_MODEL_SHRINK=1 \
		$(PY) -m pytest tests/model/test_model_sync.py -q -s -p no:cacheprovider --timeout=0

bench: $(STAMP)
	$(PY) bench/initial_sync.py

# requirements.txt is compiled from requirements.in with every transitive pin and its hashes.
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check pip-tools==7.5.2
	.venv-lock/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url \
		--no-emit-find-links -o requirements.txt requirements.in

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules .pytest_cache .mypy_cache .dualsync
