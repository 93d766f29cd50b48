"""API keys: ``Authorization: Bearer <key>`` on ``/v1/*`` when keys are configured."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from service.infra import auth
from service.main import create_app
from service.settings import Settings

KEYS = ["key-one", "key-two.with_other~chars"]
URL = "/v1/losses/categorical_crossentropy"
BODY = {"y_true": [[0, 1, 0], [0, 0, 1]], "y_pred": [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]}


def call(settings: Settings, method: str, url: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.request(method, url, **kwargs)

    return asyncio.run(go())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


SECURED = Settings(api_keys=KEYS)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["errors"][0]["loc"] == ["header", "authorization"]
    assert "Traceback" not in response.text
    assert "/service/" not in response.text
    return problem


@pytest.mark.parametrize("key", KEYS)
def test_each_key_is_accepted(key: str) -> None:
    response = call(SECURED, "POST", URL, json=BODY, headers=bearer(key))
    assert response.status_code == 200
    assert response.json()["loss"] == pytest.approx(1.1769392, abs=1e-6)


def test_scheme_is_case_insensitive() -> None:
    response = call(SECURED, "POST", URL, json=BODY, headers={"authorization": "bearer key-one"})
    assert response.status_code == 200


def test_missing_is_401_with_challenge() -> None:
    response = call(SECURED, "POST", URL, json=BODY)
    problem = assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert problem["type"] == "urn:loss-service:problem:unauthorized"
    assert "Authorization: Bearer <key>" in problem["detail"]
    assert problem["instance"] == URL


@pytest.mark.parametrize(
    "value",
    ["key-one", "Basic a2V5LW9uZQ==", "Bearer", "Bearer ", "Bearer key one", "Token key-one"],
)
def test_malformed_is_401(value: str) -> None:
    response = call(SECURED, "POST", URL, json=BODY, headers={"Authorization": value})
    problem = assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "malformed" in problem["detail"]
    assert "key-one" not in response.text
    assert "a2V5" not in response.text


def test_two_authorization_headers_are_malformed() -> None:
    headers = [("Authorization", "Bearer key-one"), ("Authorization", "Bearer key-one")]
    response = call(SECURED, "POST", URL, json=BODY, headers=headers)
    assert_problem(response, 401)


@pytest.mark.parametrize("token", ["wrong", "key-on", "key-one1", "KEY-ONE", "ключ"])
def test_wrong_key_is_403(token: str) -> None:
    headers = {"Authorization": f"Bearer {token}".encode()}
    response = call(SECURED, "POST", URL, json=BODY, headers=headers)
    problem = assert_problem(response, 403)
    assert problem["type"] == "urn:loss-service:problem:forbidden"
    assert "www-authenticate" not in response.headers
    assert token not in response.text


@pytest.mark.parametrize(
    ("method", "url"),
    [("GET", "/v1/losses"), ("GET", "/v1/metrics"), ("POST", "/v1/evaluate"), ("GET", "/v1")],
)
def test_every_v1_path_is_protected(method: str, url: str) -> None:
    assert call(SECURED, method, url).status_code == 401


@pytest.mark.parametrize(
    "url",
    ["/healthz", "/metrics", "/docs", "/redoc", "/openapi.json", "/static/docs/swagger-ui.css"],
)
def test_open_paths(url: str) -> None:
    assert call(SECURED, "GET", url).status_code == 200


def test_unknown_paths_outside_v1_are_404_not_401() -> None:
    assert call(SECURED, "GET", "/v2/losses").status_code == 404
    assert call(SECURED, "GET", "/v1x").status_code == 404


def test_no_keys_means_no_auth() -> None:
    response = call(Settings(), "POST", URL, json=BODY)
    assert response.status_code == 200
    response = call(Settings(), "POST", URL, json=BODY, headers=bearer("anything"))
    assert response.status_code == 200


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOSS_SERVICE_API_KEYS", "env-key-1,env-key-2")
    settings = Settings()
    assert call(settings, "POST", URL, json=BODY, headers=bearer("env-key-2")).status_code == 200
    assert call(settings, "POST", URL, json=BODY, headers=bearer("env-key-3")).status_code == 403


def test_body_limit_still_answers_413_with_auth() -> None:
    settings = Settings(api_keys=KEYS, max_body_bytes=1000)
    response = call(
        settings,
        "POST",
        URL,
        content=b"x" * 5000,
        headers={
            **bearer("key-one"),
            "content-type": "application/json",
        },
    )
    assert response.status_code == 413


def test_streamed_body_passes_through_auth() -> None:
    """A chunked (streamed) body reaches the route through the middleware, and the limit
    is still enforced while it streams."""

    async def chunks(payload: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 7):
            yield payload[i : i + 7]

    import orjson

    payload = orjson.dumps(BODY)
    headers = {**bearer("key-one"), "content-type": "application/json"}
    ok = call(SECURED, "POST", URL, content=chunks(payload), headers=headers)
    assert ok.status_code == 200
    small = Settings(api_keys=KEYS, max_body_bytes=20)
    refused = call(small, "POST", URL, content=chunks(payload), headers=headers)
    assert refused.status_code == 413


def test_middleware_needs_keys() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError

    with pytest.raises(ValueError, match="at least one key"):
        auth.BearerAuth(app, keys=[])


def test_every_key_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: the first key matching still compares against all the others."""
    compared: list[bytes] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    keys = ["k1", "k2", "k3"]
    response = call(Settings(api_keys=keys), "GET", "/v1/losses", headers=bearer("k1"))
    assert response.status_code == 200
    assert compared == [b"k1", b"k2", b"k3"]
