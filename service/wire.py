"""The wire formats, one definition shared by the service and its client.

A request body holds arrays in ``ARRAY_FIELDS`` (at the top level, or in each head of
``outputs``), as nested JSON lists, as typed arrays ``{"dtype", "shape", "data"}``
(base64 of the C-order little-endian bytes) in one of ``DTYPES``, or in the binary
encoding: ``Content-Type: BINARY_MEDIA_TYPE``, a JSON header of
``HEADER_LENGTH_HEADER`` bytes (each tensor ``{"dtype", "shape",
"binary_data_size"}``), then the raw tensors back to back, in header order. A header
padded with spaces to a multiple of ``TENSOR_ALIGNMENT`` bytes lets the service view
each tensor in place.

This module imports nothing: :mod:`service.client` uses it with only httpx, NumPy and
orjson installed.
"""

from __future__ import annotations

from typing import Final

JSON_MEDIA_TYPE: Final = "application/json"
BINARY_MEDIA_TYPE: Final = "application/octet-stream"
#: The byte length of a binary body's JSON header (the Open Inference Protocol's name).
HEADER_LENGTH_HEADER: Final = "Inference-Header-Content-Length"
#: The fields of a request body (or of one head) that hold arrays.
ARRAY_FIELDS: Final = ("y_true", "y_pred", "sample_weight")
#: The dtypes of typed arrays and binary tensors, narrowest kinds first.
DTYPES: Final = (
    "bool",
    "uint8",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
)
#: Most dimensions of one array.
MAX_DIMS: Final = 32
#: A binary header padded with spaces to a multiple of this lets every tensor be a view.
TENSOR_ALIGNMENT: Final = 64


def pad_header(header: bytes) -> bytes:
    """A binary body's JSON header padded with spaces to :data:`TENSOR_ALIGNMENT`."""
    return header + b" " * (-len(header) % TENSOR_ALIGNMENT)
