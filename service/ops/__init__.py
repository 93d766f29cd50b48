"""Operations: what running the service in production needs, installed by ``install``.

- ``middleware``: ``Operations``, the one middleware of them all: request ids
  (``X-Request-ID``), CORS when origins are configured, ``Authorization: Bearer <key>``
  on ``/v1/*`` when API keys are configured (``auth``), one access log line per request
  and the Prometheus metrics of every request; it also answers the compute routes
  (``service.api.compute.ROUTES``) directly, with ``service.api.compute.serve``;
- ``prometheus``: ``GET /metrics`` (also across worker processes) and
  ``record_warnings``, which the routes call with the warning codes they return;
- ``logs``: the logging configuration (JSON or console) that the command line gives
  uvicorn.

Call ``install(app, settings)`` in ``create_app`` before adding any middleware that must
wrap everything (``DrainRequestBody``).
"""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from service.settings import Settings


def install(app: FastAPI, settings: Settings) -> None:
    """Add ``/metrics`` and the ``Operations`` middleware (request id, CORS if
    ``cors_origins``, API keys if ``api_keys``, access log, metrics, and the direct path
    of the compute routes)."""
    # Imported here: the metrics' storage is chosen when prometheus_client is first
    # imported, which must follow the command line's PROMETHEUS_MULTIPROC_DIR.
    from service.api import compute
    from service.ops import middleware, prometheus

    app.add_api_route(
        prometheus.PATH,
        prometheus.metrics_endpoint,
        methods=["GET"],
        include_in_schema=False,
        response_model=None,
    )
    app.add_middleware(
        middleware.Operations,
        api_keys=[key.get_secret_value() for key in settings.api_keys],
        cors_origins=settings.cors_origins,
        direct={
            template: partial(compute.serve, operation_of)
            for template, operation_of in compute.ROUTES.items()
        },
    )
