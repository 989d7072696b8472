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

# The container image: `make image` builds it, `make image-test` runs it (docs/image.md).
IMAGE ?= localhost/avatar-signer:dev
IMAGE_BASE ?=
# The build trusts what this machine trusts (a TLS-intercepting proxy's CA included), passed
# as a build secret: SSL_CERT_FILE if set, else Debian's system bundle. Never in a layer.
IMAGE_CA_BUNDLE ?= $(or $(SSL_CERT_FILE),$(wildcard /etc/ssl/certs/ca-certificates.crt))
export IMAGE IMAGE_CA_BUNDLE

.PHONY: install run test test-fast lint protos proto-baseline bench clean image image-test

install: $(STAMP)

# The venv is made by the Python you run make with; uv (pinned and hash-checked by uv.lock)
# is bootstrapped into it with pip once, then `uv sync --frozen` installs exactly the lock:
# both workspace members editable, the dev group, nothing else (pip itself included).
$(STAMP): pyproject.toml client/pyproject.toml uv.lock examples/node/package-lock.json tests/node_cloudfront/package-lock.json examples/web/package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(PY) dev/install_uv.py
	$(UV) sync --frozen --quiet
	@if [ -f examples/node/package-lock.json ]; then cd examples/node && npm ci --no-audit --no-fund --loglevel=error; fi
	@if [ -f tests/node_cloudfront/package-lock.json ]; then cd tests/node_cloudfront && npm ci --no-audit --no-fund --loglevel=error; fi
	@if [ -f examples/web/package-lock.json ]; then cd examples/web && npm ci --no-audit --no-fund --loglevel=error; fi
	touch $(STAMP)

run: install  ## start SeaweedFS + the service on 127.0.0.1:50051 and print commands to try
	$(PY) dev/run.py

test: install  ## the whole suite (starts its own SeaweedFS and servers on 127.0.0.1)
	$(PY) -m pytest -m "not image"

test-fast: install  ## the suite without the real S3, process-starting tests or the image
	$(PY) -m pytest -m "not slow and not s3 and not image"

image: install  ## build the image with buildah (or docker), on a local Debian base unless IMAGE_BASE
	$(PY) dev/image.py --tag $(IMAGE) $(if $(IMAGE_BASE),--base $(IMAGE_BASE)) $(if $(IMAGE_CA_BUNDLE),--ca-bundle $(IMAGE_CA_BUNDLE))

image-test: install  ## run the built image as the Deployment does, against a local S3 (podman)
	$(PY) -m pytest -m image

lint: install  ## uv.lock up to date, ruff, mypy --strict, import layers, buf lint + breaking, hadolint, kubernetes-validate
	$(UV) lock --check
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
	rm -rf .run build dist *.egg-info .pdm-build client/.pdm-build .pytest_cache .mypy_cache .ruff_cache
