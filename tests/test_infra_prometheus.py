"""``GET /metrics``: requests by route and status, latency, body sizes, computations by
name, warnings by code (in this process; across workers: tests/test_ops_server.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from service import diagnostics
from service.infra import prometheus
from service.main import create_app
from service.settings import Settings

BODY = {"y_true": [[0, 1, 0], [0, 0, 1]], "y_pred": [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]}


def calls(
    *requests: tuple[str, str, dict[str, Any]], settings: Settings | None = None
) -> list[httpx.Response]:
    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(settings or Settings()))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return [await c.request(method, url, **kw) for method, url, kw in requests]

    return asyncio.run(go())


def value(metric: str, /, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def test_metrics_endpoint_is_prometheus_text() -> None:
    (response,) = calls(("GET", "/metrics", {}))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {
        "loss_service_requests",
        "loss_service_request_duration_seconds",
        "loss_service_request_body_bytes",
        "loss_service_requests_in_progress",
        "loss_service_warnings",
    } <= names


def test_metrics_is_not_in_the_openapi_document() -> None:
    (response,) = calls(("GET", "/openapi.json", {}))
    assert "/metrics" not in response.json()["paths"]


def test_requests_by_route_template_and_status() -> None:
    route = "/v1/losses/{name}"
    ok = dict(method="POST", route=route, status="200")
    missing = dict(method="POST", route=route, status="404")
    before_ok = value("loss_service_requests_total", **ok)
    before_missing = value("loss_service_requests_total", **missing)
    before_latency = value(
        "loss_service_request_duration_seconds_count", method="POST", route=route
    )
    before_bytes = value("loss_service_request_body_bytes_sum", route=route)
    responses = calls(
        ("POST", "/v1/losses/categorical_crossentropy", {"json": BODY}),
        ("POST", "/v1/losses/binary_crossentropy", {"json": BODY}),
        ("POST", "/v1/losses/no_such_loss", {"json": BODY}),
    )
    assert [r.status_code for r in responses] == [200, 200, 404]
    assert value("loss_service_requests_total", **ok) == before_ok + 2
    assert value("loss_service_requests_total", **missing) == before_missing + 1
    assert (
        value("loss_service_request_duration_seconds_count", method="POST", route=route)
        == before_latency + 3
    )
    # The unknown loss is answered before its body is read: only the others count.
    sent = sum(len(r.request.content) for r in responses[:2])
    assert value("loss_service_request_body_bytes_sum", route=route) == before_bytes + sent


def test_unknown_paths_share_one_label() -> None:
    labels = dict(method="GET", route=prometheus.UNMATCHED, status="404")
    before = value("loss_service_requests_total", **labels)
    calls(("GET", "/a", {}), ("GET", "/b/c", {}))
    assert value("loss_service_requests_total", **labels) == before + 2


def test_computations_by_name() -> None:
    def count(kind: str, name: str, status: str = "200") -> float:
        return value("loss_service_computations_total", kind=kind, name=name, status=status)

    before = {
        "loss": count("loss", "categorical_crossentropy"),
        "metric": count("metric", "accuracy"),
        "evaluate": count("evaluate", "evaluate"),
        "unknown": count("loss", prometheus.UNKNOWN, "404"),
    }
    responses = calls(
        ("POST", "/v1/losses/categorical_crossentropy", {"json": BODY}),
        ("POST", "/v1/metrics/accuracy", {"json": BODY}),
        ("POST", "/v1/evaluate", {"json": BODY}),
        ("POST", "/v1/losses/made_up_name", {"json": BODY}),
        ("GET", "/v1/losses", {}),
    )
    assert [r.status_code for r in responses] == [200, 200, 200, 404, 200]
    assert count("loss", "categorical_crossentropy") == before["loss"] + 1
    assert count("metric", "accuracy") == before["metric"] + 1
    assert count("evaluate", "evaluate") == before["evaluate"] + 1
    assert count("loss", prometheus.UNKNOWN, "404") == before["unknown"] + 1
    assert value("loss_service_computations_total", kind="loss", name="made_up_name") == 0


def test_refused_requests_are_counted_under_their_route() -> None:
    labels = dict(method="POST", route="/v1/evaluate", status="401")
    before = value("loss_service_requests_total", **labels)
    calls(("POST", "/v1/evaluate", {"json": BODY}), settings=Settings(api_keys=["k"]))
    assert value("loss_service_requests_total", **labels) == before + 1


def test_record_warnings() -> None:
    code = next(iter(diagnostics.CODES))
    before = value("loss_service_warnings_total", code=code)
    before_other = value("loss_service_warnings_total", code=prometheus.OTHER_CODE)
    prometheus.record_warnings([code, code, "not_a_code"])
    prometheus.record_warnings(iter(()))
    assert value("loss_service_warnings_total", code=code) == before + 2
    assert value("loss_service_warnings_total", code=prometheus.OTHER_CODE) == before_other + 1


def test_responses_count_their_warnings_every_head_included() -> None:
    code = "multi_hot_labels_with_categorical_loss"
    multi_hot = {"y_true": [[1, 1, 0]], "y_pred": [[0.4, 0.4, 0.2]]}
    before = value("loss_service_warnings_total", code=code)
    calls(
        ("POST", "/v1/losses/categorical_crossentropy", {"json": multi_hot}),
        (
            "POST",
            "/v1/evaluate",
            {"json": {"outputs": {"a": {**multi_hot, "losses": ["categorical_crossentropy"]}}}},
        ),
    )
    assert value("loss_service_warnings_total", code=code) == before + 2


def test_every_warning_code_is_exposed_from_the_start() -> None:
    (response,) = calls(("GET", "/metrics", {}))
    for code in diagnostics.CODES:
        assert f'loss_service_warnings_total{{code="{code}"}}' in response.text


def test_in_progress_counts_the_scrape_itself() -> None:
    (response,) = calls(("GET", "/metrics", {}))
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    (sample,) = families["loss_service_requests_in_progress"].samples
    assert sample.value >= 1
    assert value("loss_service_requests_in_progress") == pytest.approx(0)


def test_a_killed_worker_no_longer_counts_as_in_progress(tmp_path: Path) -> None:
    """A worker killed mid-request (kill -9) leaves its live gauge behind; /metrics drops
    the gauges of processes that are gone, so requests_in_progress counts the living."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    dying = (
        "import os, signal\n"
        "from service.infra import prometheus\n"
        "prometheus.IN_PROGRESS.inc()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    killed = subprocess.run([sys.executable, "-c", dying], env=env, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert list(tmp_path.glob("gauge_live*"))
    scrape = "from service.infra import prometheus\nprint(prometheus.exposition().decode())\n"
    text = subprocess.run(
        [sys.executable, "-c", scrape], env=env, check=True, capture_output=True, text=True
    ).stdout
    in_progress = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "loss_service_requests_in_progress"
    ]
    assert in_progress in ([], [0.0]), text


def test_one_process_series_count_as_the_client_library_does() -> None:
    """In one process the per-request series are plain numbers updated without locks:
    a value on a bucket's bound falls in that bucket, as with the client library."""
    assert not prometheus.MULTIPROCESS
    route = "/test/{bounds}"

    def bucket(le: str) -> float:
        return value(
            "loss_service_request_duration_seconds_bucket", method="GET", route=route, le=le
        )

    for seconds in (0.001, 0.0011, 0.5, 100.0):
        prometheus.observe(
            method="GET",
            route=route,
            path_params={},
            status=200,
            duration_s=seconds,
            request_bytes=1024,
        )
    assert [bucket(le) for le in ("0.001", "0.0025", "0.5", "30.0", "+Inf")] == [1, 2, 3, 3, 4]
    labels = dict(method="GET", route=route)
    assert value("loss_service_request_duration_seconds_count", **labels) == 4
    assert value("loss_service_request_duration_seconds_sum", **labels) == pytest.approx(100.5021)
    assert value("loss_service_request_duration_seconds_created", **labels) > 0
    assert value("loss_service_request_body_bytes_bucket", route=route, le="1024.0") == 4
    assert value("loss_service_requests_total", status="200", **labels) == 4
    before = value("loss_service_requests_in_progress")
    prometheus.request_started()
    assert value("loss_service_requests_in_progress") == before + 1
    prometheus.request_finished()
    assert value("loss_service_requests_in_progress") == before
