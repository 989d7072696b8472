# avatar-signer. `make run` starts the service with a local S3; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint protos proto-baseline bench clean

install: $(STAMP)

$(STAMP): pyproject.toml client/pyproject.toml examples/node/package-lock.json tests/node_cloudfront/package-lock.json examples/web/package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./client -e '.[dev]'
	@if [ -f examples/node/package-lock.json ]; then cd examples/node && npm ci --no-audit --no-fund --loglevel=error; fi
	@if [ -f tests/node_cloudfront/package-lock.json ]; then cd tests/node_cloudfront && npm ci --no-audit --no-fund --loglevel=error; fi
	@if [ -f examples/web/package-lock.json ]; then cd examples/web && npm ci --no-audit --no-fund --loglevel=error; fi
	touch $(STAMP)

run: install  ## start SeaweedFS + the service on 127.0.0.1:50051 and print commands to try
	$(PY) dev/run.py

test: install  ## the whole suite (starts its own SeaweedFS and servers on 127.0.0.1)
	$(PY) -m pytest

test-fast: install  ## the suite without the real S3 and without process-starting tests
	$(PY) -m pytest -m "not slow and not s3"

lint: install  ## ruff, mypy --strict, import layers, buf lint + breaking, hadolint, kubernetes-validate
	$(BIN)/ruff check server client tests dev bench examples/web
	$(BIN)/mypy
	$(BIN)/lint-imports
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
