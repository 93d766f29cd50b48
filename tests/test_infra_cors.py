"""CORS: none by default; the configured origins only, preflights never need a key."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from service.main import create_app
from service.settings import Settings

ORIGIN = "https://app.example"
URL = "/v1/losses/categorical_crossentropy"
BODY = {"y_true": [[0, 1, 0], [0, 0, 1]], "y_pred": [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]}
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def call(settings: Settings, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.request(method, url, **kwargs)

    return asyncio.run(go())


def test_no_cors_by_default() -> None:
    response = call(Settings(), "POST", URL, json=BODY, headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_configured_origin() -> None:
    settings = Settings(cors_origins=[ORIGIN])
    response = call(settings, "POST", URL, json=BODY, headers={"Origin": ORIGIN})
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()
    other = call(settings, "POST", URL, json=BODY, headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_preflight_needs_no_key() -> None:
    settings = Settings(cors_origins=[ORIGIN], api_keys=["k"])
    response = call(settings, "OPTIONS", URL, headers=PREFLIGHT)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in response.headers["access-control-allow-headers"].lower()


def test_refusals_are_readable_by_the_page() -> None:
    settings = Settings(cors_origins=[ORIGIN], api_keys=["k"])
    response = call(settings, "POST", URL, json=BODY, headers={"Origin": ORIGIN})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == ORIGIN


def test_a_page_may_send_batches_and_delete_evaluations(tmp_path: Path) -> None:
    settings = Settings(cors_origins=[ORIGIN], data_dir=tmp_path)
    for method in ("PUT", "DELETE"):
        preflight = {**PREFLIGHT, "Access-Control-Request-Method": method}
        response = call(settings, "OPTIONS", "/v1/evaluations/e/batches/b", headers=preflight)
        assert response.status_code == 200, (method, response.text)
        assert method in response.headers["access-control-allow-methods"]
    created = call(settings, "POST", "/v1/evaluations", json={}, headers={"Origin": ORIGIN})
    assert created.status_code == 201
    exposed = created.headers["access-control-expose-headers"].lower()
    assert "location" in exposed and "retry-after" in exposed


def test_a_page_may_send_head_where_it_may_send_get() -> None:
    settings = Settings(api_keys=["k"], cors_origins=[ORIGIN])
    preflight = {**PREFLIGHT, "Access-Control-Request-Method": "HEAD"}
    response = call(settings, "OPTIONS", "/v1/losses", headers=preflight)
    assert response.status_code == 200
    assert "HEAD" in response.headers["access-control-allow-methods"]
    head = call(
        settings, "HEAD", "/v1/losses", headers={"Origin": ORIGIN, "Authorization": "Bearer k"}
    )
    assert head.status_code == 200 and head.content == b""
    assert head.headers["access-control-allow-origin"] == ORIGIN


def test_a_refused_preflight_is_a_problem_json_400_saying_what_was_refused() -> None:
    settings = Settings(cors_origins=[ORIGIN])
    for headers, field, fragment in [
        ({**PREFLIGHT, "Origin": "https://evil.example"}, "origin", "origin"),
        (
            {**PREFLIGHT, "Access-Control-Request-Method": "PATCH"},
            "access-control-request-method",
            "method",
        ),
    ]:
        response = call(settings, "OPTIONS", URL, headers=headers)
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        document = response.json()
        assert f"The CORS preflight is refused ({fragment}" in document["detail"]
        assert "LOSS_SERVICE_CORS_ORIGINS" in document["detail"]
        assert document["errors"][0]["loc"] == ["header", field]
        assert "access-control-allow-methods" in response.headers  # its CORS headers kept
    private = {**PREFLIGHT, "Access-Control-Request-Private-Network": "true"}
    response = call(settings, "OPTIONS", URL, headers=private)
    assert response.status_code == 400
    assert response.json()["errors"][0]["loc"] == [
        "header",
        "access-control-request-private-network",
    ]
    assert "a private-network request is not allowed" in response.json()["detail"]
