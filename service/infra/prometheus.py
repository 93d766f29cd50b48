"""Prometheus metrics, served at ``GET /metrics``.

Exposed (besides the client library's ``process_*`` and ``python_*`` metrics when the
service runs as one process):

- ``loss_service_requests_total{method, route, status}``: requests answered;
- ``loss_service_request_duration_seconds{method, route}``: latency histogram;
- ``loss_service_request_body_bytes{route}``: histogram of request bodies received;
- ``loss_service_requests_in_progress``: requests being served now;
- ``loss_service_computations_total{kind, name, status}``: compute requests, ``kind``
  ``loss`` or ``metric`` with the loss's or metric's ``name`` from the path, or
  ``evaluate`` (named ``evaluate``);
- ``loss_service_warnings_total{code}``: diagnoses returned, by warning code, counted by
  ``record_warnings``, which the routes call.

``route`` is the path template (``/v1/losses/{name}``), never the path itself;
unknown paths are ``<unmatched>`` and unknown names ``<unknown>``, so a caller cannot
create new series.

Several worker processes: the values live in files of ``PROMETHEUS_MULTIPROC_DIR``
(which ``loss-service serve --workers N`` creates and removes when N > 1, and which
must be set before this module is first imported) and ``/metrics`` adds them up
across workers with a ``MultiProcessCollector``.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from starlette.responses import Response

PATH: Final = "/metrics"
UNMATCHED: Final = "<unmatched>"
UNKNOWN: Final = "<unknown>"
OTHER_CODE: Final = "other"

#: Whether values are kept in ``PROMETHEUS_MULTIPROC_DIR`` (decided by the client
#: library when it was imported).
MULTIPROCESS: Final[bool] = bool(getattr(values.ValueClass, "_multiprocess", False))

_KiB = 1024

REQUESTS = Counter(
    "loss_service_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "loss_service_request_duration_seconds",
    "Time from the request's arrival to the end of its response, by route template.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REQUEST_BYTES = Histogram(
    "loss_service_request_body_bytes",
    "Request body bytes received, by route template.",
    ["route"],
    buckets=tuple(float(_KiB * 4**i) for i in range(10)),  # 1 KiB to 256 MiB
)
IN_PROGRESS = Gauge(
    "loss_service_requests_in_progress",
    "Requests being served.",
    multiprocess_mode="livesum",
)
COMPUTATIONS = Counter(
    "loss_service_computations",
    "Compute requests by kind (loss, metric, evaluate), loss or metric name, and status.",
    ["kind", "name", "status"],
)
WARNINGS = Counter(
    "loss_service_warnings",
    "Diagnoses (warnings) returned in responses, by warning code.",
    ["code"],
)
CONNECTIONS_REFUSED = Counter(
    "loss_service_connections_refused",
    "Connections answered and closed by the server's guard, by reason (connections over "
    "the cap, header limits, header timeout, idle connections that sent nothing).",
    ["reason"],
)

#: What the service labels (set by :func:`configure`): the compute routes, template ->
#: (kind, the names it knows, or None for evaluate), and the warning codes it knows.
_COMPUTE: dict[str, tuple[str, Collection[str] | None]] = {}
_CODES: set[str] = set()


def configure(
    *,
    warning_codes: Iterable[str],
    compute_routes: Mapping[str, tuple[str, Collection[str] | None]],
) -> None:
    """Name what the metrics label: the warning codes (each exposed from the start, at
    0) and the compute routes with the loss or metric names each knows."""
    _CODES.clear()
    _CODES.update(warning_codes)
    for code in _CODES:
        WARNINGS.labels(code)
    _COMPUTE.clear()
    _COMPUTE.update(compute_routes)


def record_warnings(codes: Iterable[str]) -> None:
    """Count the warnings of one response, given their codes (codes the service did not
    name in :func:`configure` are counted as ``other``)."""
    for code in codes:
        WARNINGS.labels(code if code in _CODES else OTHER_CODE).inc()


#: The children (one per label set) of the metrics ``observe`` records, by label values:
#: the objects ``labels()`` returns (the same each time: no child is ever removed),
#: without its checks and its lock on every request.
_requests: dict[tuple[str, str, str], Counter] = {}
_latency: dict[tuple[str, str], Histogram] = {}
_request_bytes: dict[str, Histogram] = {}
_computations: dict[tuple[str, str, str], Counter] = {}


def observe(
    *,
    method: str,
    route: str,
    path_params: Mapping[str, str],
    status: int,
    duration_s: float,
    request_bytes: int,
) -> None:
    """Record one answered request."""
    status_label = str(status)
    key = (method, route, status_label)
    requests = _requests.get(key)
    if requests is None:
        requests = _requests.setdefault(key, REQUESTS.labels(*key))
    requests.inc()
    latency = _latency.get((method, route))
    if latency is None:
        latency = _latency.setdefault((method, route), LATENCY.labels(method, route))
    latency.observe(duration_s)
    body = _request_bytes.get(route)
    if body is None:
        body = _request_bytes.setdefault(route, REQUEST_BYTES.labels(route))
    body.observe(request_bytes)
    compute = _COMPUTE.get(route)
    if compute is not None and method == "POST":
        kind, known = compute
        if known is None:
            name = kind
        else:
            given = path_params.get("name", "")
            name = given if given in known else UNKNOWN
        labels = (kind, name, status_label)
        computations = _computations.get(labels)
        if computations is None:
            computations = _computations.setdefault(labels, COMPUTATIONS.labels(*labels))
        computations.inc()


def _forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of worker processes that are gone (killed, or restarted by
    the server), so ``requests_in_progress`` counts only the living."""
    for name in os.listdir(directory):
        if not name.startswith("gauge_live"):
            continue
        pid_text = name.rsplit("_", 1)[-1].removesuffix(".db")
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass  # another user's process with that id: alive


def exposition() -> bytes:
    """The metrics in Prometheus' text format, added up over the workers if several."""
    if MULTIPROCESS:
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            _forget_dead_workers(directory)
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
        return generate_latest(collected)
    return generate_latest(REGISTRY)


def metrics_endpoint() -> Response:
    """``GET /metrics``: Prometheus' text format."""
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
