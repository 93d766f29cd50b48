"""A typed Python client of the loss service, on httpx: ``LossClient`` and ``AsyncLossClient``.

::

    import numpy as np
    from service.client import LossClient

    with LossClient("http://127.0.0.1:8000") as client:
        r = client.loss("categorical_crossentropy", [1, 2], [[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]])
        r.loss  # 1.1769392490386963

It needs httpx, NumPy and orjson only (pybase64 when installed, for faster typed
arrays): none of the service's server-side packages.

Arrays are NumPy arrays, nested lists or numbers, of booleans, integers or floats
(``WIRE_DTYPES`` go as they are; other integer and float widths as int64 and float64).
Other dtypes (complex, strings, objects, dates) raise a ``TypeError`` naming the field.

A request whose arrays hold more than ``binary_threshold`` elements in all (4096 by
default) is sent in the binary encoding (``application/octet-stream``: a JSON header,
padded with spaces to a multiple of 64 bytes so that the tensors start aligned, then the
raw little-endian C-order tensors in the order of their descriptors); smaller ones as
JSON lists. ``encoding`` forces one form: ``"json"`` (nested lists), ``"typed"``
(``{dtype, shape, data: <base64>}``) or ``"binary"``. JSON has no NaN or infinity: a
body whose arrays hold one is sent typed instead of as lists, so that the service sees
the value and answers with its 422 naming the field and the index.

JSON lists carry a float32 array's values in their shortest decimal form, which the
service reads back to the same float32 values; with ``dtype="float64"`` the service
computes on those decimals, so send ``encoding="binary"`` (or ``"typed"``) to have it
compute on the exact float32 values.

The parameters of a loss, a metric or an evaluate call are keyword arguments, typed by
:class:`LossParams`, :class:`MetricParams` and :class:`EvaluateParams`; one they do not
name raises a ``TypeError`` before anything is sent. Results are :class:`LossResult`,
:class:`MetricResult`, :class:`EvaluateResult` and :class:`HeadsResult`; a ``loss`` with
``reduction="none"`` is a NumPy array of the compute dtype. An error response raises
:class:`LossServiceError`, which carries the service's ``application/problem+json``
document.

Both clients build their requests with the same functions (:func:`build_request`
and :func:`parse_response`); they differ only in how they send them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Generic, Literal, Self, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx
import numpy as np
import orjson
from numpy.typing import NDArray

try:
    from pybase64 import b64encode
except ImportError:  # the standard library's encoder: the same text, more slowly
    from base64 import b64encode  # type: ignore[assignment]

__all__ = [
    "DEFAULT_BINARY_THRESHOLD",
    "WIRE_DTYPES",
    "AsyncLossClient",
    "ComputeDType",
    "Encoding",
    "EvaluateParams",
    "EvaluateResult",
    "HeadsResult",
    "LabelEncoding",
    "LossClient",
    "LossParams",
    "LossResult",
    "LossServiceError",
    "MetricParams",
    "MetricResult",
    "PreparedRequest",
    "Reduction",
    "ServiceWarning",
    "build_request",
    "encode_body",
    "parse_response",
]

Encoding = Literal["auto", "json", "typed", "binary"]
LabelEncoding = Literal["sparse", "binary", "one_hot", "multi_hot", "soft"]
ComputeDType = Literal["float32", "float64"]
Reduction = Literal["sum_over_batch_size", "mean", "sum", "mean_with_sample_weight", "none"]

#: Arrays holding more elements than this, in all, go in the binary encoding.
DEFAULT_BINARY_THRESHOLD: Final = 4096
DEFAULT_TIMEOUT: Final = 30.0
DEFAULT_BASE_URL: Final = "http://127.0.0.1:8000"

BINARY_MEDIA_TYPE: Final = "application/octet-stream"
JSON_MEDIA_TYPE: Final = "application/json"
HEADER_LENGTH_HEADER: Final = "Inference-Header-Content-Length"

#: The fields of a request body (or of one head) that hold arrays.
ARRAY_FIELDS: Final = ("y_true", "y_pred", "sample_weight")
#: The dtypes the service takes in typed arrays and binary tensors.
_WIRE_DTYPE_LIST: Final = (
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
WIRE_DTYPES: Final = frozenset(_WIRE_DTYPE_LIST)
_ENCODINGS: Final = frozenset({"auto", "json", "typed", "binary"})
#: The binary encoding's JSON header is padded with spaces to a multiple of this.
TENSOR_ALIGNMENT: Final = 64

T = TypeVar("T")


# ---- parameters ----------------------------------------------------------------------------


class _BatchParams(TypedDict, total=False):
    #: The encoding of ``y_true``, stated instead of detected (the service checks it).
    label_encoding: LabelEncoding
    #: ``float32`` (Keras' numbers) or ``float64``.
    dtype: ComputeDType


class LossParams(_BatchParams, total=False):
    """The keyword parameters of a loss; one the loss does not take is the service's 422."""

    from_logits: bool
    label_smoothing: float
    axis: int
    #: Sparse loss only.
    ignore_class: int | None
    #: Focal losses only.
    alpha: float
    #: Focal losses only.
    gamma: float
    #: ``binary_focal_crossentropy`` only.
    apply_class_balancing: bool
    reduction: Reduction


class MetricParams(_BatchParams, total=False):
    """The keyword parameters of a metric; one the metric does not take is the service's 422."""

    #: ``binary_accuracy``, ``subset_accuracy``, ``accuracy``.
    threshold: float
    #: Threshold metrics only: threshold ``sigmoid(y_pred)``.
    from_logits: bool
    #: Top-k metrics (and ``accuracy``).
    k: int
    #: ``precision``, ``recall``: a positive is ``y_pred > thresholds``.
    thresholds: float | None
    #: ``precision``, ``recall``: the k largest elements of each row are the positives.
    top_k: int | None
    #: ``precision``, ``recall``: this class's column only.
    class_id: int | None
    #: ``f1_score``, ``fbeta_score``: None (one value per class), micro, macro, weighted.
    average: Literal["micro", "macro", "weighted"] | None
    #: ``fbeta_score``.
    beta: float | None
    #: ``auc``.
    num_thresholds: int | None
    curve: Literal["ROC", "PR"] | None
    summation_method: Literal["interpolation", "minoring", "majoring"] | None
    multi_label: bool | None
    #: ``expected_calibration_error``.
    n_bins: int | None
    norm: Literal["l1", "l2", "max"] | None


class EvaluateParams(_BatchParams, total=False):
    """The keyword parameters of an evaluate call on one batch."""

    #: For every loss and threshold metric that does not set its own.
    from_logits: bool | None
    #: Reports by name or ``{"name", ...}`` (``per_class``, ``confusion_matrix``,
    #: ``calibration``).
    reports: list[str | dict[str, Any]] | None
    #: One name per class, the reports' labels.
    class_names: list[str] | None


def _checked(operation: str, params: Mapping[str, Any], known: type[Any]) -> dict[str, Any]:
    """``params``, or a TypeError naming those ``known`` (a TypedDict) does not list."""
    names: frozenset[str] = known.__optional_keys__ | known.__required_keys__
    unknown = sorted(set(params) - names)
    if unknown:
        raise TypeError(
            f"{operation}() got unexpected keyword argument(s) {', '.join(unknown)}; "
            f"its parameters are {', '.join(sorted(names))}"
        )
    return dict(params)


# ---- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceWarning:
    """A diagnosis of a likely mistake in a batch that could still be computed."""

    code: str
    message: str


def _warnings(document: Mapping[str, Any]) -> list[ServiceWarning]:
    return [ServiceWarning(str(w["code"]), str(w["message"])) for w in document["warnings"]]


@dataclass(frozen=True)
class LossResult:
    """``POST /v1/losses/{name}``: ``loss`` is a float, or per-sample losses (a NumPy array
    of the compute dtype) for ``reduction="none"``."""

    loss: float | NDArray[np.floating[Any]]
    name: str
    reduction: str
    label_encoding: str
    n_samples: int
    n_classes: int
    warnings: list[ServiceWarning]
    #: The response body as received.
    document: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class MetricResult:
    """``POST /v1/metrics/{name}``: ``value`` is a float, or one per class (``f1_score`` and
    ``fbeta_score`` with ``average=None``); ``resolved_as`` is the metric computed
    (``accuracy`` is resolved from the labels)."""

    value: float | list[float]
    name: str
    resolved_as: str
    label_encoding: str
    n_samples: int
    n_classes: int
    warnings: list[ServiceWarning]
    #: The response body as received.
    document: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class EvaluateResult:
    """``POST /v1/evaluate`` on one batch (or one head): each loss and metric by its key (a
    metric's value as in :class:`MetricResult`); ``resolved`` says what each ``accuracy``
    entry resolved to; ``reports`` holds the reports asked for by key (None when none
    was)."""

    losses: dict[str, float]
    metrics: dict[str, float | list[float]]
    resolved: dict[str, str]
    reports: dict[str, dict[str, Any]] | None
    label_encoding: str
    n_samples: int
    n_classes: int
    warnings: list[ServiceWarning]
    #: The response body (or the head's part of it) as received.
    document: dict[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class HeadsResult:
    """``POST /v1/evaluate`` with several heads: each head's result, and the total loss
    (Σ over heads of weight × the sum of the head's losses)."""

    outputs: dict[str, EvaluateResult]
    total_loss: float
    #: The response body as received.
    document: dict[str, Any] = field(repr=False, compare=False)


def _document(document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise TypeError(f"expected a JSON object from the service, received {document!r}")
    return document


def _loss_result(dtype: Any) -> Callable[[Any], LossResult]:
    """Per-sample losses (``reduction="none"``) as an array of the compute dtype."""
    np_dtype = np.float64 if dtype == "float64" else np.float32

    def result(body: Any) -> LossResult:
        document = _document(body)
        loss = document["loss"]
        return LossResult(
            loss=np.asarray(loss, dtype=np_dtype) if isinstance(loss, list) else float(loss),
            name=str(document["name"]),
            reduction=str(document["reduction"]),
            label_encoding=str(document["label_encoding"]),
            n_samples=int(document["n_samples"]),
            n_classes=int(document["n_classes"]),
            warnings=_warnings(document),
            document=document,
        )

    return result


def _value(value: Any) -> float | list[float]:
    """A metric's value: a number, or a list of them (one per class)."""
    return [float(v) for v in value] if isinstance(value, list) else float(value)


def _metric_result(body: Any) -> MetricResult:
    document = _document(body)
    return MetricResult(
        value=_value(document["value"]),
        name=str(document["name"]),
        resolved_as=str(document["resolved_as"]),
        label_encoding=str(document["label_encoding"]),
        n_samples=int(document["n_samples"]),
        n_classes=int(document["n_classes"]),
        warnings=_warnings(document),
        document=document,
    )


def _evaluate_result(body: Any) -> EvaluateResult:
    document = _document(body)
    return EvaluateResult(
        losses={str(k): float(v) for k, v in document["losses"].items()},
        metrics={str(k): _value(v) for k, v in document["metrics"].items()},
        resolved={str(k): str(v) for k, v in document["resolved"].items()},
        reports=document.get("reports"),
        label_encoding=str(document["label_encoding"]),
        n_samples=int(document["n_samples"]),
        n_classes=int(document["n_classes"]),
        warnings=_warnings(document),
        document=document,
    )


def _heads_result(body: Any) -> HeadsResult:
    document = _document(body)
    return HeadsResult(
        outputs={str(k): _evaluate_result(v) for k, v in document["outputs"].items()},
        total_loss=float(document["total_loss"]),
        document=document,
    )


class LossServiceError(Exception):
    """An error response of the service, with its RFC 9457 problem document.

    ``errors`` is the problem's list of ``{"loc": [...], "msg": ...}``; ``problem``
    the whole document (for a response that was not problem+json, one made from
    the status line and the body's text).
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        errors: list[dict[str, Any]],
        problem: dict[str, Any],
    ) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors
        self.problem = problem

    @classmethod
    def from_response(cls, response: httpx.Response) -> LossServiceError:
        """The error a non-2xx response stands for."""
        try:
            document = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict):
            document = {
                "title": response.reason_phrase,
                "status": response.status_code,
                "detail": response.text,
            }
        errors = document.get("errors")
        return cls(
            status=response.status_code,
            title=str(document.get("title") or response.reason_phrase),
            detail=str(document.get("detail") or response.text),
            errors=[e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else [],
            problem=document,
        )


# ---- requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedRequest(Generic[T]):
    """One request, ready to send: what both clients pass to httpx."""

    method: Literal["GET", "POST"]
    path: str
    #: Turns the decoded JSON response into the result.
    result: Callable[[Any], T]
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: How the arrays were sent: "json", "typed", "binary", or "" without a body.
    encoding: str = ""


#: What an array of each NumPy dtype kind the service does not take holds.
_KINDS: Final = {
    "c": "complex numbers",
    "O": "Python objects (None, or values of mixed types)",
    "U": "strings",
    "S": "bytes",
    "M": "dates",
    "m": "time spans",
    "V": "structured records",
}


def _unsupported(where: str, dtype: np.dtype[Any]) -> TypeError:
    what = _KINDS.get(dtype.kind, "values that are not numbers")
    return TypeError(
        f"`{where}` holds {what}, dtype {dtype}: the service takes arrays of "
        f"{', '.join(_WIRE_DTYPE_LIST)} (other integer and float widths are sent as int64 "
        "and float64)"
    )


def _wire_array(where: str, value: Any) -> NDArray[Any] | None:
    """``value`` as a C-contiguous little-endian array of a dtype the service takes; None
    for a typed array already encoded (a dict) and for ragged lists, which go as they are
    for the service to judge. Other dtypes (complex, strings, objects, dates) are a
    TypeError naming the field."""
    if isinstance(value, dict):
        return None
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        return None
    kind = arr.dtype.kind
    if kind not in "biuf":
        raise _unsupported(where, arr.dtype)
    if arr.dtype.name not in WIRE_DTYPES:
        arr = arr.astype(np.int64 if kind in "iu" else np.float64)
    target = arr.dtype.newbyteorder("<")
    return arr.astype(target, order="C", copy=False)


def _arrays_of(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The parts of a request body that hold array fields: the body, or its heads."""
    outputs = body.get("outputs")
    if isinstance(outputs, Mapping):
        return [head for head in outputs.values() if isinstance(head, Mapping)]
    return [body]


def _replace_arrays(body: dict[str, Any], encode: Callable[[Any], Any]) -> dict[str, Any]:
    """A copy of ``body`` with each array field (top-level or of a head) encoded, in
    document order; ``encode`` gets the normalized NumPy array."""

    def part(fields: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in fields.items():
            if key in ARRAY_FIELDS and value is not None:
                arr = _wire_array(prefix + key, value)
                out[key] = value if arr is None else encode(arr)
            else:
                out[key] = value
        return out

    outputs = body.get("outputs")
    if isinstance(outputs, Mapping):
        heads = {
            name: part(head, f"outputs.{name}.") if isinstance(head, Mapping) else head
            for name, head in outputs.items()
        }
        return {k: (heads if k == "outputs" else v) for k, v in body.items()}
    return part(body, "")


def _arrays(body: Mapping[str, Any]) -> list[NDArray[Any]]:
    """The (already normalized) arrays of ``body``."""
    return [
        value
        for fields in _arrays_of(body)
        for key in ARRAY_FIELDS
        if isinstance(value := fields.get(key), np.ndarray)
    ]


def _all_finite(arrays: list[NDArray[Any]]) -> bool:
    return all(a.dtype.kind != "f" or bool(np.isfinite(a).all()) for a in arrays)


def _as_json(a: NDArray[Any]) -> Any:
    # orjson writes arrays as nested lists natively, but not 0-d ones.
    return a.item() if a.ndim == 0 else a


def _raw_bytes(a: NDArray[Any]) -> memoryview:
    return a.reshape(-1).view(np.uint8).data


def _dumps(document: Any) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_body(
    body: dict[str, Any],
    encoding: Encoding = "auto",
    binary_threshold: int = DEFAULT_BINARY_THRESHOLD,
) -> tuple[bytes, dict[str, str], str]:
    """The bytes, headers and encoding name of a request body holding NumPy arrays.

    ``auto`` sends JSON lists, or the binary encoding when the arrays hold more than
    ``binary_threshold`` elements in all. JSON lists cannot hold NaN or infinity: a body
    whose arrays hold one goes as typed arrays instead (encoding name ``"typed"``).
    """
    if encoding not in _ENCODINGS:
        raise ValueError(f"encoding must be one of {sorted(_ENCODINGS)}, received {encoding!r}")
    body = _replace_arrays(body, lambda a: a)  # lists to arrays, once
    arrays = _arrays(body)
    if encoding == "auto":
        encoding = "binary" if sum(a.size for a in arrays) > binary_threshold else "json"
    if encoding == "json" and not _all_finite(arrays):
        encoding = "typed"
    if encoding == "json":
        return _dumps(_replace_arrays(body, _as_json)), _json_headers(), "json"
    if encoding == "typed":

        def typed(a: NDArray[Any]) -> dict[str, Any]:
            data = b64encode(_raw_bytes(a)).decode("ascii")
            return {"dtype": a.dtype.name, "shape": list(a.shape), "data": data}

        return _dumps(_replace_arrays(body, typed)), _json_headers(), "typed"

    tensors: list[memoryview] = []

    def descriptor(a: NDArray[Any]) -> dict[str, Any]:
        # Descriptors are made in document order, which is the order orjson writes them in.
        tensors.append(_raw_bytes(a))
        return {"dtype": a.dtype.name, "shape": list(a.shape), "binary_data_size": a.nbytes}

    header = _dumps(_replace_arrays(body, descriptor))
    # JSON may end in whitespace: padded, the header ends on a 64-byte boundary, so the
    # service's zero-copy views start aligned (unaligned views take NumPy's slow,
    # buffered loops: twice the compute time on a 512x32000 float32 batch).
    header += b" " * (-len(header) % TENSOR_ALIGNMENT)
    headers = {"Content-Type": BINARY_MEDIA_TYPE, HEADER_LENGTH_HEADER: str(len(header))}
    return b"".join([header, *tensors]), headers, "binary"


def _json_headers() -> dict[str, str]:
    return {"Content-Type": JSON_MEDIA_TYPE}


def _prepare(
    path: str,
    body: dict[str, Any],
    result: Callable[[Any], T],
    encoding: Encoding,
    binary_threshold: int,
) -> PreparedRequest[T]:
    content, headers, used = encode_body(body, encoding, binary_threshold)
    return PreparedRequest("POST", path, result, content, headers, used)


def build_request(
    path: str,
    body: dict[str, Any],
    *,
    encoding: Encoding = "auto",
    binary_threshold: int = DEFAULT_BINARY_THRESHOLD,
) -> PreparedRequest[dict[str, Any]]:
    """A POST of ``body`` (arrays as NumPy arrays or lists) to ``path``; its result is the
    response body."""
    return _prepare(path, body, _document, encoding, binary_threshold)


def parse_response(response: httpx.Response, request: PreparedRequest[T]) -> T:
    """The result of a response: ``request.result`` of its JSON, or a raised error."""
    if not response.is_success:
        raise LossServiceError.from_response(response)
    return request.result(orjson.loads(response.content))


def _body(
    y_true: Any, y_pred: Any, sample_weight: Any, params: Mapping[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {"y_true": y_true, "y_pred": y_pred}
    if sample_weight is not None:
        body["sample_weight"] = sample_weight
    body.update(params)
    return body


def _name(name: str) -> str:
    return quote(name, safe="")


@dataclass(frozen=True)
class _Requests:
    """The requests of every operation, built the same way for both clients."""

    encoding: Encoding
    binary_threshold: int

    def _post(
        self, path: str, body: dict[str, Any], result: Callable[[Any], T]
    ) -> PreparedRequest[T]:
        return _prepare(path, body, result, self.encoding, self.binary_threshold)

    def loss(
        self, name: str, y_true: Any, y_pred: Any, sample_weight: Any, params: Mapping[str, Any]
    ) -> PreparedRequest[LossResult]:
        params = _checked("loss", params, LossParams)
        return self._post(
            f"/v1/losses/{_name(name)}",
            _body(y_true, y_pred, sample_weight, params),
            _loss_result(params.get("dtype")),
        )

    def metric(
        self, name: str, y_true: Any, y_pred: Any, sample_weight: Any, params: Mapping[str, Any]
    ) -> PreparedRequest[MetricResult]:
        params = _checked("metric", params, MetricParams)
        return self._post(
            f"/v1/metrics/{_name(name)}",
            _body(y_true, y_pred, sample_weight, params),
            _metric_result,
        )

    def evaluate(
        self,
        y_true: Any,
        y_pred: Any,
        sample_weight: Any,
        losses: Sequence[str | Mapping[str, Any]] | None,
        metrics: Sequence[str | Mapping[str, Any]] | None,
        params: Mapping[str, Any],
    ) -> PreparedRequest[EvaluateResult]:
        body = _body(y_true, y_pred, sample_weight, _checked("evaluate", params, EvaluateParams))
        if losses is not None:
            body["losses"] = [e if isinstance(e, str) else dict(e) for e in losses]
        if metrics is not None:
            body["metrics"] = [e if isinstance(e, str) else dict(e) for e in metrics]
        return self._post("/v1/evaluate", body, _evaluate_result)

    def evaluate_heads(
        self, outputs: Mapping[str, Mapping[str, Any]], loss_weights: Mapping[str, float] | None
    ) -> PreparedRequest[HeadsResult]:
        body: dict[str, Any] = {"outputs": {head: dict(b) for head, b in outputs.items()}}
        if loss_weights is not None:
            body["loss_weights"] = dict(loss_weights)
        return self._post("/v1/evaluate", body, _heads_result)

    @staticmethod
    def get(path: str) -> PreparedRequest[dict[str, Any]]:
        return PreparedRequest("GET", path, _document)


def _client_options(
    base_url: str, api_key: str | None, timeout: float | httpx.Timeout | None
) -> dict[str, Any]:
    headers = {"Accept": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    return {"base_url": base_url, "headers": headers, "timeout": timeout}


def _check_options(encoding: str, binary_threshold: int) -> None:
    if encoding not in _ENCODINGS:
        raise ValueError(f"encoding must be one of {sorted(_ENCODINGS)}, received {encoding!r}")
    if binary_threshold < 0:
        raise ValueError(f"binary_threshold must be >= 0, received {binary_threshold}")


# ---- the clients ---------------------------------------------------------------------------


class LossClient:
    """A blocking client of the loss service.

    ``transport`` replaces httpx's network transport (``httpx.MockTransport`` in tests);
    ``api_key`` is sent as ``Authorization: Bearer <key>``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        binary_threshold: int = DEFAULT_BINARY_THRESHOLD,
        encoding: Encoding = "auto",
        event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
    ) -> None:
        _check_options(encoding, binary_threshold)
        self._requests = _Requests(encoding, binary_threshold)
        self._http = httpx.Client(
            **_client_options(base_url, api_key, timeout),
            transport=transport,
            event_hooks=event_hooks,
        )

    def _send(self, request: PreparedRequest[T]) -> T:
        response = self._http.request(
            request.method, request.path, content=request.content, headers=request.headers
        )
        return parse_response(response, request)

    def loss(
        self,
        name: str,
        y_true: Any,
        y_pred: Any,
        sample_weight: Any = None,
        **params: Unpack[LossParams],
    ) -> LossResult:
        """``POST /v1/losses/{name}``: ``loss`` is a float, or an array for ``reduction="none"``."""
        return self._send(self._requests.loss(name, y_true, y_pred, sample_weight, params))

    def metric(
        self,
        name: str,
        y_true: Any,
        y_pred: Any,
        sample_weight: Any = None,
        **params: Unpack[MetricParams],
    ) -> MetricResult:
        """``POST /v1/metrics/{name}``: ``value``, and ``resolved_as`` for ``accuracy``."""
        return self._send(self._requests.metric(name, y_true, y_pred, sample_weight, params))

    def evaluate(
        self,
        y_true: Any,
        y_pred: Any,
        sample_weight: Any = None,
        *,
        losses: Sequence[str | Mapping[str, Any]] | None = None,
        metrics: Sequence[str | Mapping[str, Any]] | None = None,
        **params: Unpack[EvaluateParams],
    ) -> EvaluateResult:
        """``POST /v1/evaluate`` on one batch (``losses``/``metrics`` omitted: those that fit)."""
        return self._send(
            self._requests.evaluate(y_true, y_pred, sample_weight, losses, metrics, params)
        )

    def evaluate_heads(
        self,
        outputs: Mapping[str, Mapping[str, Any]],
        loss_weights: Mapping[str, float] | None = None,
    ) -> HeadsResult:
        """``POST /v1/evaluate`` with several heads: each of ``outputs`` is an evaluate body."""
        return self._send(self._requests.evaluate_heads(outputs, loss_weights))

    def losses(self) -> dict[str, Any]:
        """``GET /v1/losses``: the loss catalogue."""
        return self._send(self._requests.get("/v1/losses"))

    def metrics(self) -> dict[str, Any]:
        """``GET /v1/metrics``: the metric catalogue."""
        return self._send(self._requests.get("/v1/metrics"))

    def health(self) -> dict[str, Any]:
        """``GET /healthz``."""
        return self._send(self._requests.get("/healthz"))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncLossClient:
    """The asyncio client: :class:`LossClient`'s methods, awaited."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        binary_threshold: int = DEFAULT_BINARY_THRESHOLD,
        encoding: Encoding = "auto",
        event_hooks: Mapping[str, list[Callable[..., Any]]] | None = None,
    ) -> None:
        _check_options(encoding, binary_threshold)
        self._requests = _Requests(encoding, binary_threshold)
        self._http = httpx.AsyncClient(
            **_client_options(base_url, api_key, timeout),
            transport=transport,
            event_hooks=event_hooks,
        )

    async def _send(self, request: PreparedRequest[T]) -> T:
        response = await self._http.request(
            request.method, request.path, content=request.content, headers=request.headers
        )
        return parse_response(response, request)

    async def loss(
        self,
        name: str,
        y_true: Any,
        y_pred: Any,
        sample_weight: Any = None,
        **params: Unpack[LossParams],
    ) -> LossResult:
        """``POST /v1/losses/{name}``: ``loss`` is a float, or an array for ``reduction="none"``."""
        return await self._send(self._requests.loss(name, y_true, y_pred, sample_weight, params))

    async def metric(
        self,
        name: str,
        y_true: Any,
        y_pred: Any,
        sample_weight: Any = None,
        **params: Unpack[MetricParams],
    ) -> MetricResult:
        """``POST /v1/metrics/{name}``: ``value``, and ``resolved_as`` for ``accuracy``."""
        return await self._send(self._requests.metric(name, y_true, y_pred, sample_weight, params))

    async def evaluate(
        self,
        y_true: Any,
        y_pred: Any,
        sample_weight: Any = None,
        *,
        losses: Sequence[str | Mapping[str, Any]] | None = None,
        metrics: Sequence[str | Mapping[str, Any]] | None = None,
        **params: Unpack[EvaluateParams],
    ) -> EvaluateResult:
        """``POST /v1/evaluate`` on one batch (``losses``/``metrics`` omitted: those that fit)."""
        return await self._send(
            self._requests.evaluate(y_true, y_pred, sample_weight, losses, metrics, params)
        )

    async def evaluate_heads(
        self,
        outputs: Mapping[str, Mapping[str, Any]],
        loss_weights: Mapping[str, float] | None = None,
    ) -> HeadsResult:
        """``POST /v1/evaluate`` with several heads: each of ``outputs`` is an evaluate body."""
        return await self._send(self._requests.evaluate_heads(outputs, loss_weights))

    async def losses(self) -> dict[str, Any]:
        """``GET /v1/losses``: the loss catalogue."""
        return await self._send(self._requests.get("/v1/losses"))

    async def metrics(self) -> dict[str, Any]:
        """``GET /v1/metrics``: the metric catalogue."""
        return await self._send(self._requests.get("/v1/metrics"))

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``."""
        return await self._send(self._requests.get("/healthz"))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
