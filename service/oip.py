"""The Open Inference Protocol (v2: KServe, Triton) as the service speaks it, without the web.

Every loss and every metric of the registry is a "model" of the same name, with one
version, ``"1"``; its inputs are ``y_true``, ``y_pred`` and optionally ``sample_weight``,
its one output ``loss`` (a loss) or ``value`` (a metric).

Requests (:func:`decode_request`) become the decoded body that
:func:`service.evaluation.loss` and :func:`service.evaluation.metric` take, so the numbers
are those of ``/v1`` for the same arrays:

* an input is ``{"name", "shape", "datatype", "data"}``, ``data`` a JSON array, flat or
  nested, in row-major order; or, with the binary tensor data extension,
  ``{"name", "shape", "datatype", "parameters": {"binary_data_size": <bytes>}}``: the body
  is then a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw
  little-endian tensors, back to back, in the order of the inputs that have a
  ``binary_data_size``. Those arrays are views of the body: decoding copies nothing;
* datatypes are those of the service's typed arrays: ``FP16``, ``FP32``, ``FP64``,
  ``INT8``, ``INT16``, ``INT32``, ``INT64``, ``UINT8``, ``BOOL``. An array holds the values
  of its datatype: JSON numbers of an ``FP32`` input are rounded to float32 as they are
  read, as ``{"dtype": "float32", ...}`` typed arrays hold them on ``/v1``;
* the request's ``parameters`` are the loss's or metric's (``from_logits``,
  ``label_smoothing``, ``reduction``, ``k``, ``threshold``, ``label_encoding``,
  ``dtype``...), checked as on ``/v1`` (an unknown one is a 422), except the protocol's
  own: ``binary_data_output`` (answer in binary), and ``priority``, ``timeout`` and
  ``content_type``, accepted with no effect (a request is computed when it arrives, and
  the datatype says how to read an input).

Responses (:func:`encode_response`) hold the value as the model's one output: a single
number as ``FP64`` of shape ``[1]``; per-sample losses (``reduction: "none"``) in the
computation's dtype (``FP32``, or ``FP64`` with ``dtype: "float64"``) and their shape.
The rest of the ``/v1`` response is in the response's ``parameters``: ``reduction`` (a
loss), ``resolved_as`` (a metric), ``label_encoding``, ``n_samples``, ``n_classes``, and
``warnings``, the ``/v1`` list of ``{"code", "message"}`` as JSON text (a parameter of the
protocol is a string, a number or a boolean). An output asked for with
``"parameters": {"binary_data": true}``, or every output when the request's
``binary_data_output`` is true, is answered in the binary extension: the response is the
JSON header, of the length :func:`encode_response` returns (the
``Inference-Header-Content-Length`` of the answer), then the output's little-endian bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import numpy as np
import orjson
from numpy.typing import NDArray

from service import __version__, registry
from service.arrays import check_empty_shape, nesting_depth, parse_json
from service.errors import Loc, MalformedRequest, NotFound, PayloadTooLarge, invalid, json_kind
from service.json_body import GENERAL_PARSE_FACTOR
from service.wire import MAX_DIMS

SERVER_NAME: Final = "loss-service"
MODEL_VERSION: Final = "1"
EXTENSIONS: Final = ("binary_tensor_data",)

#: The protocol's datatypes the service reads, as NumPy dtypes.
DATATYPES: Final[dict[str, str]] = {
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "UINT8": "uint8",
    "BOOL": "bool",
}
INPUTS: Final = ("y_true", "y_pred", "sample_weight")
REQUIRED_INPUTS: Final = ("y_true", "y_pred")
#: Request parameters of the protocol that are accepted and have no effect.
IGNORED_PARAMETERS: Final = frozenset({"priority", "timeout", "content_type"})
BINARY_OUTPUT_PARAMETER: Final = "binary_data_output"

_REQUEST_KEYS: Final = ("id", "parameters", "inputs", "outputs", "model_name", "model_version")
_INPUT_KEYS: Final = ("name", "shape", "datatype", "parameters", "data")
_OUTPUT_KEYS: Final = ("name", "parameters")
_SEQUENCE_PARAMETERS: Final = ("sequence_id", "sequence_start", "sequence_end")
_SHARED_MEMORY: Final = "shared_memory_region"
_ELEMENTS_ENV: Final = "LOSS_SERVICE_MAX_ELEMENTS"
_JSON_ENV: Final = "LOSS_SERVICE_MAX_GENERAL_JSON_BYTES"

Kind = Literal["loss", "metric"]

_overlap = set(registry.LOSSES) & set(registry.METRICS)
assert not _overlap, f"a loss and a metric share a name, which names one model: {_overlap}"


@dataclass(frozen=True, slots=True)
class Model:
    """A loss or a metric, as a model of the protocol."""

    name: str
    kind: Kind

    @property
    def output(self) -> str:
        return "loss" if self.kind == "loss" else "value"

    @property
    def sparse_labels(self) -> bool:
        """Whether its labels are integer class indices by default."""
        if self.kind == "loss":
            return registry.LOSSES[self.name].family == "sparse"
        return self.name.startswith("sparse_")


def models() -> list[Model]:
    """Every model: the losses, then the metrics, each by name."""
    return [Model(name, "loss") for name in sorted(registry.LOSSES)] + [
        Model(name, "metric") for name in sorted(registry.METRICS)
    ]


def model(name: str) -> Model:
    """The model ``name`` (404 for a name that is neither a loss nor a metric)."""
    if name in registry.LOSSES:
        return Model(name, "loss")
    if name in registry.METRICS:
        return Model(name, "metric")
    raise NotFound.at(
        ("path", "name"),
        f"Unknown model {name!r}: the models are the service's losses "
        f"({', '.join(sorted(registry.LOSSES))}) and metrics "
        f"({', '.join(sorted(registry.METRICS))}).",
    )


def check_version(found: Model, version: str) -> None:
    """404 unless ``version`` is the models' one version."""
    if version != MODEL_VERSION:
        raise NotFound.at(
            ("path", "version"),
            f"Model {found.name!r} has no version {version!r}: its only version is "
            f"{MODEL_VERSION!r}.",
        )


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


def model_metadata(found: Model) -> dict[str, Any]:
    """The model's name, version, platform and tensors. Shapes are nominal (any rank is
    taken, as on ``/v1``), and every datatype of :data:`DATATYPES` is accepted."""
    labels = (
        {"name": "y_true", "datatype": "INT64", "shape": [-1]}
        if found.sparse_labels
        else {"name": "y_true", "datatype": "FP32", "shape": [-1, -1]}
    )
    return {
        "name": found.name,
        "versions": [MODEL_VERSION],
        "platform": f"keras3_{found.kind}",
        "inputs": [
            labels,
            {"name": "y_pred", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "sample_weight", "datatype": "FP32", "shape": [-1]},
        ],
        "outputs": [{"name": found.output, "datatype": "FP64", "shape": [-1]}],
    }


# ---- requests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InferRequest:
    """An inference request, decoded: the document the loss or metric takes (its arrays
    and parameters), the request's ``id``, and whether the output goes back in binary."""

    document: dict[str, Any]
    id: str | None
    binary_output: bool


def _where(loc: Loc) -> str:
    return "`" + ".".join(str(p) for p in loc) + "`"


def _kind(value: Any) -> str:
    kind = json_kind(value)
    return kind if kind == "null" else ("an " if kind[0] in "aeiou" else "a ") + kind


def _object(value: Any, loc: Loc, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid(loc, f"{what} must be a JSON object, received {_kind(value)}.")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise invalid(
            (*loc, unknown[0]),
            f"{what} has unknown field(s) {unknown}: expected {', '.join(f'`{k}`' for k in keys)}.",
        )
    return value


def _parameters(value: Any, loc: Loc) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(
            loc, f"{_where(loc)} must be a JSON object of parameters, received {_kind(value)}."
        )
    for key, item in value.items():
        if isinstance(item, dict | list):
            raise invalid(
                (*loc, key),
                f"Parameter `{key}` must be a string, a number or a boolean, received "
                f"{_kind(item)}.",
            )
    return dict(value)


def _bool(parameters: dict[str, Any], key: str, loc: Loc) -> bool | None:
    value = parameters.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise invalid((*loc, key), f"Parameter `{key}` must be true or false, received {value!r}.")


def _shape(value: Any, loc: Loc, max_elements: int) -> tuple[list[int], int]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    ):
        raise invalid(
            loc,
            f"{_where(loc)} must be a list of at most {MAX_DIMS} non-negative integers, "
            f"received {value!r}.",
        )
    n = math.prod(value)
    if n > max_elements:
        raise PayloadTooLarge.at(
            loc,
            f"{_where(loc)} is {value}: {n} elements, over the limit of {max_elements} per "
            f"array (setting {_ELEMENTS_ENV}); expected smaller batches.",
        )
    check_empty_shape(value, _where(loc), loc, max_elements)
    return value, n


def _datatype(value: Any, loc: Loc) -> np.dtype[Any]:
    if not isinstance(value, str) or value not in DATATYPES:
        raise invalid(
            loc,
            f"{_where(loc)} is not a datatype the service reads: expected one of "
            f"{list(DATATYPES)}, received {value!r}.",
        )
    return np.dtype(DATATYPES[value]).newbyteorder("<")


def _beyond_64_bits(values: NDArray[Any]) -> bool:
    """Whether float ``values`` hold a whole number that no signed 64-bit integer holds."""
    with np.errstate(invalid="ignore"):
        big = np.abs(values) >= 2.0**63
        return bool(np.any(big & np.isfinite(values) & (values == np.floor(values))))


def _from_json(
    data: Any, datatype: str, dtype: np.dtype[Any], shape: list[int], n: int, loc: Loc
) -> NDArray[Any]:
    """A JSON ``data`` array (flat or nested, row-major) as an array of ``dtype``."""
    what = "true or false" if datatype == "BOOL" else "numbers"
    if datatype.startswith(("INT", "UINT")):
        what = "integers"
    if not isinstance(data, list):
        raise invalid(
            loc,
            f"{_where(loc)} must be a JSON array of {what} (flat or nested, row-major), "
            f"received {_kind(data)}.",
        )
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        depth = nesting_depth(data)
        if depth > MAX_DIMS:
            raise invalid(
                loc,
                f"{_where(loc)} is nested {depth} lists deep: expected {what}, flat or in "
                f"lists nested at most as deep as the shape {shape} "
                f"(and at most {MAX_DIMS}).",
            ) from None
        raise invalid(
            loc,
            f"{_where(loc)} is not a rectangular array: expected {what}, flat or in nested "
            "lists whose rows all have the same length; received rows of different lengths.",
        ) from None
    if values.size != n:
        raise invalid(
            loc,
            f"{_where(loc)} holds {values.size} values, but the input's shape {shape} needs {n}.",
        )
    kind = values.dtype.kind
    expected = {"BOOL": "b", "FP16": "iuf", "FP32": "iuf", "FP64": "iuf"}.get(datatype, "iu")
    if values.size and kind == "f" and expected == "iu" and _beyond_64_bits(values):
        # Whole numbers past 64 bits, or mixed with smaller ones, come out as floats.
        raise invalid(
            loc,
            f"{_where(loc)} holds whole numbers out of the {datatype} range (up to "
            f"{np.abs(values).max():.4g}): expected integers in "
            f"[{np.iinfo(dtype).min}, {np.iinfo(dtype).max}].",
        )
    if values.size and kind not in expected:
        received = {
            "b": "true/false",
            "f": "numbers with a fraction or exponent",
            "i": "integers",
            "u": "integers",
            "U": "strings",
        }.get(kind, "values that are not numbers (objects, arrays or nulls)")
        raise invalid(
            loc,
            f"{_where(loc)} of a {datatype} input must hold {what}: received {received}.",
        )
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        low, high = int(values.min()), int(values.max())
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            wider = (
                "integers in that range (no datatype of this model's inputs is wider)"
                if info.bits == 64
                else "a wider datatype such as INT64"
            )
            raise invalid(
                loc,
                f"{_where(loc)} holds {bad}, out of the {datatype} range "
                f"[{info.min}, {info.max}]; expected {wider}.",
            )
    with np.errstate(over="ignore"):  # a number too large for FP16 is refused below
        array = values.astype(dtype).reshape(shape)
    if dtype.kind == "f" and not np.all(np.isfinite(array)):
        floats = {"FP16": "FP32 or FP64", "FP32": "FP64"}.get(datatype)
        raise invalid(
            loc,
            f"{_where(loc)} holds numbers too large for {datatype} (they would be infinite); "
            + (f"expected a wider datatype: {floats}." if floats else "expected finite numbers."),
        )
    return array


def _from_bytes(
    buf: memoryview, datatype: str, dtype: np.dtype[Any], shape: list[int], n: int, loc: Loc
) -> NDArray[Any]:
    """A binary tensor as a view of the body (a copy only if it is misaligned)."""
    expected = n * dtype.itemsize
    if len(buf) != expected:
        raise invalid(
            (*loc, "parameters", "binary_data_size"),
            f"{_where(loc)} has binary_data_size {len(buf)}, but datatype {datatype} and "
            f"shape {shape} need {expected} bytes ({n} elements × {dtype.itemsize} bytes).",
        )
    array = np.frombuffer(buf, dtype=dtype).reshape(shape)
    if not array.flags.aligned:
        # A tensor at an odd offset of the body: one copy spares the kernels NumPy's slow
        # unaligned loops.
        array = array.copy()
    if dtype.kind == "b" and array.view(np.uint8).max(initial=0) > 1:
        raise invalid(loc, f"{_where(loc)} is BOOL, so each of its bytes must be 0 or 1.")
    return array


def _inputs(
    value: Any, tensors: memoryview, binary: bool, max_elements: int
) -> dict[str, NDArray[Any]]:
    loc: Loc = ("inputs",)
    if not isinstance(value, list) or not value:
        raise invalid(
            loc,
            "`inputs` must be a list of the input tensors `y_true`, `y_pred` and optionally "
            f"`sample_weight`, received {_kind(value) if value != [] else 'an empty list'}.",
        )
    arrays: dict[str, NDArray[Any]] = {}
    offset = 0
    for i, item in enumerate(value):
        here: Loc = (*loc, i)
        tensor = _object(item, here, _INPUT_KEYS, f"Input {_where(here)}")
        name = tensor.get("name")
        if name not in INPUTS:
            raise invalid(
                (*here, "name"),
                f"Input {_where(here)} is named {name!r}: expected `y_true`, `y_pred` or "
                "`sample_weight`.",
            )
        if name in arrays:
            raise invalid((*here, "name"), f"Input `{name}` is given twice: expected it once.")
        here = (*loc, name)
        for key in ("shape", "datatype"):
            if key not in tensor:
                raise invalid((*here, key), f"Input `{name}` has no `{key}`.")
        shape, n = _shape(tensor["shape"], (*here, "shape"), max_elements)
        datatype = tensor["datatype"]
        dtype = _datatype(datatype, (*here, "datatype"))
        parameters = _parameters(tensor.get("parameters"), (*here, "parameters"))
        if _SHARED_MEMORY in parameters:
            raise invalid(
                (*here, "parameters", _SHARED_MEMORY),
                f"Input `{name}` is in a shared memory region, which the service does not "
                "read: expected its values in `data`, or its bytes in the body with "
                "`binary_data_size`.",
            )
        size = parameters.get("binary_data_size")
        if size is None:
            if "data" not in tensor:
                raise invalid(
                    (*here, "data"),
                    f"Input `{name}` has neither `data` nor `parameters.binary_data_size`: "
                    "expected one.",
                )
            arrays[name] = _from_json(tensor["data"], datatype, dtype, shape, n, (*here, "data"))
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise invalid(
                (*here, "parameters", "binary_data_size"),
                f"`binary_data_size` of input `{name}` must be a non-negative integer, "
                f"received {size!r}.",
            )
        if "data" in tensor:
            raise invalid(
                here, f"Input `{name}` has both `data` and `binary_data_size`: expected one."
            )
        if not binary:
            raise MalformedRequest.at(
                ("header", "inference-header-content-length"),
                f"Input `{name}` has binary_data_size {size}, but the request has no "
                "Inference-Header-Content-Length: expected that header, the byte length of "
                "the JSON that starts the body, before the tensors' bytes.",
            )
        if offset + size > len(tensors):
            raise MalformedRequest.at(
                (*here, "parameters", "binary_data_size"),
                f"Input `{name}` has binary_data_size {size}, but only "
                f"{len(tensors) - offset} bytes of tensor data are left in the body after "
                "the JSON header and the inputs before it.",
            )
        buf = tensors[offset : offset + size]
        arrays[name] = _from_bytes(buf, datatype, dtype, shape, n, here)
        offset += size
    if offset != len(tensors):
        raise MalformedRequest.at(
            ("body",),
            f"The body has {len(tensors) - offset} bytes after the last tensor: the inputs' "
            f"binary_data_size values add up to {offset}, and {len(tensors)} bytes follow the "
            "JSON header (Inference-Header-Content-Length).",
        )
    for name in REQUIRED_INPUTS:
        if name not in arrays:
            raise invalid(
                (*loc, name),
                f"Input `{name}` is missing: expected inputs `y_true`, `y_pred` and "
                f"optionally `sample_weight`; received {sorted(arrays)}.",
            )
    return arrays


def _binary_output(value: Any, found: Model, default: bool) -> bool:
    """Whether the output goes back in binary: its own ``binary_data`` if it is asked
    for with one, else the request's ``binary_data_output``."""
    if value is None:
        return default
    loc: Loc = ("outputs",)
    if not isinstance(value, list):
        raise invalid(
            loc,
            f"`outputs` must be a list of requested outputs, received {_kind(value)}: "
            f'expected [{{"name": "{found.output}"}}] or no `outputs`.',
        )
    binary = default
    for i, item in enumerate(value):
        here: Loc = (*loc, i)
        output = _object(item, here, _OUTPUT_KEYS, f"Output {_where(here)}")
        if output.get("name") != found.output or i > 0:
            raise invalid(
                (*here, "name"),
                f"Model {found.name!r} has one output, `{found.output}`: received a request "
                f"for {output.get('name')!r}"
                + (" again." if output.get("name") == found.output else "."),
            )
        parameters = _parameters(output.get("parameters"), (*here, "parameters"))
        for unsupported, what in (
            ("classification", "classification results"),
            (_SHARED_MEMORY, "shared memory regions"),
        ):
            if unsupported in parameters:
                raise invalid(
                    (*here, "parameters", unsupported),
                    f"The service does not write {what}: expected the output's value, "
                    "as JSON or with `binary_data: true`.",
                )
        own = _bool(parameters, "binary_data", (*here, "parameters"))
        if own is not None:
            binary = own
    return binary


def decode_request(
    data: bytes | bytearray,
    header_length: int | None,
    found: Model,
    *,
    max_elements: int,
    max_json_bytes: int,
    before_json: Callable[[int], None] | None = None,
) -> InferRequest:
    """An inference request body (``header_length``: the byte length of its JSON
    header when it carries binary tensors, else None) as the body the loss or metric
    takes.

    The JSON (the whole body, or the header) must be at most ``max_json_bytes`` (413:
    larger tensors go in binary), and ``before_json(nbytes)`` hears of its parse's
    memory first (it may refuse by raising). Errors: 400 for a body that is not what
    it says (malformed JSON, binary sizes that do not add up), 413 over a limit, 422
    for invalid fields; each says what was expected and received.
    """
    binary = header_length is not None
    json_bytes = header_length if header_length is not None else len(data)
    if json_bytes > max_json_bytes:
        raise PayloadTooLarge.at(
            ("body",),
            f"The JSON of the inference request is {json_bytes} bytes, over the limit of "
            f"{max_json_bytes} bytes (setting {_JSON_ENV}); expected large tensors in the "
            "binary tensor data extension (`parameters.binary_data_size`, and their bytes "
            "after the JSON) rather than in `data`.",
        )
    if before_json is not None:
        before_json(json_bytes * GENERAL_PARSE_FACTOR)
    view = memoryview(data)
    try:
        header = parse_json(view[:json_bytes])
    except MalformedRequest as exc:
        hint = (
            f"The JSON is the body's first {json_bytes} bytes, as "
            "Inference-Header-Content-Length says."
            if binary
            else "A body whose tensors' bytes follow its JSON (`binary_data_size`) needs "
            "Inference-Header-Content-Length: the byte length of that JSON."
        )
        raise MalformedRequest.at(("body",), f"{exc.detail} {hint}") from None
    request = _object(header, ("body",), _REQUEST_KEYS, "The inference request")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid(("id",), f"`id` must be a string, received {_kind(request_id)}.")
    parameters = _parameters(request.get("parameters"), ("parameters",))
    for key in _SEQUENCE_PARAMETERS:
        if key in parameters:
            raise invalid(
                ("parameters", key),
                f"Parameter `{key}`: the service's models keep no state between requests, so "
                "they take no sequences; expected requests without sequence parameters.",
            )
    binary_output = _bool(parameters, BINARY_OUTPUT_PARAMETER, ("parameters",)) or False
    binary_output = _binary_output(request.get("outputs"), found, binary_output)
    for key in (BINARY_OUTPUT_PARAMETER, *IGNORED_PARAMETERS):
        parameters.pop(key, None)
    for key in INPUTS:
        if key in parameters:
            raise invalid(
                ("parameters", key),
                f"`{key}` is an input, not a parameter: expected it in `inputs`.",
            )
    tensors = view[json_bytes:]
    arrays = _inputs(request.get("inputs"), tensors, binary, max_elements)
    return InferRequest({**arrays, **parameters}, request_id, binary_output)


# ---- responses ----------------------------------------------------------------------------


def _response_parameters(result: dict[str, Any], output: str) -> dict[str, Any]:
    """The ``/v1`` response's fields besides the value, as protocol parameters."""
    parameters: dict[str, Any] = {}
    for key, value in result.items():
        if key in (output, "name", "warnings"):
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str | int | float):
            parameters[key] = value
    parameters["warnings"] = orjson.dumps(result.get("warnings", [])).decode()
    return parameters


def encode_response(
    found: Model, result: dict[str, Any], request: InferRequest
) -> tuple[bytes, int | None]:
    """The inference response for the ``/v1`` response ``result``: its bytes, and the
    length of its JSON header when the output is in binary (else None)."""
    values = np.asarray(result[found.output])
    if values.dtype != np.float32:
        values = values.astype(np.float64)
    values = np.ascontiguousarray(values.reshape(values.shape or (1,)))
    output: dict[str, Any] = {
        "name": found.output,
        "datatype": "FP32" if values.dtype == np.float32 else "FP64",
        "shape": list(values.shape),
    }
    response: dict[str, Any] = {"model_name": found.name, "model_version": MODEL_VERSION}
    if request.id is not None:
        response["id"] = request.id
    response["parameters"] = _response_parameters(result, found.output)
    response["outputs"] = [output]
    if request.binary_output:
        raw = values.astype(values.dtype.newbyteorder("<"), copy=False).tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
        header = orjson.dumps(response)
        return header + raw, len(header)
    output["data"] = values.reshape(-1)
    return orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY), None
