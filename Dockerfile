# syntax=docker/dockerfile:1
#
# avatar-signer: the gRPC service image (docs/image.md).
#   make image                                   # buildah (or docker), from a local Debian base
#   docker build -t avatar-signer:0.1.0 .        # from the pinned debian:bookworm-slim
#   docker run --rm -p 50051:50051 -e S3_UPLOAD_KEY_FILE=... avatar-signer:0.1.0
# Settings come from the environment at run time (see README); nothing secret is baked in.
# Behind a TLS-intercepting proxy, pass its CA bundle as the build secret `build-ca`:
#   docker build --secret id=build-ca,src=/etc/ssl/certs/ca-certificates.crt .
# tests/test_packaging.py keeps this file consistent with pyproject.toml, uv.lock and the
# server's defaults; tests/test_image.py (make image-test) runs the built image.

# Debian's bookworm-slim, by digest: Debian's own python3 gets Debian's security updates.
# A build argument so a test can pass a stand-in made locally with debootstrap.
ARG BASE_IMAGE=debian:bookworm-slim@sha256:abd67ffcfa541b485a3dff59865ab629aa048a6c613e639d36e7456b0b229241

# ---- build: uv installs exactly uv.lock (no dev group) into /opt/avatar-signer -------------
FROM ${BASE_IMAGE} AS build

# No version pins (DL3008): the pinned base fixes the Debian release, and each build takes
# that release's current security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates binutils \
    && rm -rf /var/lib/apt/lists/*

ENV UV_PROJECT_ENVIRONMENT=/opt/avatar-signer \
    UV_PYTHON=/usr/bin/python3 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src

# uv itself: the version and hashes uv.lock pins, installed by pip into a throwaway venv.
# Every step that downloads reads the proxy CA, when one is given, from the secret mount
# (never from a layer): SSL_CERT_FILE for uv, PIP_CERT for pip.
COPY uv.lock ./
COPY dev/install_uv.py dev/
RUN --mount=type=secret,id=build-ca \
    if [ -s /run/secrets/build-ca ]; then export PIP_CERT=/run/secrets/build-ca; fi \
    && python3 -m venv /opt/uv \
    && /opt/uv/bin/python dev/install_uv.py

# The dependencies first (a layer that changes only with the lock), then the two projects,
# built as wheels and installed (no editable links to /src). Debug symbols are stripped from
# the wheels' shared libraries, as Debian does for its own (uvloop's alone: 13 MB -> 1.6 MB).
COPY pyproject.toml README.md ./
COPY client/pyproject.toml client/README.md client/
RUN --mount=type=secret,id=build-ca \
    --mount=type=cache,target=/root/.cache/uv,id=avatar-signer-uv \
    if [ -s /run/secrets/build-ca ]; then export SSL_CERT_FILE=/run/secrets/build-ca; fi \
    && /opt/uv/bin/uv sync --frozen --no-dev --no-install-workspace

COPY client/ client/
COPY server/ server/
RUN --mount=type=secret,id=build-ca \
    --mount=type=cache,target=/root/.cache/uv,id=avatar-signer-uv \
    if [ -s /run/secrets/build-ca ]; then export SSL_CERT_FILE=/run/secrets/build-ca; fi \
    && /opt/uv/bin/uv sync --frozen --no-dev --no-editable \
    && find /opt/avatar-signer -name '*.so' -type f -exec strip --strip-unneeded {} +

# ---- runtime: the same base, Debian's python3 and the environment; nothing to install with -
FROM ${BASE_IMAGE}

# Only the interpreter: no pip, no uv, no compiler. The venv's python links to /usr/bin/python3.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 avatar-signer \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin avatar-signer

COPY --from=build /opt/avatar-signer /opt/avatar-signer

# The venv first on PATH: `avatar-signer`, `python` and `python3` are the environment's own.
# Bytecode was compiled at build time; the root filesystem is read-only at run time.
ENV PATH=/opt/avatar-signer/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001

# gRPC (GRPC_PORT) and Prometheus metrics (METRICS_PORT): the server's defaults.
EXPOSE 50051 9464

ENTRYPOINT ["avatar-signer"]
CMD ["serve"]
