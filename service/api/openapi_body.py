"""Request bodies in the OpenAPI spec: JSON described by a model, or the binary encoding."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

BINARY_DESCRIPTION = (
    "The binary encoding, for large batches: a JSON header of "
    "`Inference-Header-Content-Length` bytes (the same fields as the JSON body, each tensor "
    "described as `{dtype, shape, binary_data_size}`), followed by the raw C-order little-endian "
    "bytes of those tensors, back to back, in the order the header names them. Decoding copies "
    "nothing."
)

#: Every model referenced by a request body; main.py adds them to the spec's components.
REQUEST_MODELS: list[type[BaseModel]] = []


def request_body(*models: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is read raw but described by ``models``."""
    REQUEST_MODELS.extend(m for m in models if m not in REQUEST_MODELS)
    refs = [{"$ref": f"#/components/schemas/{m.__name__}"} for m in models]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "application/octet-stream": {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": BINARY_DESCRIPTION,
                    }
                },
            },
        },
        "parameters": [
            {
                "name": "Inference-Header-Content-Length",
                "in": "header",
                "required": False,
                "description": "Binary requests only: the byte length of the JSON header.",
                "schema": {"type": "integer", "minimum": 0},
            }
        ],
    }


def add_request_models(spec: dict[str, Any]) -> None:
    """Put the request models (and the models they use) into ``components.schemas``."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in REQUEST_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[model.__name__] = schema
