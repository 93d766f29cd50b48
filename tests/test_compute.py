"""decode: a request body to JSON values with NumPy arrays, releasing what it no longer needs."""

from __future__ import annotations

import numpy as np
import orjson

from service.api.body import RawBody
from service.api.compute import decode
from service.settings import Settings


def test_json_text_is_released_once_decoded() -> None:
    y_pred = np.random.default_rng(0).random((256, 40))
    text = orjson.dumps({"y_true": [0] * 256, "y_pred": y_pred}, option=orjson.OPT_SERIALIZE_NUMPY)
    raw = RawBody(bytearray(text), "json", None)
    body = decode(raw, Settings())
    assert len(raw.data) == 0  # the buffer's memory is gone before the computation
    assert isinstance(body["y_pred"], np.ndarray)
    np.testing.assert_array_equal(body["y_pred"], y_pred)
    assert body["y_true"] == [0] * 256


def test_binary_bodies_are_kept_their_arrays_are_views_of_them() -> None:
    y = np.arange(8, dtype=np.float32)
    header = orjson.dumps({"y_pred": {"dtype": "float32", "shape": [8], "binary_data_size": 32}})
    header += b" " * (-len(header) % 8)
    data = bytearray(header + y.tobytes())
    body = decode(RawBody(data, "binary", len(header)), Settings())
    assert len(data) == len(header) + 32
    np.testing.assert_array_equal(body["y_pred"], y)
