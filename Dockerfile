# syntax=docker/dockerfile:1
#
# avatar-signer: the gRPC service image.
#   docker build -t avatar-signer:0.1.0 .
#   docker run --rm -p 50051:50051 -e S3_UPLOAD_KEY_FILE=... avatar-signer:0.1.0
# Settings come from the environment at run time (see README); nothing secret is baked in.
# tests/test_packaging.py keeps this file consistent with pyproject.toml, client/pyproject.toml
# and the server's config defaults.

# ---- builder: wheels for the two local distributions and every dependency ----------------
FROM python:3.11.15-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
COPY client/ client/
COPY pyproject.toml README.md ./
COPY server/ server/

# First the two local projects, from source only (--no-deps); then their dependencies, resolved
# from the two wheels' metadata. Passing the client wheel by path makes pip use it for the
# server's `avatar-signer-client==0.1.0` requirement, never a same-named package from an index.
RUN pip wheel --no-deps --wheel-dir /wheels ./client . \
    && pip wheel --wheel-dir /wheels /wheels/*.whl

# ---- runtime: the same base, the wheels installed, nothing to build with ----------------
FROM python:3.11.15-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Install only from the builder's wheels (--no-index: no second resolution against an index),
# then remove the installers themselves: nothing in the image can fetch or build packages.
# The wheels are bind-mounted, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels \
        avatar-signer-client==0.1.0 \
        avatar-signer==0.1.0 \
    && pip uninstall --yes setuptools wheel pip \
    && groupadd --system --gid 10001 avatar-signer \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin avatar-signer

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

# gRPC (GRPC_PORT) and Prometheus metrics (METRICS_PORT): the defaults in config.py.
EXPOSE 50051 9464

ENTRYPOINT ["avatar-signer"]
CMD ["serve"]
