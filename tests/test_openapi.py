"""The OpenAPI document: the committed file, stable operation ids, documented errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from service import openapi_export, registry

SPEC_FILE = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"
DRIFT = f"{SPEC_FILE.name} differs from GET /openapi.json: run `make openapi` and commit the file"

OPERATION_IDS = {
    **{("post", f"/v1/losses/{name}"): f"loss_{name}" for name in registry.LOSSES},
    **{("post", f"/v1/metrics/{name}"): f"metric_{name}" for name in registry.METRICS},
    ("post", "/v1/evaluate"): "evaluate",
    ("get", "/v1/losses"): "list_losses",
    ("get", "/v1/metrics"): "list_metrics",
    ("get", "/healthz"): "health",
    ("head", "/healthz"): "health_head",
}
#: The streaming evaluations' operations.
STREAMING_OPERATION_IDS = {
    ("post", "/v1/evaluations"): "create_evaluation",
    ("get", "/v1/evaluations"): "list_evaluations",
    ("put", "/v1/evaluations/{evaluation_id}/batches/{batch_id}"): "put_batch",
    ("get", "/v1/evaluations/{evaluation_id}"): "get_evaluation",
    ("get", "/v1/evaluations/{evaluation_id}/batches"): "list_batches",
    ("post", "/v1/evaluations/{evaluation_id}/close"): "close_evaluation",
    ("delete", "/v1/evaluations/{evaluation_id}"): "delete_evaluation",
    ("get", "/v1/evaluations/{evaluation_id}/report"): "evaluation_report",
    ("get", "/v1/evaluations/{evaluation_id}/charts/{chart}.{fmt}"): "evaluation_chart",
}
#: The Open Inference Protocol's operations (/v2): errors in its {"error"} shape, not problem+json.
OIP_OPERATION_IDS = {
    ("get", "/v2/health/live"): "oip_server_live",
    ("get", "/v2/health/ready"): "oip_server_ready",
    ("get", "/v2"): "oip_server_metadata",
    ("get", "/v2/models/{name}"): "oip_model_metadata",
    ("get", "/v2/models/{name}/versions/{version}"): "oip_model_version_metadata",
    ("get", "/v2/models/{name}/ready"): "oip_model_ready",
    ("get", "/v2/models/{name}/versions/{version}/ready"): "oip_model_version_ready",
    ("post", "/v2/models/{name}/infer"): "oip_model_infer",
    ("post", "/v2/models/{name}/versions/{version}/infer"): "oip_model_version_infer",
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
PROBLEM_REF = "#/components/schemas/Problem"


def _operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return openapi_export.spec()


def test_served_spec_equals_the_committed_file(client: Any) -> None:
    assert SPEC_FILE.exists(), f"{SPEC_FILE} is missing: run `make openapi`"
    committed = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == committed, DRIFT


def test_committed_file_is_formatted_as_make_openapi_writes_it() -> None:
    text = SPEC_FILE.read_text(encoding="utf-8")
    assert text == openapi_export.render(json.loads(text)), (
        f"{SPEC_FILE.name} is not formatted as `make openapi` writes it: run `make openapi`"
    )


def test_export_writes_the_served_spec(tmp_path: Path, spec: dict[str, Any]) -> None:
    out = tmp_path / "nested" / "openapi.json"
    assert openapi_export.main([str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text.endswith("}\n")
    assert json.loads(text) == spec
    assert openapi_export.main(["--check", str(out)]) == 0
    out.write_text(text.replace("Loss service", "Drifted"), encoding="utf-8")
    assert openapi_export.main(["--check", str(out)]) == 1


def test_operation_ids_are_stable_and_unique(spec: dict[str, Any]) -> None:
    operations = _operations(spec)
    ids = [operation.get("operationId") for operation in operations.values()]
    assert len(ids) == len(set(ids)), f"duplicate operation ids: {ids}"
    expected = OPERATION_IDS | OIP_OPERATION_IDS | STREAMING_OPERATION_IDS
    assert {key: op.get("operationId") for key, op in operations.items()} == expected


def test_docs_pages_are_not_operations(spec: dict[str, Any]) -> None:
    assert not {"/docs", "/redoc", "/openapi.json"} & set(spec["paths"])
    assert not any(path.startswith("/static") for path in spec["paths"])


@pytest.mark.parametrize(
    "key", [key for key in OPERATION_IDS if key[0] == "post"], ids=lambda key: OPERATION_IDS[key]
)
def test_every_post_documents_its_problem_responses(
    spec: dict[str, Any], key: tuple[str, str]
) -> None:
    operation = _operations(spec)[key]
    # A body's intake (400, 408, 413, 415, 503), its values (422), API keys (401, 403), a
    # method the path does not take (405); unknown names in evaluate's entries (404). A
    # loss's or metric's own path names a loss the service has: no 404.
    statuses = {"400", "401", "403", "405", "408", "413", "415", "422", "503"}
    if key[1] == "/v1/evaluate":
        statuses.add("404")
    responses = operation["responses"]
    assert {s for s in responses if s[0] in "45"} == statuses, OPERATION_IDS[key]
    for status in sorted(statuses):
        content = responses[status].get("content", {})
        assert set(content) == {"application/problem+json"}, (status, content)
        assert content["application/problem+json"]["schema"] == {"$ref": PROBLEM_REF}
        assert responses[status].get("description")
    assert "200" in responses
    assert "application/json" in responses["200"]["content"]


@pytest.mark.parametrize(
    "key", [key for key in OPERATION_IDS if key[0] == "post"], ids=lambda key: OPERATION_IDS[key]
)
def test_every_post_documents_json_and_binary_bodies(
    spec: dict[str, Any], key: tuple[str, str]
) -> None:
    body = _operations(spec)[key]["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == {"application/json", "application/octet-stream"}
    binary = body["content"]["application/octet-stream"]["schema"]
    assert binary["format"] == "binary"
    assert "Inference-Header-Content-Length" in binary["description"]


def test_the_binary_header_is_no_parameter_of_any_operation(spec: dict[str, Any]) -> None:
    """`Inference-Header-Content-Length` belongs to the binary media type alone (its
    description says so): as a parameter, JSON clients would be shown and given it."""
    for key, operation in _operations(spec).items():
        names = {p["name"].lower() for p in operation.get("parameters", [])}
        assert "inference-header-content-length" not in names, key


def test_an_evaluations_settings_are_json_only(spec: dict[str, Any]) -> None:
    """The service refuses a binary body there (400): the spec offers none."""
    body = _operations(spec)[("post", "/v1/evaluations")]["requestBody"]
    assert set(body["content"]) == {"application/json"}


def test_every_operation_documents_405_and_the_protected_ones_401_403(
    spec: dict[str, Any],
) -> None:
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "One of `LOSS_SERVICE_API_KEYS`, when the service has keys.",
    }
    for (method, path), operation in _operations(spec).items():
        responses = operation["responses"]
        if path.startswith(("/v1/", "/v2/models")):
            assert operation["security"] == [{"bearerAuth": []}], (method, path)
            assert {"401", "403"} <= set(responses), (method, path)
        else:
            assert "security" not in operation and "401" not in responses, (method, path)
        if path.startswith("/v2"):
            continue  # the protocol's own error shape; a 405 there is the service's
        not_allowed = responses["405"]
        assert set(not_allowed["content"]) == {"application/problem+json"}, (method, path)
        assert set(not_allowed["headers"]) == {"Allow"}, (method, path)


def test_only_operations_with_a_body_document_the_bodys_errors(spec: dict[str, Any]) -> None:
    for key, operation in _operations(spec).items():
        if key[1].startswith("/v2"):
            continue
        documented = {"400", "408", "413", "415", "503"} & set(operation["responses"])
        if "requestBody" in operation:
            assert documented == {"400", "408", "413", "415", "503"}, key
        else:
            assert not documented, key


def test_problem_schema_is_rfc_9457(spec: dict[str, Any]) -> None:
    problem = spec["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "errors"} <= set(problem["required"])


def test_every_reference_resolves(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    dangling: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                prefix = "#/components/schemas/"
                if not ref.startswith(prefix) or ref[len(prefix) :] not in schemas:
                    dangling.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    assert not dangling, f"unresolved $ref: {sorted(set(dangling))}"


def test_spec_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1.")
    try:
        from openapi_spec_validator import validate  # type: ignore[import-not-found]
    except ImportError:
        validate = None
    if validate is not None:
        validate(spec)
        return
    # openapi-spec-validator is not installed; schemathesis bundles the OpenAPI 3.1
    # meta-schema (the structure of the document) with a JSON Schema validator.
    try:
        import jsonschema_rs
        from schemathesis.specs.openapi.definitions import OPENAPI_31
    except ImportError:  # pragma: no cover - both come with schemathesis
        pytest.skip("neither openapi-spec-validator nor schemathesis' OpenAPI 3.1 schema here")
    validator = jsonschema_rs.Draft202012Validator(OPENAPI_31)
    errors = [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(spec)]
    assert not errors, "\n".join(errors[:20])
    # Each schema is a valid JSON Schema 2020-12 (OpenAPI 3.1's dialect).
    for name, schema in spec["components"]["schemas"].items():
        assert jsonschema_rs.meta.is_valid(schema), f"components.schemas.{name}"


@pytest.mark.parametrize(
    "key", list(STREAMING_OPERATION_IDS), ids=lambda key: STREAMING_OPERATION_IDS[key]
)
def test_streaming_operations_document_their_problems(
    spec: dict[str, Any], key: tuple[str, str]
) -> None:
    operation = _operations(spec)[key]
    responses = operation["responses"]
    # An evaluation named in the path may not exist; the list of them has no such path.
    statuses = ["404", "422"] if "{evaluation_id}" in key[1] else ["422"]
    if key == ("post", "/v1/evaluations"):
        statuses = ["404", "422"]  # unknown loss or metric names in the settings
    assert ("404" in responses) == ("404" in statuses), key
    for status in statuses:
        content = responses[status]["content"]
        assert content["application/problem+json"]["schema"] == {"$ref": PROBLEM_REF}
    if key == ("put", "/v1/evaluations/{evaluation_id}/batches/{batch_id}"):
        assert "409" in responses


def test_every_operation_documents_the_request_id_header(spec: dict[str, Any], client: Any) -> None:
    for key, operation in _operations(spec).items():
        (parameter,) = [p for p in operation["parameters"] if p["name"] == "X-Request-ID"]
        assert parameter["in"] == "header" and parameter["required"] is False, key
    response = client.get("/healthz", headers={"X-Request-ID": "trace-42"})
    assert response.headers["X-Request-ID"] == "trace-42"
