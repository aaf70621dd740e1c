# Two commands: `make run` starts the whole stack, `make test` runs the whole suite.
# Both depend on `make install`, which is idempotent (re-runs only when pyproject.toml changes).
# The distribution's CPython when it is recent enough: built with PGO and LTO (.ci/pick-python).
PYTHON ?= $(shell .ci/pick-python)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config.toml

.PHONY: install run test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c 'import sys; print("make install: .venv runs", sys.version.split()[0], "from", sys.base_prefix)'
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/python -m gateway.stack --config $(CONFIG) $(if $(TRACE),--trace)

test: install lint
	.ci/install-postgresql
	.ci/install-tls-tools
	.ci/install-http2-tools
	.ci/install-htpasswd
	.ci/install-redis
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff format --check gateway backend products tests bench run_gateway.py run_backend.py
	$(BIN)/ruff check gateway backend products tests bench run_gateway.py run_backend.py
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) var certs/*.pem .pytest_cache .mypy_cache .ruff_cache
