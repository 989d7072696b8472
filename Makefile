# avatar-signer. `make run` starts the service with a local S3; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV := $(BIN)/uv
# uv syncs the environment make uses, wherever VENV points.
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))

.PHONY: install run test lint protos proto-baseline bench clean

install: $(STAMP)

# The venv is made by the Python you run make with; uv (pinned and hash-checked by uv.lock)
# is bootstrapped into it with pip once, then `uv sync --frozen` installs exactly the lock:
# both workspace members editable, the dev group, nothing else (pip itself included).
$(STAMP): pyproject.toml client/pyproject.toml uv.lock examples/node/package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) dev/install_uv.py
	$(UV) sync --frozen --quiet
	@if [ -f examples/node/package-lock.json ]; then cd examples/node && npm ci --no-audit --no-fund --loglevel=error; fi
	touch $(STAMP)

run: install  ## start SeaweedFS + the service on 127.0.0.1:50051 and print commands to try
	$(PY) dev/run.py

test: install  ## the whole suite (starts its own SeaweedFS and servers on 127.0.0.1)
	$(PY) -m pytest

lint: install  ## uv.lock up to date, ruff, mypy --strict, buf lint + breaking, hadolint, kubernetes-validate
	$(UV) lock --check
	$(BIN)/ruff check server client tests dev bench
	$(BIN)/mypy
	$(BIN)/buf lint
	$(BIN)/buf breaking --against protos/baseline/avatar_signer.binpb
	$(PY) dev/check_deploy.py

proto-baseline: install  ## after a released, compatible proto change: move the buf breaking baseline
	$(BIN)/buf build -o protos/baseline/avatar_signer.binpb

protos: install  ## regenerate the committed stubs after changing the .proto
	$(PY) dev/gen_protos.py client

bench: install  ## benchmarks (not tests): prints one table of ratios
	$(PY) bench/run.py

clean:
	rm -rf .run build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
