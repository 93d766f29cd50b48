"""Payload decoding: nested lists, typed arrays, the binary encoding, and their errors."""

from __future__ import annotations

import base64
import functools
import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.arrays import (
    BLOCKWISE_MIN_BYTES,
    DECODE_BLOCK_BYTES,
    BodyText,
    parse_binary,
    parse_json,
    to_array,
)
from service.errors import InvalidInput, MalformedRequest, PayloadTooLarge
from service.json_body import GENERAL_PARSE_FACTOR, parse_json_body

LIMIT = 1_000_000


def typed(a: np.ndarray) -> dict[str, object]:
    return {
        "dtype": a.dtype.name,
        "shape": list(a.shape),
        "data": base64.b64encode(a.astype(a.dtype.newbyteorder("<")).tobytes()).decode(),
    }


def binary_body(fields: dict[str, object], tensors: dict[str, np.ndarray]) -> tuple[bytes, int]:
    header = dict(fields)
    for name, a in tensors.items():
        header[name] = {"dtype": a.dtype.name, "shape": list(a.shape), "binary_data_size": a.nbytes}
    head = orjson.dumps(header)
    head += b" " * (-len(head) % 64)  # aligned tensors, as the client sends them
    return head + b"".join(a.tobytes() for a in tensors.values()), len(head)


def test_nested_lists_become_numbers() -> None:
    a = to_array([[0, 1], [1.5, 2]], ("y_pred",), LIMIT)
    assert a.shape == (2, 2) and a.dtype == np.float64 and a[1, 0] == 1.5


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ([[1, 2], [3]], "not a rectangular array"),
        # Deeper than NumPy's own limit (64 in NumPy 2): its dimensions, not raggedness.
        (functools.reduce(lambda inner, _: [inner], range(200), 0.5), "has 200 dimensions"),
        (functools.reduce(lambda inner, _: [inner], range(40), 0.5), "has 40 dimensions"),
        ([["a", "b"]], "strings"),
        ([[1, None]], "null"),
        ("abc", "received str"),
        (None, "received null"),
        ({"x": 1}, "unknown field"),
    ],
)
def test_bad_lists_are_422(value: object, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        to_array(value, ("y_true",), LIMIT)


@pytest.mark.parametrize(
    "dtype", ["float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"]
)
def test_typed_arrays_round_trip_every_dtype(dtype: str) -> None:
    a = (np.arange(12).reshape(3, 4) % 2).astype(dtype)
    np.testing.assert_array_equal(to_array(typed(a), ("y_true",), LIMIT), a)


def test_typed_array_byte_count_must_match_shape() -> None:
    bad = typed(np.zeros((2, 3), np.float32)) | {"shape": [2, 4]}
    with pytest.raises(InvalidInput, match=r"holds 24 bytes.*need 32"):
        to_array(bad, ("y_pred",), LIMIT)


@pytest.mark.parametrize("shape", [[0, 2**62], [0, 2**26, 2**26, 2**26], [2**40, 0, 2**40]])
def test_an_empty_shape_numpy_cannot_build_is_422(shape: list[int]) -> None:
    # Zero elements, within the limit; but NumPy refuses a shape whose other dimensions
    # overflow its index, whatever the zero.
    empty = {"dtype": "float32", "shape": shape, "data": ""}
    with pytest.raises(InvalidInput, match=r"an empty array whose other dimensions multiply"):
        to_array(empty, ("y_true",), LIMIT)


def test_typed_array_checks_size_before_decoding() -> None:
    huge = {"dtype": "float32", "shape": [10**6, 10**6], "data": ""}
    with pytest.raises(PayloadTooLarge, match="1000000000000 elements"):
        to_array(huge, ("y_pred",), LIMIT)


@pytest.mark.parametrize(
    ("patch", "words"),
    [
        ({"dtype": "complex64"}, "not supported"),
        ({"shape": [-1, 2]}, "non-negative integers"),
        ({"shape": "2x2"}, "non-negative integers"),
        ({"data": "!!!notbase64"}, "not valid base64"),
        ({"data": 12}, "base64 string"),
    ],
)
def test_bad_typed_arrays_are_422(patch: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        to_array(typed(np.zeros(4, np.float32)) | patch, ("y_pred",), LIMIT)


def test_bool_bytes_must_be_0_or_1() -> None:
    raw = {"dtype": "bool", "shape": [2], "data": base64.b64encode(b"\x00\x07").decode()}
    with pytest.raises(InvalidInput, match="0 or 1"):
        to_array(raw, ("y_true",), LIMIT)


#: A float32 typed array large enough to be decoded a block at a time, over several blocks.
BIG = np.random.default_rng(7).standard_normal(BLOCKWISE_MIN_BYTES // 4 + 12345).astype(np.float32)
#: Base64 characters per block of the block-wise decoder.
BLOCK_CHARS = DECODE_BLOCK_BYTES // 3 * 4


@pytest.mark.parametrize("kind", [str, bytes, memoryview])
def test_large_typed_arrays_decode_block_wise_as_whole(kind: type) -> None:
    text = typed(BIG)["data"]
    assert isinstance(text, str) and len(text) > 3 * BLOCK_CHARS
    data = text if kind is str else kind(text.encode())
    a = to_array(typed(BIG) | {"data": data}, ("y_pred",), LIMIT)
    assert a.dtype == np.float32 and a.flags.aligned and a.flags.writeable
    np.testing.assert_array_equal(a, BIG)


def _spliced(text: str, at: int, quantum: str) -> str:
    return text[:at] + quantum + text[at + len(quantum) :]


@pytest.mark.parametrize(
    "at",
    [
        0,  # the first block
        BLOCK_CHARS - 4,  # the last quantum of a block that is not the last
        BLOCK_CHARS,  # the first quantum of the second block
        5 * BLOCK_CHARS + 400,
        -8,  # the last block, before its end
    ],
)
@pytest.mark.parametrize("quantum", ["QQ==", "QUJ=", "QU!D", "QU\\D", "QUé"])
def test_large_typed_arrays_refuse_what_whole_decoding_refuses(at: int, quantum: str) -> None:
    """Padding before the end, a character outside the alphabet: block by block as whole,
    wherever it falls (at block boundaries too)."""
    text = typed(BIG)["data"]
    assert isinstance(text, str)
    bad = _spliced(text, at % len(text), quantum)
    assert len(bad) == len(text)
    with pytest.raises(InvalidInput, match="not valid base64"):
        to_array(typed(BIG) | {"data": bad}, ("y_pred",), LIMIT)
    with pytest.raises(InvalidInput, match="not valid base64"):
        to_array(typed(BIG) | {"data": bad.encode()}, ("y_pred",), LIMIT)


def test_large_typed_arrays_of_the_wrong_size_say_their_size() -> None:
    short = typed(BIG[:-1]) | {"shape": list(BIG.shape)}
    with pytest.raises(InvalidInput, match=rf"holds {BIG.nbytes - 4} bytes.*need {BIG.nbytes}"):
        to_array(short, ("y_pred",), LIMIT)


def test_large_bool_typed_arrays_hold_0_or_1() -> None:
    flags = np.zeros(BLOCKWISE_MIN_BYTES + 5, np.uint8)
    np.testing.assert_array_equal(to_array(typed(flags.astype(bool)), ("y_true",), 1 << 30), False)
    flags[-1] = 2
    raw = typed(flags) | {"dtype": "bool"}
    with pytest.raises(InvalidInput, match="0 or 1"):
        to_array(raw, ("y_true",), 1 << 30)


def test_nan_tokens_are_malformed_json() -> None:
    with pytest.raises(MalformedRequest, match="not valid JSON"):
        parse_json(b'{"y_pred": [NaN]}')


@pytest.mark.parametrize(
    ("body", "number"),
    [(b'{"y_pred": [1e400]}', "1e400, at character 12"), (b'{"w": -2.5E+999}', "-2.5E+999")],
)
def test_a_number_beyond_float64_is_a_value_error(body: bytes, number: str) -> None:
    """Valid JSON (numbers have no range there) but no float64: a 422 like an infinity in
    a typed array, not a 400 saying the JSON is invalid."""
    with pytest.raises(InvalidInput) as refused:
        parse_json(body)
    assert refused.value.status == 422
    assert refused.value.detail.startswith(
        f"The request body holds a number beyond float64's range ({number}"
    )
    assert "expected finite numbers, at most 1.798e+308 in magnitude" in refused.value.detail


def test_binary_body_is_decoded_without_copies() -> None:
    y_pred = np.random.default_rng(0).random((5, 3), dtype=np.float32)
    y_true = np.array([0, 2, 1, 1, 0], np.int64)
    body, n = binary_body({"from_logits": False}, {"y_true": y_true, "y_pred": y_pred})
    decoded = parse_binary(body, n, LIMIT)
    np.testing.assert_array_equal(decoded["y_pred"], y_pred)
    np.testing.assert_array_equal(decoded["y_true"], y_true)
    assert decoded["from_logits"] is False
    assert not decoded["y_pred"].flags.owndata  # a view of the request body


def test_binary_tensors_in_nested_heads_follow_document_order() -> None:
    a, b = np.float32([[0.2, 0.8]]), np.float32([[0.9, 0.1]])
    header = {
        "outputs": {
            "h1": {"y_pred": {"dtype": "float32", "shape": [1, 2], "binary_data_size": 8}},
            "h2": {"y_pred": {"dtype": "float32", "shape": [1, 2], "binary_data_size": 8}},
        }
    }
    head = orjson.dumps(header)
    decoded = parse_binary(head + a.tobytes() + b.tobytes(), len(head), LIMIT)
    np.testing.assert_array_equal(decoded["outputs"]["h2"]["y_pred"], b)


def test_binary_header_that_lies_about_sizes_is_rejected() -> None:
    y = np.zeros(4, np.float32)
    body, n = binary_body({}, {"y_pred": y})
    with pytest.raises(MalformedRequest, match="bytes after the last tensor"):
        parse_binary(body + b"\0\0\0\0", n, LIMIT)
    with pytest.raises(MalformedRequest, match="only 12 bytes"):
        parse_binary(body[:-4], n, LIMIT)
    lying = orjson.dumps({"y_pred": {"dtype": "float32", "shape": [5], "binary_data_size": 16}})
    with pytest.raises(InvalidInput, match="need 20"):
        parse_binary(lying + y.tobytes(), len(lying), LIMIT)


@pytest.mark.parametrize("settings", [{}, {"dtype": "float64"}])
def test_a_tensor_described_without_its_size_is_named(settings: dict[str, object]) -> None:
    """Its bytes would otherwise be only 'bytes after the last tensor'."""
    labels = np.array([0, 1, 1], np.int64)
    header = orjson.dumps(
        {
            **settings,
            "outputs": {
                "a": {
                    "y_true": {"dtype": "int64", "shape": [3], "binary_data_size": 24},
                    "y_pred": {"dtype": "float32", "shape": [3]},
                }
            },
        }
    )
    body = header + labels.tobytes() + np.zeros(3, np.float32).tobytes()
    with pytest.raises(MalformedRequest, match="has no `binary_data_size`") as refused:
        parse_binary(body, len(header), LIMIT)
    assert refused.value.errors[0].loc == ("outputs", "a", "y_pred")
    assert "12 bytes of tensor data that no descriptor claims" in refused.value.detail


FAST_PATH_BODIES = [
    b'{"y_true": [1, 2], "y_pred": [[0.1, 0.9, 0.0], [0.2, 0.3, 0.5]], "from_logits": false}',
    b'{"y_true": [[[1]], [[0]]], "y_pred": [[[0.5]], [[0.25]]], "losses": ["a", {"name": "b"}]}',
    b'{"y_pred": [[1, 2], [3, 4, 5], [6]], "y_true": [0, 1, 0]}',  # ragged, same total
    b'{"y_pred": [[1, [2]], [3, 4]], "y_true": [0, 1]}',  # a nested array among numbers
    b'{"y_pred": [[[], 5, [6, 7]]], "y_true": [0]}',  # nested arrays that keep the count
    b'{"y_pred": [true, false], "y_true": [1, 0]}',
    b'{"y_pred": [1, null], "y_true": [1, 0]}',
    b'{"y_pred": [], "y_true": []}',
    b'{"y_pred": [1e400], "y_true": [1]}',
    b'{"y_pred": [0.5], "y_true": [1], "note": "a [bracket] in a string", "k[": 1}',
    b'{"outputs": {"a": {"y_true": [1], "y_pred": [[0.3, 0.7]]}, "b": [1, [2]]}}',
    b"[1, 2]",
    b'{"y_pred": [NaN]}',
    # Shapes and spacing the block-wise path cuts at row and comma boundaries.
    b'{ "y_pred" : [ [ 1 , 2 ] ,\n\t[ 3 , 4 ] ,\r\n [5,6]] , "y_true":[ 0 ,1, 1 ] }',
    b'{"y_pred": [[1, 2], 3, [4, 5]], "y_true": [0, 1, 0]}',  # a number among the rows
    b'{"y_pred": [[1, 2], [], [4, 5]], "y_true": [0, 1, 0]}',
    b'{"y_pred": [[1, 2], [3, 4],], "y_true": [0, 1]}',  # trailing comma
    b'{"y_pred": [1, 2, 3,], "y_true": [0, 1, 0]}',
    b'{"y_pred": [1,, 3], "y_true": [0, 1, 0]}',
    b'{"y_pred": [[1, 2] [3, 4]], "y_true": [0, 1]}',  # a missing comma
    b'{"y_pred": [[[1, 2], [3, 4]], [[5, 6], [7, [8]]]], "y_true": [0, 1]}',
    b'{"y_pred": [[[1, 2]], [[3, 4], [5, 6]]], "y_true": [0, 1]}',
    b'{"y_pred": [[0.5, 0.5]], "y_pred": [[0.1, 0.9]], "y_true": [1]}',  # a repeated key
    b'{"y_pred": [[0.5, 0.5]], "thresholds": [[0.1, 0.9]], "y_true": [1]}',
    b'{"y_pred": [[0.5, 0.5]], "losses": [[1]], "y_true": [1]}',
    b'{"y_pred": [[0.5, 0.5]], "y_true": [1], "as": "a \\"quoted [x]\\" name"}',  # escapes
    b'{"y_pred": [[0.5, 0.5]], "y_true": [1], "as": "unterminated [}',
    b'{"y_pred": [[0.5, 0.5]] 5, "y_true": [1]}',
    b'{"y_pred": [[0.5, 0.5]], "y_true": [1]} [2]',
    b'{"y_pred": [[true, 0.5]], "y_true": [1]}',
    b'{"y_pred": [[1e999, 0.5]], "y_true": [1]}',
    b'{"y_pred": [[-0.0, 1E-2, 12345678901234567890]], "y_true": [1]}',
    b'{"outputs": {"a": {"y_true": [1, 0], "y_pred": [[0.3, 0.7], [0.6, 0.4]]}, '
    b'"b": {"y_true": [[0, 1]], "y_pred": [[0.2, 0.8]], "sample_weight": [2]}}}',
    b'{"outputs": {"a": {"y_true": [1], "y_pred": [[0.3, 0.7]]}}, "y_pred": [["x"]]}',
    # Escapes: quotes after an odd run of backslashes are inside strings, after an even
    # run they close them; brackets in escaped strings are text.
    b'{"as": "\\\\", "y_pred": [[0.5, 0.5]], "y_true": [1]}',
    b'{"as": "a\\\\\\"[", "y_pred": [[0.5, 0.5]], "y_true": [1]}',
    b'{"as": "\\"]\\"", "y_pred": [[0.5, 0.5]], "y_true": [1], "b": "\\\\[\\\\"}',
    b'{"y_pred": [[0.5, 0.5]], "y_true": [1], "as": "\\u005b \\n \\t"}',
    b'{"y_pred": [[0.5, 0.5]], "y_true": [1], "bad": \\ }',
    b'{"y_pred": [[0.5, 0.5]], "y_true": "\\u0000x:0"}',
]
#: Block sizes that cut the arrays of the bodies above everywhere, sometimes, and never.
BLOCKS = [1, 7, 1 << 20]


def _numeric_fields(body: object) -> object:
    """Every numeric field of a decoded body as an array (or the error it raises)."""
    if not isinstance(body, dict):
        return body
    out: dict[str, object] = {}
    for key, value in body.items():
        if key in ("y_true", "y_pred", "sample_weight"):
            try:
                a = to_array(value, (key,), LIMIT)
                out[key] = (a.shape, a.astype(np.float64).tolist())
            except InvalidInput as e:
                out[key] = ("error", e.detail)
        elif key == "outputs" and isinstance(value, dict):
            out[key] = {h: _numeric_fields(v) for h, v in value.items()}
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("raw", FAST_PATH_BODIES, ids=range(len(FAST_PATH_BODIES)))
def test_fast_json_path_decodes_exactly_as_the_general_parser(raw: bytes) -> None:
    try:
        slow = _numeric_fields(parse_json(raw))
    except (MalformedRequest, InvalidInput) as e:
        with pytest.raises(type(e)) as fast_error:
            parse_json_body(raw)
        assert fast_error.value.detail == e.detail
        return
    assert _numeric_fields(parse_json_body(raw)) == slow


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("raw", FAST_PATH_BODIES, ids=range(len(FAST_PATH_BODIES)))
def test_block_wise_path_decodes_exactly_as_the_general_parser(raw: bytes, block: int) -> None:
    """Every array taken by the block-wise path (region_min=1), cut into blocks of
    ``block`` bytes of text: same values, shapes and errors as the general parser."""
    try:
        slow = _numeric_fields(parse_json(raw))
    except (MalformedRequest, InvalidInput) as e:
        with pytest.raises(type(e)) as fast_error:
            parse_json_body(bytearray(raw), region_min=1, block_bytes=block)
        assert fast_error.value.detail == e.detail
        return
    fast = parse_json_body(bytearray(raw), region_min=1, block_bytes=block)
    assert _numeric_fields(fast) == slow


def _typed_bodies() -> list[bytes]:
    y = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    good = typed(y)
    b64 = str(good["data"])
    return [
        orjson.dumps({"y_true": [0, 1, 2], "y_pred": good}),
        orjson.dumps({"y_true": typed(np.arange(3, dtype=np.int64)), "y_pred": good}),
        orjson.dumps({"y_true": [0, 1, 2], "y_pred": {**good, "data": "!" * 64}}),
        orjson.dumps({"y_true": [0, 1, 2], "y_pred": {**good, "data": b64 + "AAAA" * 10}}),
        orjson.dumps({"y_true": [0, 1, 2], "y_pred": {**good, "data": b64[:-8]}}),
        orjson.dumps({"y_true": [0, 1, 2], "y_pred": {**good, "data": "é" * 32}}),
        orjson.dumps({"y_true": [0, 1, 2], "y_pred": {**good, "data": b64[:20] + " " + b64[20:]}}),
        orjson.dumps({"outputs": {"h": {"y_true": [0, 1, 2], "y_pred": good}}}),
        orjson.dumps({"y_true": [0, 1, 2], "y_pred": good, "as": "a name longer than that"}),
        orjson.dumps({"y_true": [0, 1, 2], "y_pred": good, "a key longer than the limit": 1}),
        orjson.dumps({"y_true": [0, 1, 2], "y_pred": {"data": b64, "dtype": "float32"}}),
        orjson.dumps({"y_true": [0, 1, 2], "y_pred": [b64]}),
        # Brackets, braces and escaped quotes in short strings around the text.
        orjson.dumps({"note": 'a [b] \\" {c} \\', "y_true": [0, 1, 2], "y_pred": good}),
        orjson.dumps({"y_pred": good, "y_true": [0, 1, 2], "k": "]]", "e": ""}),
        # Not ASCII elsewhere in the body: the text is copied, not viewed.
        orjson.dumps({"y_true": [0, 1, 2], "y_pred": good, "class_names": ["é", "b", "c"]}),
        # More strings than the walk takes: every byte is scanned.
        orjson.dumps({"y_true": [0, 1, 2], "y_pred": good, "class_names": ["x"] * 600}),
        orjson.dumps({"y_true": [0, 1, 2], "y_pred": good})[:-40],  # cut in the text
        orjson.dumps({"y_true": [0, 1, 2], "y_pred": good})[:-2] + b'\\"}}',
    ]


TYPED_BODIES = _typed_bodies()


@pytest.mark.parametrize("raw", TYPED_BODIES, ids=range(len(TYPED_BODIES)))
def test_typed_arrays_text_copied_from_the_body_decodes_as_the_string(raw: bytes) -> None:
    """Strings of 16 bytes and more taken from the body as bytes: same arrays and errors."""
    try:
        slow = _numeric_fields(parse_json(raw))
    except MalformedRequest as e:
        with pytest.raises(MalformedRequest) as fast_error:
            parse_json_body(bytearray(raw), text_min=16)
        assert fast_error.value.detail == e.detail
        return
    fast = parse_json_body(bytearray(raw), text_min=16)
    assert _numeric_fields(fast) == slow


def test_typed_array_text_is_read_in_place() -> None:
    """An ASCII body's typed array text is a view of the body (nothing copied); otherwise
    it is copied once."""
    raw = bytearray(TYPED_BODIES[0])
    body = parse_json_body(raw, text_min=16)
    text = body["y_pred"]["data"]
    assert isinstance(text, BodyText) and text.text.obj is raw
    assert text.text == parse_json(raw)["y_pred"]["data"].encode()
    frozen = parse_json_body(bytes(raw), text_min=16)["y_pred"]["data"]
    assert isinstance(frozen, memoryview) and frozen.readonly
    with pytest.raises(BufferError):  # the body cannot be freed under the view
        raw.clear()
    del body, text
    raw.clear()
    not_ascii = parse_json_body(bytearray(TYPED_BODIES[14]), text_min=16)
    assert isinstance(not_ascii["y_pred"]["data"], bytes)


def _big_typed_bodies() -> list[bytes]:
    good = typed(BIG)
    text = str(good["data"])
    labels = typed(np.arange(3, dtype=np.int64))
    return [
        orjson.dumps({"y_true": labels, "y_pred": good}),
        orjson.dumps({"outputs": {"h": {"y_true": labels, "y_pred": good}}, "from_logits": True}),
        orjson.dumps({"y_true": labels, "y_pred": {**good, "shape": [BIG.size - 1]}}),
        orjson.dumps({"y_true": labels, "y_pred": {**good, "dtype": "float64"}}),
        orjson.dumps({"y_true": labels, "y_pred": {**good, "data": _spliced(text, 999, "QQ==")}}),
        orjson.dumps({"y_true": labels, "y_pred": {**good, "data": _spliced(text, -9, "Q!==")}}),
    ]


BIG_TYPED_BODIES = _big_typed_bodies()


@pytest.mark.parametrize("raw", BIG_TYPED_BODIES, ids=range(len(BIG_TYPED_BODIES)))
def test_large_typed_arrays_decoded_in_the_body_decode_as_the_string(raw: bytes) -> None:
    """Large typed arrays whose text is decoded in place, over the body: the same arrays
    and errors as the general parser's strings give, and again when decoded twice."""
    slow = _numeric_fields(parse_json(raw))
    body = bytearray(raw)
    fast = parse_json_body(body)
    head = fast["outputs"]["h"] if "outputs" in fast else fast
    assert isinstance(head["y_pred"]["data"], BodyText)
    assert _numeric_fields(fast) == slow
    assert _numeric_fields(fast) == slow


def test_a_typed_array_decoded_in_place_is_a_view_of_the_body() -> None:
    body = bytearray(BIG_TYPED_BODIES[0])
    a = to_array(parse_json_body(body)["y_pred"], ("y_pred",), LIMIT)
    np.testing.assert_array_equal(a, BIG)
    assert np.shares_memory(a, np.frombuffer(body, np.uint8))
    assert a.flags.aligned and a.ctypes.data % 64 == 0
    # The text it came from is gone: the bytes were written over it.
    assert str(typed(BIG)["data"]).encode() not in body


def test_the_strings_of_a_typed_body_are_found_without_scanning_their_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the bytes outside long strings are scanned for brackets: a typed array's
    text (here 1.3 MB of base64) is skipped by ``bytes.find``."""
    from service import arrays

    scanned: list[int] = []
    real = np.flatnonzero

    def counting(a: Any) -> Any:
        scanned.append(np.size(a))
        return real(a)

    y = np.random.default_rng(0).random((1000, 250), dtype=np.float32)
    raw = bytearray(orjson.dumps({"y_true": list(range(1000)), "y_pred": typed(y)}))
    monkeypatch.setattr(arrays.np, "flatnonzero", counting)
    body = parse_json_body(raw)
    monkeypatch.undo()
    assert sum(scanned) < 10_000 < len(raw)
    np.testing.assert_array_equal(to_array(body["y_pred"], ("y_pred",), LIMIT), y)


nested_numbers = st.recursive(
    st.one_of(
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.none(),
    ),
    lambda children: st.lists(children, max_size=4),
    max_leaves=40,
)


@st.composite
def rectangular(draw: st.DrawFn) -> list[object]:
    shape = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    flat = draw(
        st.lists(
            st.floats(allow_nan=False, allow_infinity=False, width=32),
            min_size=math.prod(shape),
            max_size=math.prod(shape),
        )
    )
    out: object = flat
    for size in reversed(shape[1:]):
        assert isinstance(out, list)
        out = [out[i : i + size] for i in range(0, len(out), size)]
    assert isinstance(out, list)
    return out


@settings(max_examples=300, deadline=None)
@given(
    y_pred=st.one_of(rectangular(), nested_numbers),
    y_true=st.one_of(rectangular(), nested_numbers),
    block=st.integers(1, 64),
    indent=st.booleans(),
)
def test_block_wise_path_matches_the_general_parser_on_any_nesting(
    y_pred: object, y_true: object, block: int, indent: bool
) -> None:
    raw = orjson.dumps(
        {"y_true": y_true, "y_pred": y_pred, "from_logits": False},
        option=orjson.OPT_INDENT_2 if indent else 0,
    )
    slow = _numeric_fields(parse_json(raw))
    assert _numeric_fields(parse_json_body(raw, region_min=1, block_bytes=block)) == slow


def test_fast_json_path_reads_big_arrays_into_buffers() -> None:
    y_pred = np.random.default_rng(1).random((64, 50))
    raw = orjson.dumps(
        {"y_true": list(range(64)), "y_pred": y_pred}, option=orjson.OPT_SERIALIZE_NUMPY
    )
    body = parse_json_body(raw)
    assert isinstance(body["y_pred"], np.ndarray) and body["y_pred"].shape == (64, 50)
    np.testing.assert_array_equal(body["y_pred"], y_pred)


def test_unaligned_binary_tensors_are_copied_once_to_aligned_memory() -> None:
    y = np.arange(6, dtype=np.float32)
    header = orjson.dumps({"y_pred": {"dtype": "float32", "shape": [6], "binary_data_size": 24}})
    header += b" " * (1 + (-len(header)) % 4)  # tensor bytes start at an odd offset
    decoded = parse_binary(bytearray(header + y.tobytes()), len(header), LIMIT)
    assert decoded["y_pred"].flags.aligned
    np.testing.assert_array_equal(decoded["y_pred"], y)


def test_escapes_keep_a_big_body_on_the_fast_path() -> None:
    """A body with escaped strings (class names, an alias) still has its big arrays read
    straight into buffers, not by the general parser."""
    y_pred = np.random.default_rng(2).random((256, 64))
    raw = orjson.dumps(
        {"y_true": list(range(256)), "y_pred": y_pred, "as": 'a "quoted" \\ [name]'},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    assert b"\\" in raw
    body = parse_json_body(raw, general_max_bytes=1024)  # the general parser would refuse
    assert isinstance(body["y_pred"], np.ndarray)
    np.testing.assert_array_equal(body["y_pred"], y_pred)
    assert body["as"] == 'a "quoted" \\ [name]'


def test_a_string_that_looks_like_a_placeholder_is_never_replaced() -> None:
    """The placeholders of the big arrays carry a fresh nonce: a body's own strings
    (here, what an older placeholder looked like) are never taken for one."""
    y_pred = np.random.default_rng(3).random((256, 64))
    for forged in ("\x000", "\x00" + "0" * 16 + ":0"):
        raw = orjson.dumps(
            {"note": y_pred, "y_true": forged, "y_pred": y_pred},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        body = parse_json_body(raw)
        assert body["y_true"] == forged


def test_a_large_body_the_fast_path_cannot_take_is_refused_not_parsed() -> None:
    raw = orjson.dumps({"y_true": [[1, "x"]] * 5000, "y_pred": [[0.5, 0.5]] * 5000})
    with pytest.raises(PayloadTooLarge) as refused:
        parse_json_body(raw, general_max_bytes=10_000)
    assert "binary" in refused.value.detail
    # Within the limit, the general parser's memory is announced before it runs (for the
    # part of the body outside the large numeric arrays).
    asked: list[int] = []
    body = parse_json_body(raw, general_max_bytes=len(raw), before_general=asked.append)
    assert isinstance(body["y_pred"], np.ndarray)
    assert len(asked) == 1 and 0 < asked[0] < len(raw) * GENERAL_PARSE_FACTOR


def test_a_deeply_nested_binary_header_is_walked_without_recursion() -> None:
    header = b'{"a": ' + b'{"b": ' * 950 + b"1" + b"}" * 950 + b"}"
    decoded = parse_binary(bytearray(header), len(header), LIMIT)
    assert isinstance(decoded, dict)
