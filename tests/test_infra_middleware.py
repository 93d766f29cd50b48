"""``Operations``: request id, CORS, API keys, metrics and access log in one middleware,
with cheap per-request work (the behaviour itself: test_ops_auth, _cors, _logs, _prometheus)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import httpx
import pytest

from service.infra import logs, middleware, requestid
from service.infra.templates import UNMATCHED, RouteTemplates
from service.main import create_app
from service.settings import Settings

URL = "/v1/losses/categorical_crossentropy"
BODY = {"y_true": [[0, 1, 0], [0, 0, 1]], "y_pred": [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]}


def call(method: str, url: str, settings: Settings | None = None, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(settings or Settings()))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.request(method, url, **kw)

    return asyncio.run(go())


@pytest.mark.parametrize(
    "settings",
    [Settings(), Settings(api_keys=["k"]), Settings(api_keys=["k"], cors_origins=["https://a.b"])],
    ids=["default", "keys", "keys and cors"],
)
def test_one_ops_middleware_whatever_is_configured(settings: Settings) -> None:
    app = create_app(settings)
    assert [m.cls for m in app.user_middleware] == [middleware.Operations]


def test_route_templates() -> None:
    app = create_app(Settings())
    routes = RouteTemplates()
    assert routes.resolve(app, "/v1/losses") == ("/v1/losses", {})
    assert routes.resolve(app, "/healthz") == ("/healthz", {})
    assert routes.resolve(app, "/metrics") == ("/metrics", {})
    assert routes.resolve(app, "/v1/losses/x") == ("/v1/losses/{name}", {"name": "x"})
    assert routes.resolve(app, "/v1/metrics/accuracy") == (
        "/v1/metrics/{name}",
        {"name": "accuracy"},
    )
    assert routes.resolve(app, "/static/docs/a/b.css") == (
        "/static/docs/{path}",
        {"path": "a/b.css"},
    )
    for path in ["/v1/losses/x/y", "/v1/losses/", "/v1", "/nowhere", "/healthz/", ""]:
        assert routes.resolve(app, path) == (UNMATCHED, {}), path


def test_new_request_ids_are_uuid4_hex() -> None:
    ids = {requestid.new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    for value in ids:
        parsed = uuid.UUID(hex=value)
        assert parsed.hex == value
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_a_forked_worker_makes_other_request_ids_than_its_parent() -> None:
    """Ids come from a generator seeded again in every child process: two workers forked
    from one parent never repeat each other's ids."""
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.write(write, " ".join(requestid.new_request_id() for _ in range(50)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    parent = {requestid.new_request_id() for _ in range(50)}
    assert len(child) == 50 and not child & parent


def test_access_fields_are_not_gathered_when_the_line_is_not_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gathered: list[object] = []
    real = middleware._logged_path

    def spy(scope: Any) -> str:
        gathered.append(scope)
        return real(scope)

    monkeypatch.setattr(middleware, "_logged_path", spy)
    caplog.set_level(logging.WARNING, logger=logs.ACCESS_LOGGER)
    assert not logs.access_enabled()
    assert call("POST", URL, json=BODY).status_code == 200
    assert gathered == []
    caplog.set_level(logging.INFO, logger=logs.ACCESS_LOGGER)
    assert logs.access_enabled()
    assert call("POST", URL, json=BODY).status_code == 200
    assert len(gathered) == 1


def test_refused_preflighted_and_answered_requests_all_get_a_request_id() -> None:
    settings = Settings(api_keys=["k"], cors_origins=["https://a.b"])
    refused = call("POST", URL, settings, json=BODY, headers={"X-Request-ID": "r-1"})
    assert refused.status_code == 401
    assert refused.headers.get_list("x-request-id") == ["r-1"]
    preflight = call(
        "OPTIONS",
        URL,
        settings,
        headers={
            "Origin": "https://a.b",
            "Access-Control-Request-Method": "POST",
            "X-Request-ID": "r-2",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers.get_list("x-request-id") == ["r-2"]
    answered = call(
        "POST",
        URL,
        settings,
        json=BODY,
        headers={"Authorization": "Bearer k", "X-Request-ID": "r-3"},
    )
    assert answered.status_code == 200
    assert answered.headers.get_list("x-request-id") == ["r-3"]


# ---- the direct path of the compute routes -------------------------------------------------

REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", URL, {"json": BODY}),
    ("POST", "/v1/losses/sparse_categorical_crossentropy", {"json": {**BODY, "y_true": [1, 2]}}),
    ("POST", "/v1/metrics/accuracy", {"json": BODY}),
    ("POST", "/v1/evaluate", {"json": {**BODY, "metrics": ["accuracy"]}}),
    ("POST", "/v1/evaluate", {"json": {"outputs": {"a": BODY, "b": BODY}}}),
    ("POST", "/v1/losses/no_such_loss", {"json": BODY}),
    ("POST", "/v1/metrics/no_such_metric", {"json": BODY}),
    ("POST", URL, {"content": b"{", "headers": {"Content-Type": "application/json"}}),
    ("POST", URL, {"content": b"", "headers": {"Content-Type": "application/json"}}),
    ("POST", URL, {"content": b"{}", "headers": {"Content-Type": "text/plain"}}),
    ("POST", URL, {"json": {"y_true": [[0, 1]], "y_pred": [[0.5, 0.5], [1, 0]]}}),
    ("POST", URL, {"json": {**BODY, "y_pred": "nope"}}),
    ("GET", "/v1/evaluate", {}),
    ("POST", "/v1/losses/categorical_crossentropy/", {"json": BODY}),
    ("POST", "/v1/losses", {"json": BODY}),
]


def _answers(direct: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[httpx.Response], int]:
    """The answers to ``REQUESTS`` with the direct path or without it, and how many
    requests the direct path served."""
    from service.api import compute

    served = 0
    serve = compute.serve

    async def counted(*args: Any) -> bool:
        nonlocal served
        served += 1
        return await serve(*args)

    with monkeypatch.context() as patched:
        patched.setattr(compute, "serve", counted)
        if not direct:
            patched.setattr(compute, "ROUTES", {})
        app = create_app(Settings())

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return [await c.request(method, url, **kw) for method, url, kw in REQUESTS]

    return asyncio.run(go()), served


def test_compute_routes_are_answered_directly_as_their_routes_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (direct, served), (routed, not_served) = (
        _answers(True, monkeypatch),
        _answers(False, monkeypatch),
    )
    assert (served, not_served) == (12, 0)  # every POST to a compute route's template
    statuses = [r.status_code for r in direct]
    assert statuses == [200, 200, 200, 200, 200, 404, 404, 400, 400, 415, 422, 422, 405, 404, 405]
    for (method, url, _), one, other in zip(REQUESTS, direct, routed, strict=True):
        assert one.status_code == other.status_code, (method, url)
        assert one.content == other.content, (method, url)
        for name in ("content-type", "connection", "allow", "location"):
            assert one.headers.get(name) == other.headers.get(name), (method, url, name)
        assert len(one.headers.get_list("x-request-id")) == 1


def test_the_direct_routes_are_the_apps_compute_routes() -> None:
    from fastapi.routing import iter_route_contexts

    from service.api import compute

    served = {
        context.path: context.endpoint.__name__
        for context in iter_route_contexts(create_app(Settings()).routes)
        if "POST" in (context.methods or ()) and context.endpoint is not None
    }
    assert {template: served.get(template) for template in compute.ROUTES} == {
        "/v1/losses/{name}": "compute_loss",
        "/v1/metrics/{name}": "compute_metric",
        "/v1/evaluate": "evaluate",
    }


HEAD_PATHS = ["/healthz", "/v1/losses", "/v1/metrics", "/docs", "/v2", "/v1/evaluations"]


@pytest.mark.parametrize("path", HEAD_PATHS)
def test_head_is_answered_wherever_get_is_without_the_body(path: str) -> None:
    head, get = call("HEAD", path), call("GET", path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    for name in ("content-type", "content-length"):
        assert head.headers[name] == get.headers[name], name
    assert head.headers["x-request-id"]


def test_head_where_get_is_not_served_is_the_same_405() -> None:
    response = call("HEAD", URL)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.content == b""


def test_allow_names_head_wherever_get_is() -> None:
    assert call("PATCH", "/v1/losses").headers["allow"] == "GET, HEAD"
    assert call("PATCH", "/v1/evaluations").headers["allow"] == "GET, HEAD, POST"
    assert call("PATCH", URL).headers["allow"] == "POST"


def test_head_is_counted_as_head() -> None:
    from prometheus_client import REGISTRY

    labels = {"method": "HEAD", "route": "/v1/losses", "status": "200"}
    before = REGISTRY.get_sample_value("loss_service_requests_total", labels) or 0.0
    call("HEAD", "/v1/losses")
    assert REGISTRY.get_sample_value("loss_service_requests_total", labels) == before + 1


def test_head_behind_api_keys_needs_the_key() -> None:
    settings = Settings(api_keys=["k"])
    assert call("HEAD", "/v1/losses", settings).status_code == 401
    headers = {"Authorization": "Bearer k"}
    assert call("HEAD", "/v1/losses", settings, headers=headers).status_code == 200


def test_head_through_a_real_server_sends_no_body() -> None:
    from tests.servers import serve_in_thread

    with serve_in_thread(create_app(Settings())) as base, httpx.Client(base_url=base) as client:
        head = client.head("/v1/losses")
        get = client.get("/v1/losses")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == get.headers["content-length"]
        # The connection is still usable: nothing of a body was left on it.
        assert client.get("/healthz").status_code == 200
