# syntax=docker/dockerfile:1
# dago: one image for `dago serve` (the gRPC API) and `dago worker`.
#
#   docker build -t dago .
#   docker run --rm -e DAGO_REDIS_URL=redis://redis:6379/0 -p 50051:50051 dago serve
#   docker run --rm -e DAGO_REDIS_URL=redis://redis:6379/0 dago worker
#
# The builder stage installs the pinned dependencies (requirements.txt) and the dago wheel
# (service/ + gen/python/ + clients/python/, see pyproject.toml) into a virtualenv; the runtime stage is the
# same slim base with only that virtualenv, running as an unprivileged user.
# tests/devtools/test_deploy.py runs this file's commands (wheel, ENTRYPOINT, HEALTHCHECK) without
# Docker, and hadolint lints it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Dependencies first: this layer is rebuilt only when requirements.txt changes. Binary
# wheels only: every pin has amd64 and arm64 wheels, so no compiler is needed anywhere.
COPY requirements.txt ./
RUN python -m venv /opt/dago \
    && /opt/dago/bin/pip install --only-binary=:all: -r requirements.txt
COPY pyproject.toml ./
COPY service/ service/
COPY gen/python/ gen/python/
COPY clients/python/ clients/python/
RUN /opt/dago/bin/pip install --no-deps . \
    && /opt/dago/bin/python -m compileall -q /opt/dago/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="dago" \
      org.opencontainers.image.description="gRPC-first orchestrator for graphs of AI-agent steps, state in Redis"
# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 dago \
    && useradd --system --uid 10001 --gid dago --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin dago
COPY --from=builder /opt/dago /opt/dago
# Bytecode was compiled in the builder; the root filesystem may be read-only at run time.
ENV PATH=/opt/dago/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/dago
USER 10001:10001
# 50051: gRPC API (serve); Prometheus /metrics: 9090 (serve), 9091 (worker).
EXPOSE 50051 9090 9091
# The API's grpc.health.v1 status (SERVING while Redis answers and a worker is alive:
# `dago health --service liveness` checks only that the process serves). Worker containers
# override it with `dago health worker` (compose) or use HTTP probes (Helm).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "dago", "health"]
ENTRYPOINT ["python", "-m", "dago"]
CMD ["serve"]
