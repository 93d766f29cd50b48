"""Infrastructure: what running the service in production needs, and nothing of its domain.

- ``middleware``: ``Operations``, the one middleware of them all: request ids
  (``X-Request-ID``), CORS when origins are configured, ``Authorization: Bearer <key>``
  on ``/v1/*`` when API keys are configured (``auth``), one access log line per request
  and the Prometheus metrics of every request; it also answers the compute routes
  (``service.api.compute.ROUTES``) directly, with ``service.api.compute.serve``;
- ``prometheus``: ``GET /metrics`` (also across worker processes) and
  ``record_warnings``, which the routes call with the warning codes they return;
- ``logs``: the logging configuration (JSON or console) that the command line gives
  uvicorn.

``service.main.create_app`` installs them, handing them what they label (the compute
routes and their names, the warning codes): nothing here imports the registry, the
diagnoses or the API. The import-linter contract in ``make test`` keeps it so.
"""
