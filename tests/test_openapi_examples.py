"""The spec's examples are true: every request example is sent to the service, which must
answer its response example (the same keys; numbers within 1e-6). Every example also fits
its schema."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from service import openapi_export
from service.main import create_app
from service.settings import Settings
from tests.conftest import SyncClient

SPEC = openapi_export.spec()
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
JSON = "application/json"
#: Fields whose values differ from one call to the next: only their presence and type count.
VOLATILE = {"id", "created_at", "updated_at", "received_at"}


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in SPEC["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def _examples(media: dict[str, Any]) -> dict[str, Any]:
    """A media type's examples by name (``example`` as one named ``example``)."""
    if "example" in media:
        return {"example": media["example"]}
    return {name: e["value"] for name, e in media.get("examples", {}).items()}


def _close(expected: Any, got: Any, where: str = "") -> None:
    """``got`` is ``expected``: the same keys and lengths, numbers within 1e-6 (absolute or
    relative), the other values equal (those of :data:`VOLATILE` keys only of one type)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict), (where, got)
        assert set(got) == set(expected), (where, sorted(got), sorted(expected))
        for key, value in expected.items():
            if key in VOLATILE:
                assert type(got[key]) is type(value), (f"{where}.{key}", got[key])
            else:
                _close(value, got[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (where, got, expected)
        for i, (e, g) in enumerate(zip(expected, got, strict=True)):
            _close(e, g, f"{where}[{i}]")
    elif isinstance(expected, float) or (
        isinstance(expected, int) and not isinstance(expected, bool) and isinstance(got, float)
    ):
        assert isinstance(got, int | float) and not isinstance(got, bool), (where, got)
        assert math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-6), (where, got, expected)
    else:
        assert got == expected and type(got) is type(expected), (where, got, expected)


def _client(tmp: Path, **settings: Any) -> SyncClient:
    return SyncClient(create_app(Settings(data_dir=tmp, **settings)), raise_app_exceptions=False)


@pytest.fixture(scope="module")
def clients(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SyncClient]]:
    """A client of the service with its defaults."""
    made = {"default": _client(tmp_path_factory.mktemp("default"))}
    yield made
    for client in made.values():
        client.close()


def test_the_served_spec_holds_these_examples(clients: dict[str, SyncClient]) -> None:
    assert clients["default"].get("/openapi.json").json() == SPEC


# ---- every operation has its examples -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [pytest.param(*o, id=o[2]["operationId"]) for o in _operations()],
)
def test_every_operation_has_examples(method: str, path: str, operation: dict[str, Any]) -> None:
    if path.startswith("/v2"):
        pytest.skip("the Open Inference Protocol's operations: their own shapes")
    body = operation.get("requestBody", {}).get("content", {})
    if JSON in body:
        assert _examples(body[JSON]), "no request example"
    for status, response in operation["responses"].items():
        content = response.get("content", {})
        if status.startswith("2") and JSON in content:
            assert _examples(content[JSON]), f"no example of its {status}"
            if JSON in body:
                # Each request example is answered by the response example of its name.
                assert set(_examples(content[JSON])) == set(_examples(body[JSON])), status


def _media_examples() -> Iterator[Any]:
    for _, _, operation in _operations():
        medias = [("request", operation.get("requestBody", {}).get("content", {}))] + [
            (status, r.get("content", {})) for status, r in operation["responses"].items()
        ]
        for where, content in medias:
            for media_type, media in content.items():
                for name, value in _examples(media).items():
                    yield pytest.param(
                        media["schema"],
                        value,
                        id=f"{operation['operationId']}-{where}-{media_type}-{name}",
                    )


@pytest.mark.parametrize(("schema", "value"), list(_media_examples()))
def test_every_example_fits_its_schema(schema: dict[str, Any], value: Any) -> None:
    validator = jsonschema_rs.Draft202012Validator({**schema, "components": SPEC["components"]})
    errors = [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(value)]
    assert not errors, errors


# ---- the requests' answers are the responses' examples ----------------------------------------


def _exchanges() -> Iterator[Any]:
    """Each compute operation's examples: path, request and answer, by example name."""
    for method, path, operation in _operations():
        if method != "post" or not (
            path.startswith(("/v1/losses/", "/v1/metrics/")) or path == "/v1/evaluate"
        ):
            continue
        requests = _examples(operation["requestBody"]["content"][JSON])
        answers = _examples(operation["responses"]["200"]["content"][JSON])
        for name, request in requests.items():
            yield pytest.param(
                path, request, answers[name], id=f"{operation['operationId']}-{name}"
            )


@pytest.mark.parametrize(("path", "request_body", "answer"), list(_exchanges()))
def test_compute_examples_are_the_services_answers(
    clients: dict[str, SyncClient], path: str, request_body: Any, answer: Any
) -> None:
    response = clients["default"].post(path, json=request_body)
    assert response.status_code == 200, response.text
    _close(answer, response.json())


def test_the_compute_examples_cover_every_loss_and_metric() -> None:
    paths = {p.values[0] for p in _exchanges()}
    assert paths == {
        path for _, path, _ in _operations() if path.startswith(("/v1/losses/", "/v1/metrics/"))
    } | {"/v1/evaluate"}


def _operation(operation_id: str) -> tuple[str, str, dict[str, Any]]:
    (found,) = [o for o in _operations() if o[2]["operationId"] == operation_id]
    return found


def _request(operation_id: str) -> Any:
    """The operation's first request example."""
    requests = _examples(_operation(operation_id)[2]["requestBody"]["content"][JSON])
    return next(iter(requests.values()))


def _answer(operation_id: str, status: int = 200) -> Any:
    responses = _operation(operation_id)[2]["responses"]
    (answer,) = _examples(responses[str(status)]["content"][JSON]).values()
    return answer


def test_the_streaming_examples_are_one_evaluations_answers(
    tmp_path: Path,
) -> None:
    """One evaluation through its examples, in order: created, one batch (and the same
    again), read, its batches listed, listed, closed."""
    with _client(tmp_path) as client:
        created = client.post("/v1/evaluations", json=_request("create_evaluation"))
        assert created.status_code == 201, created.text
        _close(_answer("create_evaluation", 201), created.json())
        evaluation = f"/v1/evaluations/{created.json()['id']}"
        batch = f"{evaluation}/batches/{_answer('put_batch', 201)['batch_id']}"
        for status in (201, 200):
            put = client.put(batch, json=_request("put_batch"))
            assert put.status_code == status, put.text
            _close(_answer("put_batch", status), put.json())
        _close(_answer("get_evaluation"), client.get(evaluation).json())
        _close(_answer("list_batches"), client.get(f"{evaluation}/batches").json())
        _close(_answer("list_evaluations"), client.get("/v1/evaluations").json())
        closed = client.post(f"{evaluation}/close")
        assert closed.status_code == 200, closed.text
        _close(_answer("close_evaluation"), closed.json())


@pytest.mark.parametrize("operation_id", ["health", "list_losses", "list_metrics"])
def test_the_service_examples_are_its_answers(
    clients: dict[str, SyncClient], operation_id: str
) -> None:
    method, path, _ = _operation(operation_id)
    response = clients["default"].request(method.upper(), path)
    assert response.status_code == 200
    assert response.json() == _answer(operation_id)
