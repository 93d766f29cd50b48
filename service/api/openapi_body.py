"""Request bodies in the OpenAPI spec: JSON described by a model, or the binary encoding."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from service.wire import (
    BINARY_MEDIA_TYPE,
    HEADER_LENGTH_HEADER,
    JSON_MEDIA_TYPE,
    TENSOR_ALIGNMENT,
)

# The header belongs to the binary media type alone, so it is described here rather than
# as a parameter of the operation: a parameter would be shown (and generated) for JSON
# requests too, where it means nothing. OpenAPI has no header of one request media type
# (an ``encoding``'s headers are for multipart bodies only).
BINARY_DESCRIPTION = (
    f"The binary encoding, for large batches. Send it with `Content-Type: {BINARY_MEDIA_TYPE}` "
    f"and the header `{HEADER_LENGTH_HEADER}: <n>` (required with this content type, and "
    f"only with it): the byte length of the JSON header that starts the body. That header "
    "holds the same fields as the JSON body, each tensor described as `{dtype, shape, "
    "binary_data_size}`; the raw C-order little-endian bytes of those tensors follow it, back "
    "to back, in the order the header names them. Padding the header with spaces to a "
    f"multiple of {TENSOR_ALIGNMENT} bytes lets the service read every tensor in place: "
    "decoding then copies nothing."
)

#: Every model referenced by a request body; main.py adds them to the spec's components.
REQUEST_MODELS: list[type[BaseModel]] = []


def request_body(*models: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is read raw but described by ``models``:
    JSON, and the binary encoding unless every model is JSON-only (a model with the class
    attribute ``JSON_ONLY = True``: settings without arrays, which the binary encoding
    exists to carry)."""
    REQUEST_MODELS.extend(m for m in models if m not in REQUEST_MODELS)
    refs = [{"$ref": f"#/components/schemas/{m.__name__}"} for m in models]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    content: dict[str, Any] = {JSON_MEDIA_TYPE: {"schema": schema}}
    if not all(getattr(m, "JSON_ONLY", False) for m in models):
        content[BINARY_MEDIA_TYPE] = {
            "schema": {"type": "string", "format": "binary", "description": BINARY_DESCRIPTION}
        }
    return {"requestBody": {"required": True, "content": content}}


def add_request_models(spec: dict[str, Any]) -> None:
    """Put the request models (and the models they use) into ``components.schemas``."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in REQUEST_MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas[model.__name__] = schema
