"""The scan of a JSON body made while it arrives (``BodyScan``): what it finds is what
the parse would find after, and the parse that uses it gives the same documents and
errors."""

from __future__ import annotations

import itertools

import numpy as np
import orjson
import pytest

from service.errors import InvalidInput, MalformedRequest
from service.json_body import (
    _WALK_MIN_STRINGS,
    BodyScan,
    ScannedBody,
    _Fallback,
    _walk_strings,
    parse_json_body,
)
from tests.test_arrays import FAST_PATH_BODIES, TYPED_BODIES, _numeric_fields, typed

#: Bodies whose strings are awkward to find a chunk at a time: escaped quotes and runs
#: of backslashes (cut anywhere by the chunk sizes below), no strings, many strings.
AWKWARD = [
    b'{"a\\"b": "c\\\\", "d": "\\\\\\"", "e": "\\\\\\\\"}',
    b'{"y_true": [0, 1], "y_pred": [[0.5, 0.5], [0.1, 0.9]]}',
    orjson.dumps({"names": ["n"] * (_WALK_MIN_STRINGS + 3)}),
    b'{"a": "unterminated}',
    b'{"a": "\\u00e9", "b": "\xc3\xa9"}',
    b'{"a": "not UTF-8 \xff"}',
]
BODIES = FAST_PATH_BODIES + TYPED_BODIES + AWKWARD
CHUNKS = [1, 2, 3, 5, 64, 1 << 20]


def _scanned(raw: bytes, chunk: int) -> ScannedBody:
    """``raw`` stored a chunk at a time, as the body intake stores it, and scanned."""
    body = ScannedBody()
    scan = BodyScan()
    for start in range(0, len(raw), chunk):
        piece = raw[start : start + chunk]
        body += piece
        scan.feed(body, piece)
    body.scan = scan
    return body


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("raw", BODIES, ids=range(len(BODIES)))
def test_the_scan_finds_what_the_walk_finds(raw: bytes, chunk: int) -> None:
    body = _scanned(raw, chunk)
    assert body.scan is not None and body.scan.covers(body)
    assert body.scan.ascii == raw.isascii()
    assert body.scan.backslash == (b"\\" in raw)
    try:
        walked = _walk_strings(raw, _WALK_MIN_STRINGS)
    except _Fallback as unterminated:
        with pytest.raises(_Fallback, match=str(unterminated)):
            body.scan.quotes()
        return
    found = body.scan.quotes()
    if walked is None:
        assert found is None
    else:
        assert found is not None
        np.testing.assert_array_equal(found, walked)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("raw", BODIES, ids=range(len(BODIES)))
def test_a_scanned_body_parses_as_the_body(raw: bytes, chunk: int) -> None:
    """Same documents and errors with the scan as without (small thresholds, so that the
    fast path takes these small bodies)."""
    try:
        expected = _numeric_fields(parse_json_body(bytearray(raw), region_min=1, text_min=16))
    except (MalformedRequest, InvalidInput) as error:
        with pytest.raises(type(error)) as scanned_error:
            parse_json_body(_scanned(raw, chunk), region_min=1, text_min=16)
        assert scanned_error.value.detail == error.detail
        return
    body = _scanned(raw, chunk)
    assert _numeric_fields(parse_json_body(body, region_min=1, text_min=16)) == expected


def test_a_scan_that_missed_bytes_is_not_used() -> None:
    """A scan fed part of the body says nothing of the rest: the body is parsed whole."""
    raw = TYPED_BODIES[0]
    assert isinstance(raw, bytes)
    body = ScannedBody()
    body += raw
    body.scan = BodyScan()
    half = raw[: len(raw) // 2]
    body.scan.feed(bytearray(half), half)
    assert not body.scan.covers(body)
    assert _numeric_fields(parse_json_body(body, text_min=16)) == _numeric_fields(
        parse_json_body(bytearray(raw), text_min=16)
    )


def test_a_large_typed_body_is_parsed_from_its_scan() -> None:
    """The scan's quotes are the ones the parse uses (here it finds the typed array's text)."""
    y = np.random.default_rng(3).standard_normal(1 << 16).astype(np.float32)
    raw = orjson.dumps({"y_true": [0], "y_pred": typed(y)})
    body = _scanned(raw, 65536)
    assert body.scan is not None
    quotes = body.scan.quotes()
    assert quotes is not None
    opening, closing = raw.index(b'"data":"') + 7, raw.rindex(b'"')
    assert (opening, closing) in set(itertools.pairwise(quotes.tolist()))
    document = parse_json_body(body)
    np.testing.assert_array_equal(_numeric_fields(document)["y_pred"][1], y.tolist())  # type: ignore[index]
