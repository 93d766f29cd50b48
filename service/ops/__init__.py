"""Operations: what running the service in production needs, installed by ``install``.

- ``observe``: request ids (``X-Request-ID``), one access log line per request, and the
  Prometheus metrics of every request;
- ``prometheus``: ``GET /metrics`` (also across worker processes) and
  ``record_warnings``, which the routes call with the warning codes they return;
- ``auth``: ``Authorization: Bearer <key>`` on ``/v1/*`` when API keys are configured;
- CORS, when origins are configured;
- ``logs``: the logging configuration (JSON or console) that the command line gives
  uvicorn.

Every middleware here is pure ASGI. Call ``install(app, settings)`` in ``create_app``
before adding any middleware that must wrap everything (``DrainRequestBody``).
"""

from __future__ import annotations

from typing import Final

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from service.settings import Settings

CORS_HEADERS: Final = (
    "Authorization",
    "Content-Type",
    "Inference-Header-Content-Length",
    "X-Request-ID",
)


def install(app: FastAPI, settings: Settings) -> None:
    """Add ``/metrics`` and the middleware (outermost first): ``Observe`` (request id,
    access log, metrics), CORS (if ``cors_origins``), ``BearerAuth`` (if ``api_keys``)."""
    # Imported here: the metrics' storage is chosen when prometheus_client is first
    # imported, which must follow the command line's PROMETHEUS_MULTIPROC_DIR.
    from service.ops import auth, observe, prometheus

    app.add_api_route(
        prometheus.PATH,
        prometheus.metrics_endpoint,
        methods=["GET"],
        include_in_schema=False,
        response_model=None,
    )
    # Each add_middleware wraps what was added before it.
    if settings.api_keys:
        app.add_middleware(
            auth.BearerAuth, keys=[key.get_secret_value() for key in settings.api_keys]
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=list(CORS_HEADERS),
            expose_headers=["X-Request-ID"],
            max_age=600,
        )
    app.add_middleware(observe.Observe)
