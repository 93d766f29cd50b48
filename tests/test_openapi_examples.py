"""The spec's examples are true: every request example is sent to the service, which must
answer its response example (the same keys; numbers within 1e-6); every error example is
provoked, and the service must answer it with the example's status, type, title, keys,
field location and documented headers. Every example also fits its schema."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
import pytest

from service import openapi_export
from service.main import create_app
from service.settings import Settings
from tests.conftest import SyncClient

SPEC = openapi_export.spec()
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
JSON = "application/json"
PROBLEM = "application/problem+json"
KEY = "examples-key"
#: Fields whose values differ from one call to the next: only their presence and type count.
VOLATILE = {"id", "created_at", "updated_at", "received_at"}
#: A body that is not JSON: its end is missing.
MALFORMED = b'{"y_true": [1,'
#: Limits small enough for the examples' bodies to pass them.
SMALL_BODY = 64
SMALL_BUDGET = 64
SHORT_TIMEOUT = 0.1
#: What the example evaluation's id is replaced by in a URL: a real evaluation's.
EXAMPLE_ID = SPEC["paths"]["/v1/evaluations/{evaluation_id}"]["get"]["parameters"][0]["example"]


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
    """Clients of the service: with its defaults, and with the settings that provoke an
    error (API keys, a small body limit, a small memory budget, a short body timeout)."""
    made = {
        "default": _client(tmp_path_factory.mktemp("default")),
        "keys": _client(tmp_path_factory.mktemp("keys"), api_keys=KEY),
        "small_body": _client(tmp_path_factory.mktemp("body"), max_body_bytes=SMALL_BODY),
        "small_budget": _client(tmp_path_factory.mktemp("budget"), max_inflight_bytes=SMALL_BUDGET),
        "short_timeout": _client(tmp_path_factory.mktemp("timeout"), body_timeout=SHORT_TIMEOUT),
    }
    yield made
    for client in made.values():
        client.close()


def test_the_served_spec_holds_these_examples(clients: dict[str, SyncClient]) -> None:
    assert clients["default"].get("/openapi.json").json() == SPEC


# ---- every operation has its examples -------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    # The Open Inference Protocol's operations (/v2) keep that protocol's own shapes.
    [pytest.param(*o, id=o[2]["operationId"]) for o in _operations() if not o[1].startswith("/v2")],
)
def test_every_operation_has_examples(method: str, path: str, operation: dict[str, Any]) -> None:
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
        elif status[0] in "45":
            assert set(content) == {PROBLEM}, status
            assert _examples(content[PROBLEM]), f"no example of its {status}"


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


# ---- the error examples are the service's errors ----------------------------------------------


def _errors() -> Iterator[Any]:
    for method, path, operation in _operations():
        if path.startswith("/v2"):
            continue
        for status in operation["responses"]:
            if status[0] in "45":
                yield pytest.param(
                    method,
                    path,
                    operation,
                    int(status),
                    id=f"{operation['operationId']}-{status}",
                )


async def _stalling(first: bytes) -> AsyncIterator[bytes]:
    yield first
    await asyncio.sleep(30)
    yield b"}"  # pragma: no cover - the service answers 408 first


def _padded(body: Any, size: int) -> bytes:
    """``body`` as JSON, with spaces after it up to ``size`` bytes."""
    text = orjson.dumps(body)
    return text + b" " * max(0, size - len(text))


class _Provocation:
    """What to send, and to which client, to provoke one documented error of an operation:
    its request example, changed to be refused, or sent to a client whose settings refuse
    it."""

    def __init__(
        self, clients: dict[str, SyncClient], method: str, path: str, op: dict[str, Any]
    ) -> None:
        self.clients = clients
        self.method = method.upper()
        self.operation_id = str(op["operationId"])
        self.body = _request(self.operation_id) if "requestBody" in op else None
        self.evaluation = self._evaluation() if "{evaluation_id}" in path else None

    def _evaluation(self) -> str:
        """A real evaluation (with the example batch, for the operation that sends one)."""
        client = self.clients["default"]
        created = client.post("/v1/evaluations", json=_request("create_evaluation"))
        evaluation_id = str(created.json()["id"])
        if self.operation_id == "put_batch":
            batch = _answer("put_batch", 201)["batch_id"]
            put = client.put(
                f"/v1/evaluations/{evaluation_id}/batches/{batch}", json=_request("put_batch")
            )
            assert put.status_code == 201, put.text
        return evaluation_id

    def _url(self, example: dict[str, Any]) -> str:
        """The example's path: its evaluation a real one (unless it is the one missing), and
        the query parameter it names set out of range."""
        url = str(example["instance"])
        if self.evaluation is not None and example["status"] != 404:
            url = url.replace(EXAMPLE_ID, self.evaluation)
        loc = example["errors"][0]["loc"]
        if loc[0] == "query":
            url += f"?{loc[1]}=0"
        return url

    def _invalid(self) -> Any:
        """A body of the operation's that the service refuses with a 422."""
        if self.operation_id == "create_evaluation":
            return {"bogus": 1}
        if self.operation_id == "put_batch":
            # Four classes, where the evaluation's first batch fixed three.
            return {"y_true": [0, 3], "y_pred": [[0.7, 0.1, 0.1, 0.1]] * 2}
        # Labels of two classes, predictions of three.
        return {"y_true": [[0, 1], [1, 0]], "y_pred": [[0.2, 0.7, 0.1]] * 2}

    def send(self, status: int, example: dict[str, Any]) -> Any:
        url = self._url(example)
        client = self.clients["default"]
        json_type = {"content-type": JSON}
        kwargs: dict[str, Any] = {} if self.body is None else {"json": self.body}
        if status == 400:
            kwargs = {"content": MALFORMED, "headers": json_type}
        elif status in (401, 403):
            client = self.clients["keys"]
            if status == 403:
                kwargs["headers"] = {"Authorization": "Bearer not-a-key"}
        elif status == 404 and self.evaluation is None:
            kwargs["json"] = {**self.body, "metrics": ["f1"]}  # an unknown metric
        elif status == 405:
            return client.request("PATCH", url)
        elif status == 408:
            client = self.clients["short_timeout"]
            kwargs = {"content": _stalling(b"{"), "headers": json_type}
        elif status == 409:
            kwargs["json"] = {**self.body, "y_true": [1, 2, 0]}  # other content, same id
        elif status == 413:
            client = self.clients["small_body"]
            kwargs = {"content": _padded(self.body, SMALL_BODY + 1), "headers": json_type}
        elif status == 415:
            kwargs = {"content": orjson.dumps(self.body), "headers": {"content-type": "text/plain"}}
        elif status == 422 and self.body is not None:
            kwargs["json"] = self._invalid()
            if self.operation_id == "put_batch":
                url = url.rsplit("/", 1)[0] + "/batch-0002"
        elif status == 503:
            client = self.clients["small_budget"]
            kwargs = {"content": _padded(self.body, SMALL_BUDGET + 1), "headers": json_type}
        return client.request(self.method, url, **kwargs)


@pytest.mark.parametrize(("method", "path", "operation", "status"), list(_errors()))
def test_every_error_example_is_the_services_answer(
    clients: dict[str, SyncClient],
    method: str,
    path: str,
    operation: dict[str, Any],
    status: int,
) -> None:
    documented = operation["responses"][str(status)]
    example = documented["content"][PROBLEM]["example"]
    assert example["status"] == status
    response = _Provocation(clients, method, path, operation).send(status, example)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    answer = response.json()
    assert set(answer) == set(example)
    for key in ("type", "title", "status"):
        assert answer[key] == example[key], key
    assert [e["loc"] for e in answer["errors"]] == [e["loc"] for e in example["errors"]]
    for header, described in documented.get("headers", {}).items():
        assert header.lower() in response.headers, header
        if header == "Allow":
            assert set(response.headers[header].split(", ")) == set(
                described["example"].split(", ")
            )
