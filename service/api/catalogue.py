"""The catalogue answered by ``GET /v1/losses`` and ``GET /v1/metrics``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from service import diagnostics, encodings, registry


def catalogue(key: str, specs: Iterable[registry.LossSpec | registry.MetricSpec]) -> dict[str, Any]:
    """Each spec with every parameter described and the label encodings it accepts, the
    common parameters and the warning codes."""
    return {
        key: [
            {
                "name": s.name,
                "description": s.description,
                "parameters": [p.describe() for p in s.params],
                "label_encodings": [e for e in encodings.ENCODINGS if e in s.accepts],
            }
            for s in specs
        ],
        "common_parameters": [p.describe() for p in registry.COMMON],
        "warning_codes": diagnostics.CODES,
    }
