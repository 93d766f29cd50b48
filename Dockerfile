# The loss service: its pinned dependencies and its wheel in a virtualenv without pip, on a
# slim Debian bookworm runtime.
#   docker build -t loss-service .
#   docker run --rm -p 8000:8000 loss-service
# Settings are LOSS_SERVICE_* environment variables (see README), for example
#   docker run --rm -p 9000:9000 -e LOSS_SERVICE_PORT=9000 -e LOSS_SERVICE_WORKERS=4 loss-service
#
# Layers: the dependencies (requirements.lock, written by scripts/lock_requirements.py) are
# installed before the service's code is copied, so a change to the code rebuilds and ships
# only the small layer of its wheel.

# Debian bookworm, pinned by digest (README, "Docker": how to update it).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

# --- deps: the pinned runtime dependencies, in a virtualenv with no pip ---------------
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY requirements.lock /tmp/requirements.lock
# The outer pip installs into the virtualenv (--python), which gets no pip of its own.
RUN python -m pip install --no-cache-dir pip==26.3 \
    && python -m venv --without-pip /opt/venv \
    && python -m pip --python /opt/venv/bin/python install --no-cache-dir --no-deps \
        -r /tmp/requirements.lock

# --- build: the service's wheel, installed without its dependencies into /staging -----
FROM deps AS build
RUN python -m pip install --no-cache-dir build==1.6.1 setuptools==84.2.1 wheel==0.48.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
RUN python -m build --wheel --no-isolation --outdir /dist . \
    && python -m pip --python /opt/venv/bin/python install --no-cache-dir --no-deps \
        --root /staging /dist/*.whl

# --- runtime ----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="loss-service" \
      org.opencontainers.image.description="A REST service that evaluates classification losses and accuracy metrics with Keras 3's numbers." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}"
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app \
    && install -d -o 10001 -g 10001 -m 0750 /data
# Two layers: the dependencies (unchanged by a change to the service's code), then the service.
COPY --from=deps /opt/venv /opt/venv
COPY --from=build /staging/opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
# At most two glibc malloc arenas per process instead of eight per core: the memory of a
# burst of large requests is given back to the system afterwards instead of staying
# spread over many arenas.
ENV MALLOC_ARENA_MAX=2
# Read by the service's settings: the CMD needs no --port or --workers.
ENV LOSS_SERVICE_PORT=8000 \
    LOSS_SERVICE_WORKERS=1 \
    LOSS_SERVICE_LOG_FORMAT=json \
    LOSS_SERVICE_DATA_DIR=/data
# The files of streaming evaluations: a volume owned by the service's user.
VOLUME /data
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('LOSS_SERVICE_PORT', '8000'), timeout=4)"]
STOPSIGNAL SIGTERM
CMD ["loss-service", "serve", "--host", "0.0.0.0"]
