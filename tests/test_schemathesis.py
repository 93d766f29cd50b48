"""Property-based API tests: schemathesis drives the app in process from its own spec.

Every operation gets a bounded, deterministic set of generated requests (schemathesis'
examples, coverage and fuzzing phases; valid and invalid data; JSON and binary bodies);
each response must be no 5xx, and have a documented status code, content type and body
schema. About 1,100 requests, a few seconds.

The last test pins what schemathesis found, as plain requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.main import create_app
from service.settings import Settings

MAX_EXAMPLES = 25


class _KeepTheResponse:
    """ASGI wrapper: Starlette re-raises an unhandled exception after it has sent the
    500 answer; let schemathesis see that answer (and report it with the request that
    caused it) instead of the exception."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started = False

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            if not started:
                raise


schema = schemathesis.openapi.from_asgi("/openapi.json", _KeepTheResponse(create_app(Settings())))

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
def test_api_conforms_to_its_spec(case: Any) -> None:
    case.call_and_validate(checks=CHECKS)


# --- found by schemathesis -------------------------------------------------------------------

VALID = {"y_true": [[0, 1, 1], [1, 0, 0]], "y_pred": [[0.2, 0.7, 0.6], [0.9, 0.3, 0.1]]}


@pytest.mark.parametrize("field", ["y_true", "y_pred"])
@pytest.mark.parametrize(
    "path", ["/v1/losses/binary_crossentropy", "/v1/metrics/accuracy", "/v1/evaluate", "heads"]
)
def test_a_null_array_is_a_422(make_client: Callable[..., Any], path: str, field: str) -> None:
    client = make_client(raise_app_exceptions=False)
    body: dict[str, Any] = {**VALID, field: None}
    if path == "heads":
        path, body = "/v1/evaluate", {"outputs": {"head": body}}
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in response.json()["detail"]


@pytest.mark.parametrize("datatype", [{}, [], None, 32])
def test_a_datatype_that_is_not_a_name_is_a_422(
    make_client: Callable[..., Any], datatype: Any
) -> None:
    client = make_client(raise_app_exceptions=False)
    tensor = {"name": "y_pred", "datatype": datatype, "shape": [1], "data": [0.5]}
    response = client.post("/v2/models/binary_crossentropy/infer", json={"inputs": [tensor]})
    assert response.status_code == 422, response.text
    assert "datatype" in response.json()["error"]
