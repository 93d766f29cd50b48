# syntax=docker/dockerfile:1
# The loss service: a wheel built in one stage, installed into a slim runtime.
#   docker build -t loss-service .
#   docker run --rm -p 8000:8000 loss-service
# Settings are LOSS_SERVICE_* environment variables (see README), for example
#   docker run --rm -p 9000:9000 -e LOSS_SERVICE_PORT=9000 -e LOSS_SERVICE_WORKERS=4 loss-service

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: the wheel --------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY service ./service
RUN pip wheel --no-deps --wheel-dir /dist .

# --- runtime: the wheel and its pinned dependencies in a virtualenv ----------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
COPY constraints.txt /tmp/constraints.txt
COPY --from=build /dist/ /tmp/dist/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c /tmp/constraints.txt /tmp/dist/*.whl \
    && rm -rf /tmp/dist /tmp/constraints.txt \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin app

# Read by the service's settings: the CMD needs no --port or --workers.
ENV LOSS_SERVICE_PORT=8000 \
    LOSS_SERVICE_WORKERS=1 \
    LOSS_SERVICE_LOG_FORMAT=json
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LOSS_SERVICE_PORT', '8000'), timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["loss-service", "serve", "--host", "0.0.0.0"]
