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

One process: the per-request series (requests, latency, body bytes, computations,
requests in progress) are plain numbers that :func:`observe`, :func:`request_started` and
:func:`request_finished` update on the event loop, their one writer, without the client
library's lock on each value; a collector reads them when ``/metrics`` is scraped.

Several worker processes: the values live in files of ``PROMETHEUS_MULTIPROC_DIR``
(which ``loss-service serve --workers N`` creates and removes when N > 1, and which
must be set before this module is first imported) and ``/metrics`` adds them up
across workers with a ``MultiProcessCollector``.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Collection, Iterable, Iterator, Mapping
from itertools import accumulate
from typing import Any, Final

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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString
from starlette.responses import Response

PATH: Final = "/metrics"
UNMATCHED: Final = "<unmatched>"
UNKNOWN: Final = "<unknown>"
OTHER_CODE: Final = "other"

#: Whether values are kept in ``PROMETHEUS_MULTIPROC_DIR`` (decided by the client
#: library when it was imported).
MULTIPROCESS: Final[bool] = bool(getattr(values.ValueClass, "_multiprocess", False))

_KiB = 1024

_REQUESTS_HELP = "HTTP requests answered, by method, route template and status code."
_LATENCY_HELP = "Time from the request's arrival to the end of its response, by route template."
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_BYTES_HELP = "Request body bytes received, by route template."
_BYTES_BUCKETS = tuple(float(_KiB * 4**i) for i in range(10))  # 1 KiB to 256 MiB
_IN_PROGRESS_HELP = "Requests being served."
_COMPUTATIONS_HELP = (
    "Compute requests by kind (loss, metric, evaluate), loss or metric name, and status."
)
#: The per-request series: the client library's (their values in files) with several
#: workers; with one, these are not registered and ``_LOCAL`` holds and exposes them.
_PER_REQUEST_REGISTRY = REGISTRY if MULTIPROCESS else None

REQUESTS = Counter(
    "loss_service_requests",
    _REQUESTS_HELP,
    ["method", "route", "status"],
    registry=_PER_REQUEST_REGISTRY,
)
LATENCY = Histogram(
    "loss_service_request_duration_seconds",
    _LATENCY_HELP,
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
    registry=_PER_REQUEST_REGISTRY,
)
REQUEST_BYTES = Histogram(
    "loss_service_request_body_bytes",
    _BYTES_HELP,
    ["route"],
    buckets=_BYTES_BUCKETS,
    registry=_PER_REQUEST_REGISTRY,
)
IN_PROGRESS = Gauge(
    "loss_service_requests_in_progress",
    _IN_PROGRESS_HELP,
    multiprocess_mode="livesum",
    registry=_PER_REQUEST_REGISTRY,
)
COMPUTATIONS = Counter(
    "loss_service_computations",
    _COMPUTATIONS_HELP,
    ["kind", "name", "status"],
    registry=_PER_REQUEST_REGISTRY,
)
WARNINGS = Counter(
    "loss_service_warnings",
    "Diagnoses (warnings) returned in responses (a streaming batch's once, when it is "
    "stored), by warning code.",
    ["code"],
)
CONNECTIONS_REFUSED = Counter(
    "loss_service_connections_refused",
    "Connections answered and closed by the server's guard, by reason (connections over "
    "the cap, header limits, header timeout, idle connections that sent nothing, requests "
    "that are not HTTP).",
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


#: With several workers, the children (one per label set) of the metrics ``observe``
#: records, by label values: the objects ``labels()`` returns (the same each time: no
#: child is ever removed), without its checks on every request.
_requests: dict[tuple[str, str, str], Counter] = {}
_latency: dict[tuple[str, str], Histogram] = {}
_request_bytes: dict[str, Histogram] = {}
_computations: dict[tuple[str, str, str], Counter] = {}


class _Histogram:
    """One histogram series: counts per bucket (not cumulative; the last one past every
    bound), their sum, and when it was created."""

    __slots__ = ("counts", "created", "total")

    def __init__(self, bounds: int) -> None:
        self.counts = [0] * (bounds + 1)
        self.total = 0.0
        self.created = time.time()

    def observe(self, bounds: tuple[float, ...], value: float) -> None:
        self.counts[bisect_left(bounds, value)] += 1
        self.total += value

    def add_to(
        self, family: HistogramMetricFamily, names: list[str], labels: list[str], le: list[str]
    ) -> None:
        """Add this series (label ``names`` and values) to ``family``, ``le`` being its
        buckets' bounds as labels."""
        cumulative = [float(n) for n in accumulate(self.counts)]
        family.add_metric(labels, list(zip(le, cumulative, strict=True)), self.total)
        created = dict(zip(names, labels, strict=True))
        family.samples.append(Sample(family.name + "_created", created, self.created))


def _le(bounds: tuple[float, ...]) -> list[str]:
    """The ``le`` labels of these bucket bounds, as the client library writes them."""
    return [floatToGoString(bound) for bound in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]


class _Local(Collector):
    """The per-request series of one process: plain numbers, updated on the event loop
    (their one writer) without locks, read by :meth:`collect` when scraped (from any
    thread: each table is copied whole first)."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], list[float]] = {}
        self.latency: dict[tuple[str, str], _Histogram] = {}
        self.body: dict[str, _Histogram] = {}
        self.computations: dict[tuple[str, str, str], list[float]] = {}
        self.in_progress = 0

    @staticmethod
    def count(table: dict[Any, list[float]], key: Any) -> None:
        series = table.get(key)
        if series is None:
            table[key] = [1.0, time.time()]
        else:
            series[0] += 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "loss_service_requests", _REQUESTS_HELP, labels=["method", "route", "status"]
        )
        for key, (value, created) in list(self.requests.items()):
            requests.add_metric(key, value, created=created)
        yield requests
        names = ["method", "route"]
        latency = HistogramMetricFamily(
            "loss_service_request_duration_seconds", _LATENCY_HELP, labels=names
        )
        for (method, route), series in list(self.latency.items()):
            series.add_to(latency, names, [method, route], _LATENCY_LE)
        yield latency
        body = HistogramMetricFamily(
            "loss_service_request_body_bytes", _BYTES_HELP, labels=["route"]
        )
        for route, series in list(self.body.items()):
            series.add_to(body, ["route"], [route], _BYTES_LE)
        yield body
        yield GaugeMetricFamily(
            "loss_service_requests_in_progress", _IN_PROGRESS_HELP, value=self.in_progress
        )
        computations = CounterMetricFamily(
            "loss_service_computations", _COMPUTATIONS_HELP, labels=["kind", "name", "status"]
        )
        for key, (value, created) in list(self.computations.items()):
            computations.add_metric(key, value, created=created)
        yield computations


_LATENCY_LE = _le(_LATENCY_BUCKETS)
_BYTES_LE = _le(_BYTES_BUCKETS)
_LOCAL = _Local()
if not MULTIPROCESS:
    REGISTRY.register(_LOCAL)


def request_started() -> None:
    """A request is being served (on the event loop)."""
    if MULTIPROCESS:
        IN_PROGRESS.inc()
    else:
        _LOCAL.in_progress += 1


def request_finished() -> None:
    """A request's answer is over (on the event loop)."""
    if MULTIPROCESS:
        IN_PROGRESS.dec()
    else:
        _LOCAL.in_progress -= 1


def _computation(route: str, method: str, path_params: Mapping[str, str]) -> tuple[str, str] | None:
    """The kind and name a compute request is counted under, if it is one."""
    compute = _COMPUTE.get(route)
    if compute is None or method != "POST":
        return None
    kind, known = compute
    if known is None:
        return kind, kind
    given = path_params.get("name", "")
    return kind, given if given in known else UNKNOWN


def observe(
    *,
    method: str,
    route: str,
    path_params: Mapping[str, str],
    status: int,
    duration_s: float,
    request_bytes: int,
) -> None:
    """Record one answered request (on the event loop)."""
    status_label = str(status)
    computation = _computation(route, method, path_params)
    if not MULTIPROCESS:
        local = _LOCAL
        local.count(local.requests, (method, route, status_label))
        latency = local.latency.get((method, route))
        if latency is None:
            latency = local.latency[(method, route)] = _Histogram(len(_LATENCY_BUCKETS))
        latency.observe(_LATENCY_BUCKETS, duration_s)
        body = local.body.get(route)
        if body is None:
            body = local.body[route] = _Histogram(len(_BYTES_BUCKETS))
        body.observe(_BYTES_BUCKETS, request_bytes)
        if computation is not None:
            local.count(local.computations, (*computation, status_label))
        return
    key = (method, route, status_label)
    requests = _requests.get(key)
    if requests is None:
        requests = _requests.setdefault(key, REQUESTS.labels(*key))
    requests.inc()
    latency_child = _latency.get((method, route))
    if latency_child is None:
        latency_child = _latency.setdefault((method, route), LATENCY.labels(method, route))
    latency_child.observe(duration_s)
    body_child = _request_bytes.get(route)
    if body_child is None:
        body_child = _request_bytes.setdefault(route, REQUEST_BYTES.labels(route))
    body_child.observe(request_bytes)
    if computation is not None:
        labels = (*computation, status_label)
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
