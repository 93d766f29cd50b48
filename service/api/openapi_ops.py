"""The spec's compute operations, one per loss and per metric, from the registry.

The service serves every loss at ``POST /v1/losses/{name}`` (and every metric at
``/v1/metrics/{name}``); the spec describes each as an operation of its own,
``POST /v1/losses/categorical_crossentropy`` and so on, whose request schema holds
exactly the parameters that loss takes (types, defaults, bounds and meanings from
:mod:`service.registry`). A client generated from the spec then has one typed method
per loss and metric, and sends no parameter the loss does not take. The paths are the
served ones: ``{name}`` filled in.
"""

from __future__ import annotations

import copy
from typing import Any

from service import registry

_ARRAY_FIELDS = ("y_true", "y_pred", "sample_weight")


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def param_schema(param: registry.Param) -> dict[str, Any]:
    """One registry parameter as a JSON schema."""
    base: dict[str, Any] = {
        "bool": {"type": "boolean"},
        "float": {"type": "number"},
        "int": {"type": "integer"},
        "str": {"type": "string"},
    }[param.kind]
    if param.choices is not None:
        base["enum"] = list(param.choices)
    if param.minimum is not None:
        # OpenAPI 3.1 (JSON Schema): exclusiveMinimum is the bound itself.
        base["exclusiveMinimum" if param.exclusive_minimum else "minimum"] = param.minimum
    if param.maximum is not None:
        base["maximum"] = param.maximum
    schema: dict[str, Any] = {"anyOf": [base, {"type": "null"}]} if param.nullable else base
    schema["default"] = param.default
    schema["description"] = param.description
    schema["title"] = _camel(param.name)
    return schema


def _request_schema(
    title: str, description: str, params: tuple[registry.Param, ...], batch: dict[str, Any]
) -> dict[str, Any]:
    properties = {name: batch["properties"][name] for name in _ARRAY_FIELDS}
    for common in registry.COMMON:
        properties[common.name] = param_schema(common)
    for param in params:
        properties[param.name] = param_schema(param)
    return {
        "title": title,
        "description": description,
        "type": "object",
        "properties": properties,
        "required": ["y_true", "y_pred"],
        "additionalProperties": False,
    }


def per_operation_paths(spec: dict[str, Any]) -> None:
    """Replace the templated compute paths of ``spec`` by one path per loss and metric."""
    paths = spec["paths"]
    schemas = spec["components"]["schemas"]
    batch = schemas["LossRequest"]
    kinds: list[tuple[str, str, dict[str, Any]]] = [
        ("/v1/losses", "loss", dict(registry.LOSSES)),
        ("/v1/metrics", "metric", dict(registry.METRICS)),
    ]
    for prefix, kind, specs in kinds:
        template = paths.pop(f"{prefix}/{{name}}")["post"]
        for name, item in specs.items():
            operation = copy.deepcopy(template)
            operation["operationId"] = f"{kind}_{name}"
            operation["summary"] = name.replace("_", " ").capitalize()
            operation["description"] = item.description
            parameters = [p for p in operation.pop("parameters", []) if p.get("in") != "path"]
            if parameters:
                operation["parameters"] = parameters
            schema_name = f"{_camel(name)}{kind.capitalize()}Request"
            schemas[schema_name] = _request_schema(
                schema_name, item.description, item.params, batch
            )
            content = operation["requestBody"]["content"]["application/json"]
            content["schema"] = {"$ref": f"#/components/schemas/{schema_name}"}
            paths[f"{prefix}/{name}"] = {"post": operation}
