"""The error responses every compute route documents."""

from __future__ import annotations

from typing import Any

_CONTENT = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": _CONTENT}
    for status, text in {
        400: "Malformed body (invalid JSON, a broken binary header).",
        404: "Unknown loss or metric; the detail lists the known ones.",
        413: "Body or array over the configured limits.",
        415: "Unsupported content type.",
        422: "Invalid values: shapes, labels, predictions, parameters.",
    }.items()
}
