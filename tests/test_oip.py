"""The Open Inference Protocol codec (``service.oip``): requests as tritonclient writes
them, to the body the losses and metrics take; results to responses it reads back."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from numpy.typing import NDArray

from service import errors, oip, registry
from service.json_body import GENERAL_PARSE_FACTOR

MAX_ELEMENTS = 1000
MAX_JSON = 64 * 1024
CCE = oip.model("categorical_crossentropy")
ACCURACY = oip.model("accuracy")

Y_TRUE = np.array([[0, 1, 0], [0, 0, 1]], np.float32)
Y_PRED = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]], np.float32)


def decode(
    body: bytes | bytearray, header_length: int | None = None, found: oip.Model = CCE, **kw: Any
) -> oip.InferRequest:
    options: dict[str, Any] = {"max_elements": MAX_ELEMENTS, "max_json_bytes": MAX_JSON, **kw}
    return oip.decode_request(body, header_length, found, **options)


def triton_body(
    arrays: dict[str, NDArray[Any]],
    *,
    binary: bool | dict[str, bool] = False,
    outputs: list[Any] | None = None,
    parameters: dict[str, Any] | None = None,
    request_id: str = "",
) -> tuple[bytes, int | None]:
    """The body (and JSON-header length) that tritonclient sends for these arrays."""
    inputs = []
    for name, array in arrays.items():
        tensor = triton.InferInput(name, list(array.shape), triton_datatype(array))
        as_binary = binary if isinstance(binary, bool) else binary.get(name, False)
        tensor.set_data_from_numpy(array, binary_data=as_binary)
        inputs.append(tensor)
    body, header_length = triton.InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id, parameters=parameters
    )
    return body, header_length


def triton_datatype(array: NDArray[Any]) -> str:
    names = {np.dtype(v): k for k, v in oip.DATATYPES.items()}
    return names[array.dtype]


def request(inputs: list[dict[str, Any]], **fields: Any) -> bytes:
    """A JSON inference request, written by hand."""
    return orjson.dumps({"inputs": inputs, **fields})


def tensor(name: str, data: Any, shape: list[int], datatype: str = "FP32") -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def nested(value: Any, depth: int) -> Any:
    """``value`` inside ``depth`` lists: ``nested(0, 2) == [[0]]``."""
    for _ in range(depth):
        value = [value]
    return value


BASIC = [
    tensor("y_true", [0, 1, 0, 0, 0, 1], [2, 3]),
    tensor("y_pred", [0.05, 0.95, 0.0, 0.1, 0.8, 0.1], [2, 3]),
]


# ---- models and metadata ------------------------------------------------------------------


def test_every_loss_and_metric_is_a_model_with_its_output() -> None:
    models = {m.name: m for m in oip.models()}
    assert set(models) == set(registry.LOSSES) | set(registry.METRICS)
    for name in registry.LOSSES:
        assert oip.model(name) == models[name]
        assert models[name].output == "loss"
    for name in registry.METRICS:
        assert models[name].output == "value"


def test_an_unknown_model_is_a_404_that_lists_the_models() -> None:
    with pytest.raises(errors.NotFound) as caught:
        oip.model("mean_squared_error")
    detail = caught.value.detail
    assert "'mean_squared_error'" in detail
    assert all(name in detail for name in [*registry.LOSSES, *registry.METRICS])


def test_the_one_version_is_1() -> None:
    oip.check_version(CCE, "1")
    with pytest.raises(errors.NotFound, match="no version '2': its only version is '1'"):
        oip.check_version(CCE, "2")


def test_metadata_names_inputs_and_output() -> None:
    metadata = oip.model_metadata(oip.model("sparse_categorical_crossentropy"))
    assert metadata["name"] == "sparse_categorical_crossentropy"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "keras3_loss"
    assert [t["name"] for t in metadata["inputs"]] == ["y_true", "y_pred", "sample_weight"]
    assert metadata["inputs"][0] == {"name": "y_true", "datatype": "INT64", "shape": [-1]}
    assert metadata["outputs"] == [{"name": "loss", "datatype": "FP64", "shape": [-1]}]
    metric = oip.model_metadata(ACCURACY)
    assert metric["platform"] == "keras3_metric"
    assert metric["inputs"][0] == {"name": "y_true", "datatype": "FP32", "shape": [-1, -1]}
    assert metric["outputs"][0]["name"] == "value"


def test_server_metadata_lists_the_binary_extension() -> None:
    metadata = oip.server_metadata()
    assert metadata["name"] == "loss-service"
    assert "binary_tensor_data" in metadata["extensions"]


# ---- requests -----------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(oip.DATATYPES))
def test_json_inputs_as_tritonclient_writes_them(datatype: str) -> None:
    dtype = np.dtype(oip.DATATYPES[datatype])
    y_pred = (np.arange(6).reshape(2, 3) % 2).astype(dtype)
    body, header_length = triton_body({"y_true": Y_TRUE, "y_pred": y_pred})
    assert header_length is None
    decoded = decode(body)
    assert decoded.document["y_pred"].dtype == dtype
    np.testing.assert_array_equal(decoded.document["y_pred"], y_pred)
    np.testing.assert_array_equal(decoded.document["y_true"], Y_TRUE)


@pytest.mark.parametrize("datatype", list(oip.DATATYPES))
def test_binary_inputs_as_tritonclient_writes_them(datatype: str) -> None:
    dtype = np.dtype(oip.DATATYPES[datatype])
    y_pred = (np.arange(12).reshape(2, 3, 2) % 2).astype(dtype)
    weights = np.array([1.0, 2.0], np.float64)
    body, header_length = triton_body(
        {"y_true": Y_TRUE, "y_pred": y_pred, "sample_weight": weights}, binary=True
    )
    assert header_length is not None
    decoded = decode(body, header_length)
    for name, expected in (("y_true", Y_TRUE), ("y_pred", y_pred), ("sample_weight", weights)):
        assert decoded.document[name].dtype == expected.dtype
        assert decoded.document[name].shape == expected.shape
        np.testing.assert_array_equal(decoded.document[name], expected)


def test_binary_and_json_inputs_mixed() -> None:
    body, header_length = triton_body(
        {"y_true": Y_TRUE, "y_pred": Y_PRED, "sample_weight": np.array([3.0, 1.0], np.float32)},
        binary={"y_pred": True},
    )
    decoded = decode(body, header_length)
    np.testing.assert_array_equal(decoded.document["y_pred"], Y_PRED)
    np.testing.assert_array_equal(decoded.document["sample_weight"], [3.0, 1.0])


def test_aligned_binary_inputs_are_views_of_the_body() -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "y_true", "shape": [2, 3], "datatype": "FP32",
                 "parameters": {"binary_data_size": 24}},
                {"name": "y_pred", "shape": [2, 3], "datatype": "FP32",
                 "parameters": {"binary_data_size": 24}},
            ]
        }
    )  # fmt: skip
    header += b" " * (-len(header) % 8)  # the tensors start 8-aligned
    body = bytearray(header + Y_TRUE.tobytes() + Y_PRED.tobytes())
    decoded = decode(body, len(header))
    whole = np.frombuffer(body, np.uint8)
    assert np.shares_memory(decoded.document["y_true"], whole)
    assert np.shares_memory(decoded.document["y_pred"], whole)
    np.testing.assert_array_equal(decoded.document["y_pred"], Y_PRED)


def test_misaligned_binary_inputs_are_copied_once_and_equal() -> None:
    body, header_length = triton_body({"y_true": Y_TRUE, "y_pred": Y_PRED}, binary=True)
    assert header_length is not None
    padded = b" " + body  # the JSON may start with whitespace: every tensor moves one byte
    decoded = decode(padded, header_length + 1)
    assert decoded.document["y_pred"].flags.aligned
    np.testing.assert_array_equal(decoded.document["y_pred"], Y_PRED)


def test_flat_and_nested_data_are_the_same_row_major_array() -> None:
    flat = decode(request(BASIC)).document
    nested = decode(
        request(
            [
                tensor("y_true", [[0, 1, 0], [0, 0, 1]], [2, 3]),
                tensor("y_pred", [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]], [2, 3]),
            ]
        )
    ).document
    for name in ("y_true", "y_pred"):
        np.testing.assert_array_equal(flat[name], nested[name])
        assert flat[name].shape == (2, 3)


def test_fp32_json_numbers_are_read_as_float32() -> None:
    decoded = decode(request(BASIC)).document
    assert decoded["y_pred"].dtype == np.float32
    assert decoded["y_pred"][0, 0] == np.float32(0.05)


def test_parameters_go_to_the_body_and_protocol_ones_do_not() -> None:
    parameters = {
        "from_logits": True,
        "label_smoothing": 0.1,
        "reduction": "none",
        "priority": 2,
        "timeout": 1000,
        "content_type": "np",
        "binary_data_output": True,
    }
    decoded = decode(request(BASIC, parameters=parameters, id="req-7"))
    assert {k: v for k, v in decoded.document.items() if not k.startswith("y_")} == {
        "from_logits": True,
        "label_smoothing": 0.1,
        "reduction": "none",
    }
    assert decoded.id == "req-7"
    assert decoded.binary_output is True


def test_tritonclient_parameters_reach_the_body() -> None:
    body, _ = triton_body({"y_true": Y_TRUE, "y_pred": Y_PRED}, parameters={"from_logits": True})
    assert decode(body).document["from_logits"] is True


@pytest.mark.parametrize(
    ("outputs", "binary_data_output", "expected"),
    [
        (None, None, False),
        (None, True, True),
        ([{"name": "loss"}], True, True),
        ([{"name": "loss", "parameters": {"binary_data": False}}], True, False),
        ([{"name": "loss", "parameters": {"binary_data": True}}], None, True),
        ([], None, False),
    ],
)
def test_binary_output_asked_per_output_over_the_request(
    outputs: list[Any] | None, binary_data_output: bool | None, expected: bool
) -> None:
    fields: dict[str, Any] = {}
    if outputs is not None:
        fields["outputs"] = outputs
    if binary_data_output is not None:
        fields["parameters"] = {"binary_data_output": binary_data_output}
    assert decode(request(BASIC, **fields)).binary_output is expected


def test_tritonclient_asks_binary_outputs_unless_told_otherwise() -> None:
    arrays = {"y_true": Y_TRUE, "y_pred": Y_PRED}
    assert decode(triton_body(arrays)[0]).binary_output is True
    as_json = [triton.InferRequestedOutput("loss", binary_data=False)]
    assert decode(triton_body(arrays, outputs=as_json)[0]).binary_output is False


def test_the_json_parse_is_announced_before_it_starts() -> None:
    body = request(BASIC)
    seen: list[int] = []
    decode(body, before_json=seen.append)
    assert seen == [len(body) * GENERAL_PARSE_FACTOR]

    def refuse(nbytes: int) -> None:
        raise errors.ServiceUnavailable("over the budget")

    with pytest.raises(errors.ServiceUnavailable):
        decode(body, before_json=refuse)


def _binary(*tensors: tuple[str, str, list[int], bytes], extra: bytes = b"") -> tuple[bytes, int]:
    header = orjson.dumps(
        {
            "inputs": [
                {"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(b)}}
                for n, d, s, b in tensors
            ]
        }
    )
    return header + b"".join(b for *_, b in tensors) + extra, len(header)


def _cut(framed: tuple[bytes, int], n: int) -> tuple[bytes, int]:
    """A binary request missing its last ``n`` bytes."""
    return framed[0][:-n], framed[1]


TRUE_BYTES = ("y_true", "FP32", [2, 3], Y_TRUE.tobytes())
PRED_BYTES = ("y_pred", "FP32", [2, 3], Y_PRED.tobytes())

INVALID: list[tuple[str, bytes, type[errors.ServiceError], str]] = [
    ("not an object", b"[1, 2]", errors.InvalidInput, "must be a JSON object, received an array"),
    ("malformed JSON", b'{"inputs": [', errors.MalformedRequest, "not valid JSON"),
    (
        "tensor bytes after JSON",
        request(BASIC) + b"\x01\x02",
        errors.MalformedRequest,
        "needs Inference-Header-Content-Length: the byte length of that JSON",
    ),
    (
        "unknown field",
        request(BASIC, input=[]),
        errors.InvalidInput,
        "unknown field(s) ['input']",
    ),
    ("id not a string", request(BASIC, id=7), errors.InvalidInput, "`id` must be a string"),
    (
        "parameters not an object",
        request(BASIC, parameters=[1]),
        errors.InvalidInput,
        "`parameters` must be a JSON object",
    ),
    (
        "parameter value an array",
        request(BASIC, parameters={"from_logits": [True]}),
        errors.InvalidInput,
        "Parameter `from_logits` must be a string, a number or a boolean, received an array",
    ),
    (
        "sequence",
        request(BASIC, parameters={"sequence_id": 4}),
        errors.InvalidInput,
        "take no sequences",
    ),
    (
        "binary_data_output not a boolean",
        request(BASIC, parameters={"binary_data_output": "yes"}),
        errors.InvalidInput,
        "`binary_data_output` must be true or false, received 'yes'",
    ),
    (
        "an input as a parameter",
        request(BASIC, parameters={"y_true": 1}),
        errors.InvalidInput,
        "`y_true` is an input, not a parameter",
    ),
    ("no inputs", orjson.dumps({}), errors.InvalidInput, "`inputs` must be a list"),
    ("empty inputs", request([]), errors.InvalidInput, "received an empty list"),
    (
        "unknown input",
        request([*BASIC, tensor("weights", [1, 1], [2])]),
        errors.InvalidInput,
        "is named 'weights': expected `y_true`, `y_pred` or `sample_weight`",
    ),
    (
        "input twice",
        request([*BASIC, BASIC[0]]),
        errors.InvalidInput,
        "Input `y_true` is given twice",
    ),
    (
        "missing y_pred",
        request(BASIC[:1]),
        errors.InvalidInput,
        "Input `y_pred` is missing",
    ),
    (
        "no shape",
        request([{"name": "y_true", "datatype": "FP32", "data": [1]}, BASIC[1]]),
        errors.InvalidInput,
        "Input `y_true` has no `shape`",
    ),
    (
        "negative dimension",
        request([tensor("y_true", [1], [-1]), BASIC[1]]),
        errors.InvalidInput,
        "`inputs.y_true.shape` must be a list of at most 32 non-negative integers, received [-1]",
    ),
    (
        "over the element limit",
        request([tensor("y_true", [1], [10, 101]), BASIC[1]]),
        errors.PayloadTooLarge,
        "1010 elements, over the limit of 1000",
    ),
    (
        "an empty shape NumPy cannot build",
        request([tensor("y_true", [], [0, 2**62]), BASIC[1]]),
        errors.InvalidInput,
        "`inputs.y_true.shape` is [0, 4611686018427387904]: an empty array whose other "
        "dimensions multiply to 4611686018427387904",
    ),
    (
        "BYTES",
        request([tensor("y_true", ["a"], [1], "BYTES"), BASIC[1]]),
        errors.InvalidInput,
        "not a datatype the service reads: expected one of ['FP16', 'FP32', 'FP64', 'INT8', "
        "'INT16', 'INT32', 'INT64', 'UINT8', 'BOOL'], received 'BYTES'",
    ),
    (
        "data not an array",
        request([tensor("y_true", 1, [1]), BASIC[1]]),
        errors.InvalidInput,
        "must be a JSON array of numbers",
    ),
    (
        "ragged",
        request([tensor("y_true", [[0, 1, 0], [1, 0]], [2, 3]), BASIC[1]]),
        errors.InvalidInput,
        "not a rectangular array",
    ),
    (
        "count against shape",
        request([tensor("y_true", [0, 1, 0, 0, 0], [2, 3]), BASIC[1]]),
        errors.InvalidInput,
        "holds 5 values, but the input's shape [2, 3] needs 6",
    ),
    (
        "strings",
        request([tensor("y_true", ["0"] * 6, [2, 3]), BASIC[1]]),
        errors.InvalidInput,
        "of a FP32 input must hold numbers: received strings",
    ),
    (
        "nulls",
        request([tensor("y_true", [None] * 6, [2, 3]), BASIC[1]]),
        errors.InvalidInput,
        "received values that are not numbers",
    ),
    (
        "BOOL as numbers",
        request([tensor("y_true", [0, 1, 0, 0, 0, 1], [2, 3], "BOOL"), BASIC[1]]),
        errors.InvalidInput,
        "of a BOOL input must hold true or false: received integers",
    ),
    (
        "FP32 as booleans",
        request([tensor("y_true", [True] * 6, [2, 3]), BASIC[1]]),
        errors.InvalidInput,
        "must hold numbers: received true/false",
    ),
    (
        "INT64 with fractions",
        request([tensor("y_true", [0.5, 1], [2], "INT64"), BASIC[1]]),
        errors.InvalidInput,
        "of a INT64 input must hold integers: received numbers with a fraction or exponent",
    ),
    (
        "INT8 out of range",
        request([tensor("y_true", [1, 300], [2], "INT8"), BASIC[1]]),
        errors.InvalidInput,
        "holds 300, out of the INT8 range [-128, 127]",
    ),
    (
        "UINT8 negative",
        request([tensor("y_true", [-1, 1], [2], "UINT8"), BASIC[1]]),
        errors.InvalidInput,
        "holds -1, out of the UINT8 range [0, 255]",
    ),
    (
        "INT8 out of range: a wider datatype",
        request([tensor("y_true", [1, 300], [2], "INT8"), BASIC[1]]),
        errors.InvalidInput,
        "expected a wider datatype such as INT64",
    ),
    (
        "INT64 out of range: none is wider",
        request([tensor("y_true", [2**63, 2**63], [2], "INT64"), BASIC[1]]),
        errors.InvalidInput,
        "holds 9223372036854775808, out of the INT64 range [-9223372036854775808, "
        "9223372036854775807]; expected integers in that range (no datatype of this model's "
        "inputs is wider)",
    ),
    (
        "INT64 beyond 64 bits",
        request([tensor("y_true", [0, 1], [2], "INT64"), BASIC[1]]).replace(
            b"[0,1]", b"[0,18446744073709551616]"
        ),
        errors.InvalidInput,
        "holds whole numbers out of the INT64 range (up to 1.845e+19): expected integers "
        "in [-9223372036854775808, 9223372036854775807]",
    ),
    (
        "nested deeper than NumPy's dimensions",
        request([tensor("y_true", nested(0, 200), [1], "INT64"), BASIC[1]]),
        errors.InvalidInput,
        "is nested 200 lists deep: expected integers, flat or in lists nested at most as deep "
        "as the shape [1] (and at most 32)",
    ),
    (
        "FP16 overflow",
        request([BASIC[0], tensor("y_pred", [1e5] * 6, [2, 3], "FP16")]),
        errors.InvalidInput,
        "too large for FP16 (they would be infinite); expected a wider datatype: FP32 or FP64",
    ),
    (
        "FP32 overflow",
        request([BASIC[0], tensor("y_pred", [1e39] * 6, [2, 3], "FP32")]),
        errors.InvalidInput,
        "too large for FP32 (they would be infinite); expected a wider datatype: FP64.",
    ),
    (
        "shared memory",
        request(
            [BASIC[0], {**BASIC[1], "parameters": {"shared_memory_region": "r"}}],
        ),
        errors.InvalidInput,
        "shared memory region, which the service does not read",
    ),
    (
        "neither data nor binary",
        request([BASIC[0], {"name": "y_pred", "shape": [2, 3], "datatype": "FP32"}]),
        errors.InvalidInput,
        "Input `y_pred` has neither `data` nor `parameters.binary_data_size`",
    ),
    (
        "both data and binary",
        request([BASIC[0], {**BASIC[1], "parameters": {"binary_data_size": 24}}]),
        errors.InvalidInput,
        "has both `data` and `binary_data_size`",
    ),
    (
        "binary size not an integer",
        request([BASIC[0], {**BASIC[1], "parameters": {"binary_data_size": "24"}}]),
        errors.InvalidInput,
        "`binary_data_size` of input `y_pred` must be a non-negative integer, received '24'",
    ),
    (
        "binary sizes in a JSON request",
        _binary(TRUE_BYTES, PRED_BYTES)[0][: _binary(TRUE_BYTES, PRED_BYTES)[1]],
        errors.MalformedRequest,
        "has binary_data_size 24, but the request has no Inference-Header-Content-Length",
    ),
    (
        "binary tensors without the header",
        _binary(TRUE_BYTES, PRED_BYTES)[0],
        errors.MalformedRequest,
        "not valid JSON",
    ),
    (
        "no output by that name",
        request(BASIC, outputs=[{"name": "value"}]),
        errors.InvalidInput,
        "Model 'categorical_crossentropy' has one output, `loss`: received a request for 'value'.",
    ),
    (
        "the output twice",
        request(BASIC, outputs=[{"name": "loss"}, {"name": "loss"}]),
        errors.InvalidInput,
        "received a request for 'loss' again",
    ),
    (
        "classification",
        request(BASIC, outputs=[{"name": "loss", "parameters": {"classification": 3}}]),
        errors.InvalidInput,
        "does not write classification results",
    ),
    (
        "outputs not a list",
        request(BASIC, outputs={"name": "loss"}),
        errors.InvalidInput,
        "`outputs` must be a list of requested outputs",
    ),
]


@pytest.mark.parametrize(
    ("body", "error", "message"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_json_requests(body: bytes, error: type[errors.ServiceError], message: str) -> None:
    with pytest.raises(error) as caught:
        decode(body)
    assert type(caught.value) is error
    assert message in caught.value.detail


BINARY_INVALID: list[tuple[str, tuple[bytes, int], type[errors.ServiceError], str]] = [
    (
        "sizes past the body",
        _cut(_binary(TRUE_BYTES, PRED_BYTES), 4),
        errors.MalformedRequest,
        "has binary_data_size 24, but only 20 bytes of tensor data are left",
    ),
    (
        "a header length that cuts the JSON",
        (_binary(TRUE_BYTES, PRED_BYTES)[0], _binary(TRUE_BYTES, PRED_BYTES)[1] - 1),
        errors.MalformedRequest,
        "as Inference-Header-Content-Length says",
    ),
    (
        "bytes after the last tensor",
        _binary(TRUE_BYTES, PRED_BYTES, extra=b"\0\0"),
        errors.MalformedRequest,
        "The body has 2 bytes after the last tensor",
    ),
    (
        "size against datatype and shape",
        _binary(TRUE_BYTES, ("y_pred", "FP64", [2, 3], Y_PRED.tobytes())),
        errors.InvalidInput,
        "has binary_data_size 24, but datatype FP64 and shape [2, 3] need 48 bytes",
    ),
    (
        "an empty shape NumPy cannot build",
        _binary(("y_true", "FP32", [0, 2**40, 2**40], b""), PRED_BYTES),
        errors.InvalidInput,
        "an empty array whose other dimensions multiply to 1208925819614629174706176",
    ),
    (
        "BOOL bytes other than 0 and 1",
        _binary(("y_true", "BOOL", [2, 3], bytes([0, 1, 0, 0, 2, 1])), PRED_BYTES),
        errors.InvalidInput,
        "is BOOL, so each of its bytes must be 0 or 1",
    ),
]


@pytest.mark.parametrize(
    ("framed", "error", "message"),
    [case[1:] for case in BINARY_INVALID],
    ids=[c[0] for c in BINARY_INVALID],
)
def test_invalid_binary_requests(
    framed: tuple[bytes, int], error: type[errors.ServiceError], message: str
) -> None:
    with pytest.raises(error) as caught:
        decode(*framed)
    assert type(caught.value) is error
    assert message in caught.value.detail


def test_json_over_its_limit_is_a_413_that_names_the_binary_extension() -> None:
    body = request(BASIC, id="x" * 200)
    with pytest.raises(errors.PayloadTooLarge) as caught:
        decode(body, max_json_bytes=100)
    assert f"is {len(body)} bytes, over the limit of 100 bytes" in caught.value.detail
    assert "binary tensor data extension" in caught.value.detail
    # A binary request's limit is on its JSON header only.
    framed = _binary(TRUE_BYTES, PRED_BYTES)
    decode(*framed, max_json_bytes=framed[1])
    with pytest.raises(errors.PayloadTooLarge):
        decode(*framed, max_json_bytes=framed[1] - 1)


# ---- responses ----------------------------------------------------------------------------


def _read_back(content: bytes, header_length: int | None) -> Any:
    return triton.InferenceServerClient.parse_response_body(content, header_length=header_length)


LOSS_RESULT = {
    "loss": 1.1769392490386963,
    "name": "categorical_crossentropy",
    "reduction": "sum_over_batch_size",
    "label_encoding": "one_hot",
    "n_samples": 2,
    "n_classes": 3,
    "warnings": [{"code": "probabilities_renormalized", "message": "rows were renormalized"}],
}


def test_a_number_is_fp64_of_shape_1_and_the_rest_goes_in_parameters() -> None:
    decoded = decode(request(BASIC, id="abc"))
    content, header_length = oip.encode_response(CCE, LOSS_RESULT, decoded)
    assert header_length is None
    response = orjson.loads(content)
    assert response == {
        "model_name": "categorical_crossentropy",
        "model_version": "1",
        "id": "abc",
        "parameters": {
            "reduction": "sum_over_batch_size",
            "label_encoding": "one_hot",
            "n_samples": 2,
            "n_classes": 3,
            "warnings": json.dumps(LOSS_RESULT["warnings"], separators=(",", ":")),
        },
        "outputs": [
            {"name": "loss", "datatype": "FP64", "shape": [1], "data": [LOSS_RESULT["loss"]]}
        ],
    }
    result = _read_back(content, header_length)
    assert result.as_numpy("loss").tolist() == [LOSS_RESULT["loss"]]
    assert json.loads(result.get_response()["parameters"]["warnings"]) == LOSS_RESULT["warnings"]


def test_no_id_is_echoed_when_none_was_sent() -> None:
    content, _ = oip.encode_response(CCE, LOSS_RESULT, decode(request(BASIC)))
    assert "id" not in orjson.loads(content)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_sample_values_keep_their_dtype_and_shape(dtype: type[np.floating[Any]]) -> None:
    values = np.array([[0.25, 1.5], [2.0, 0.1]], dtype)
    result = {**LOSS_RESULT, "loss": values, "reduction": "none"}
    for binary in (False, True):
        decoded = decode(request(BASIC, parameters={"binary_data_output": binary}))
        content, header_length = oip.encode_response(CCE, result, decoded)
        assert (header_length is not None) is binary
        read = _read_back(content, header_length)
        output = read.get_output("loss")
        assert output["datatype"] == ("FP32" if dtype is np.float32 else "FP64")
        assert output["shape"] == [2, 2]
        got = read.as_numpy("loss")
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, values)


def test_binary_output_is_the_header_then_little_endian_bytes() -> None:
    decoded = decode(request(BASIC, parameters={"binary_data_output": True}))
    content, header_length = oip.encode_response(CCE, LOSS_RESULT, decoded)
    assert header_length is not None
    header = orjson.loads(content[:header_length])
    assert header["outputs"] == [
        {"name": "loss", "datatype": "FP64", "shape": [1], "parameters": {"binary_data_size": 8}}
    ]
    assert content[header_length:] == np.array([LOSS_RESULT["loss"]], "<f8").tobytes()


def test_a_metric_says_what_it_resolved_to() -> None:
    result = {
        "value": 0.5,
        "name": "accuracy",
        "resolved_as": "categorical_accuracy",
        "label_encoding": "one_hot",
        "n_samples": 2,
        "n_classes": 3,
        "warnings": [],
    }
    content, _ = oip.encode_response(ACCURACY, result, decode(request(BASIC), found=ACCURACY))
    response = orjson.loads(content)
    assert response["parameters"]["resolved_as"] == "categorical_accuracy"
    assert response["parameters"]["warnings"] == "[]"
    assert response["outputs"][0]["name"] == "value"
    assert response["outputs"][0]["data"] == [0.5]
