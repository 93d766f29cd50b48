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

JSON lists carry each value of a float32 (or float16) array as the float64 equal to it
(``0.699999988079071``, not ``0.7``), so that an evaluation with ``dtype="float64"``
computes on the very values the binary encoding carries, and a batch sent again in
another encoding is the same batch.

The parameters of a loss, a metric or an evaluate call are keyword arguments, typed by
:class:`LossParams`, :class:`MetricParams` and :class:`EvaluateParams`; one they do not
name raises a ``TypeError`` before anything is sent. Results are :class:`LossResult`,
:class:`MetricResult`, :class:`EvaluateResult` and :class:`HeadsResult`; a ``loss`` with
``reduction="none"`` is a NumPy array of the compute dtype. An error response raises
:class:`LossServiceError`, which carries the service's ``application/problem+json``
document.

Streaming evaluations: ``client.evaluation(...)`` creates one (``open_evaluation(id)``
opens an existing one) and returns an :class:`Evaluation` (:class:`AsyncEvaluation` for the
asyncio client)::

    with LossClient("http://127.0.0.1:8000") as client:
        evaluation = client.evaluation(metrics=["accuracy"], reports=["per_class"])
        evaluation.feed(labels, predictions, batch_size=4096)  # or add(), add_all()
        evaluation.results().metrics  # the same as one evaluate call over all the rows

Batches are sent by ``PUT`` under deterministic ids (a digest of their content, see
:meth:`Evaluation.batch_id_of`), so a rerun of the same job adds nothing; requests are
retried after connection errors and 5xx answers as the client's :class:`RetryPolicy`
says (honouring ``Retry-After``); a batch over the service's body limit (the
``max_body_bytes`` option, or learned from a 413) is split by rows into parts with ids
derived from its own, the same parts whatever the encoding. Errors are
:class:`LossServiceError` subclasses by status: :class:`NotFoundError`,
:class:`ConflictError`, :class:`PayloadTooLargeError`, :class:`InvalidInputError`,
:class:`ServiceUnavailableError`.

Both clients build their requests with the same functions (:func:`build_request`
and :func:`parse_response`); they differ only in how they send them.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import random
import re
import threading
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from itertools import pairwise
from types import TracebackType
from typing import Any, Final, Generic, Literal, Self, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx
import numpy as np
import orjson
from numpy.typing import NDArray

from service.wire import (
    ARRAY_FIELDS,
    BINARY_MEDIA_TYPE,
    DTYPES,
    HEADER_LENGTH_HEADER,
    JSON_MEDIA_TYPE,
    pad_header,
)

try:
    from pybase64 import b64encode
except ImportError:  # the standard library's encoder: the same text, more slowly
    from base64 import b64encode  # type: ignore[assignment]

__all__ = [
    "DEFAULT_BINARY_THRESHOLD",
    "WIRE_DTYPES",
    "AsyncEvaluation",
    "AsyncLossClient",
    "BatchResult",
    "BatchValues",
    "ComputeDType",
    "ConflictError",
    "CountedWarning",
    "Encoding",
    "EvaluateParams",
    "EvaluateResult",
    "Evaluation",
    "EvaluationResults",
    "EvaluationSummary",
    "HeadSettings",
    "HeadsResult",
    "InvalidInputError",
    "LabelEncoding",
    "LossClient",
    "LossParams",
    "LossResult",
    "LossServiceError",
    "MetricParams",
    "MetricResult",
    "NotFoundError",
    "PayloadTooLargeError",
    "PreparedRequest",
    "Reduction",
    "RetryPolicy",
    "ServiceUnavailableError",
    "ServiceWarning",
    "build_request",
    "content_digest",
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

WIRE_DTYPES: Final = frozenset(DTYPES)
_WIRE_DTYPE_LIST: Final = DTYPES
_ENCODINGS: Final = frozenset({"auto", "json", "typed", "binary"})

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

    #: For a part of a batch split over the body limit: the row of the whole batch the
    #: refused part starts at (an index in ``detail`` counts from it); else ``None``.
    part_start: int | None = None
    #: For a part of a split batch: the ids of the batch's parts the evaluation holds
    #: already (stored before this one was refused).
    parts_stored: tuple[str, ...] = ()

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
        kind = _ERROR_TYPES.get(response.status_code, cls)
        return kind(
            status=response.status_code,
            title=str(document.get("title") or response.reason_phrase),
            detail=str(document.get("detail") or response.text),
            errors=[e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else [],
            problem=document,
        )


class NotFoundError(LossServiceError):
    """404: no such loss, metric or evaluation (an evaluation of another API key, or one
    deleted, is not found either)."""


class ConflictError(LossServiceError):
    """409: a batch id already accepted with other content, or a new batch sent to a
    closed evaluation."""


class PayloadTooLargeError(LossServiceError):
    """413: a body or an array over the service's limits."""


class InvalidInputError(LossServiceError):
    """422: values the service cannot compute on (a batch that does not fit its
    evaluation included); ``detail`` says what was wrong."""


class ServiceUnavailableError(LossServiceError):
    """503: the service is over a budget for now; retry after its ``Retry-After``."""


_ERROR_TYPES: Final[dict[int, type[LossServiceError]]] = {
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidInputError,
    503: ServiceUnavailableError,
}


# ---- requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreparedRequest(Generic[T]):
    """One request, ready to send: what both clients pass to httpx."""

    method: Literal["GET", "POST", "PUT", "DELETE"]
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


_INT64_MAX: Final = int(np.iinfo(np.int64).max)


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
        # Unsigned integers past int64's range go as floats (refused by the service with
        # their value, not wrapped around to negative ones).
        wide = kind == "u" and arr.size > 0 and int(arr.max()) > _INT64_MAX
        arr = arr.astype(np.int64 if kind in "iu" and not wide else np.float64)
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
    if a.dtype.kind == "f" and a.dtype.itemsize < 8:
        # Each value as the float64 that equals it: float32 0.7 is written 0.699999988...,
        # not "0.7" (another number in float64), so that an evaluation computing in
        # float64 gets the values the binary encoding carries: the same numbers, and
        # the same batch when it is sent again either way.
        a = a.astype(np.float64)
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

    header, tensors = _binary(body)
    headers = {"Content-Type": BINARY_MEDIA_TYPE, HEADER_LENGTH_HEADER: str(len(header))}
    return b"".join([header, *tensors]), headers, "binary"


def _binary(body: dict[str, Any]) -> tuple[bytes, list[memoryview]]:
    """The binary encoding of ``body``: its padded JSON header, and its tensors' bytes."""
    tensors: list[memoryview] = []

    def descriptor(a: NDArray[Any]) -> dict[str, Any]:
        # Descriptors are made in document order, which is the order orjson writes them in.
        tensors.append(_raw_bytes(a))
        return {"dtype": a.dtype.name, "shape": list(a.shape), "binary_data_size": a.nbytes}

    header = _dumps(_replace_arrays(body, descriptor))
    # JSON may end in whitespace: padded, the header ends on a 64-byte boundary, so the
    # service's zero-copy views start aligned (unaligned views take NumPy's slow,
    # buffered loops: twice the compute time on a 512x32000 float32 batch).
    return pad_header(header), tensors


def _binary_size(body: dict[str, Any]) -> int:
    """The bytes of ``body`` in the binary encoding, counted without joining them."""
    header, tensors = _binary(body)
    return len(header) + sum(t.nbytes for t in tensors)


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
    """``name`` as one path segment: percent-encoded, ``.`` and ``..`` too (ids the
    service takes), which a URL would otherwise read as "this" and "the parent"."""
    quoted = quote(name, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


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
        url = httpx.URL(base_url)
        if url.username or url.password:
            # httpx sends a URL's user and password as Basic authorization, in place of the
            # key's Bearer one: the service would never see the key.
            raise ValueError(
                "an api_key and a base_url with a user or password both go in the "
                "Authorization header, which takes one: give the key alone, with a base_url "
                "without credentials"
            )
        headers["Authorization"] = f"Bearer {api_key}"
    return {"base_url": base_url, "headers": headers, "timeout": timeout}


def _check_options(encoding: str, binary_threshold: int) -> None:
    if encoding not in _ENCODINGS:
        raise ValueError(f"encoding must be one of {sorted(_ENCODINGS)}, received {encoding!r}")
    if binary_threshold < 0:
        raise ValueError(f"binary_threshold must be >= 0, received {binary_threshold}")


# ---- streaming evaluations: settings, results, retries, batch ids and splits ------------------


class HeadSettings(TypedDict, total=False):
    """The settings of an evaluation (or of one of its heads): evaluate's, without arrays."""

    losses: Sequence[str | Mapping[str, Any]]
    metrics: Sequence[str | Mapping[str, Any]]
    #: ``per_class``, ``confusion_matrix``, ``calibration`` (names or ``{"name", ...}``).
    reports: Sequence[str | Mapping[str, Any]]
    from_logits: bool
    #: State it for multi-label data whose first batch may hold one positive per row.
    label_encoding: LabelEncoding
    dtype: ComputeDType
    #: One name per class, the reports' labels.
    class_names: Sequence[str]


def _entries(entries: Sequence[str | Mapping[str, Any]]) -> list[str | dict[str, Any]]:
    return [e if isinstance(e, str) else dict(e) for e in entries]


def _head_settings(where: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as JSON, its names checked (a TypeError names one it does not take)."""
    out: dict[str, Any] = {}
    for key, value in _checked(where, settings, HeadSettings).items():
        if value is None:
            continue
        if key in ("losses", "metrics", "reports"):
            out[key] = _entries(value)
        elif key == "class_names":
            out[key] = [str(name) for name in value]
        else:
            out[key] = value
    return out


def _creation_body(
    settings: Mapping[str, Any],
    outputs: Mapping[str, Mapping[str, Any]] | None,
    loss_weights: Mapping[str, float] | None,
    metadata: Mapping[str, str] | None,
) -> dict[str, Any]:
    """The body of ``POST /v1/evaluations``."""
    body: dict[str, Any]
    given = sorted(k for k, v in settings.items() if v is not None)
    if outputs is not None:
        if given:
            raise ValueError(
                f"an evaluation with `outputs` takes its settings per head, received "
                f"top-level {', '.join(given)}: put them in each head's settings"
            )
        body = {
            "outputs": {
                str(head): _head_settings(f"evaluation head {head!r}", head_settings)
                for head, head_settings in outputs.items()
            }
        }
        if loss_weights is not None:
            body["loss_weights"] = {str(k): float(v) for k, v in loss_weights.items()}
    else:
        if loss_weights is not None:
            raise ValueError("`loss_weights` weighs heads: it needs `outputs`")
        body = _head_settings("evaluation", settings)
    if metadata is not None:
        body["metadata"] = dict(metadata)
    return body


def _timestamp(value: Any) -> datetime:
    return datetime.fromisoformat(str(value))


@dataclass(frozen=True)
class EvaluationSummary:
    """A streaming evaluation's state: ``status`` is ``"open"`` or ``"closed"``."""

    id: str
    status: str
    created_at: datetime
    updated_at: datetime
    n_batches: int
    n_samples: int
    metadata: dict[str, str]
    #: The response body (or the list's item) as received.
    document: dict[str, Any] = field(repr=False, compare=False)


def _summary_fields(document: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": str(document["id"]),
        "status": str(document["status"]),
        "created_at": _timestamp(document["created_at"]),
        "updated_at": _timestamp(document["updated_at"]),
        "n_batches": int(document["n_batches"]),
        "n_samples": int(document["n_samples"]),
        "metadata": {str(k): str(v) for k, v in document["metadata"].items()},
    }


def _evaluation_summary(body: Any) -> EvaluationSummary:
    document = _document(body)
    return EvaluationSummary(**_summary_fields(document), document=document)


@dataclass(frozen=True)
class CountedWarning(ServiceWarning):
    """A warning of a streaming evaluation, and how many of its batches raised it."""

    batches: int


@dataclass(frozen=True)
class EvaluationResults(EvaluationSummary):
    """``GET /v1/evaluations/{id}``: the evaluation's state, and the evaluate response over
    every batch it accepted: ``result`` is an :class:`EvaluateResult` (a
    :class:`HeadsResult` for an evaluation with heads), None before its first batch."""

    result: EvaluateResult | HeadsResult | None
    warnings: list[CountedWarning]

    def _single(self) -> EvaluateResult | None:
        if isinstance(self.result, HeadsResult):
            raise TypeError(
                f"evaluation {self.id} has heads {sorted(self.result.outputs)}: read each "
                "head's values in `result.outputs`"
            )
        return self.result

    @property
    def losses(self) -> dict[str, float]:
        """Each loss over every batch (empty before the first batch)."""
        single = self._single()
        return {} if single is None else single.losses

    @property
    def metrics(self) -> dict[str, float | list[float]]:
        """Each metric over every batch (empty before the first batch)."""
        single = self._single()
        return {} if single is None else single.metrics

    @property
    def reports(self) -> dict[str, dict[str, Any]] | None:
        """The reports asked for, over every batch (None when none was, or no batch yet)."""
        single = self._single()
        return None if single is None else single.reports


def _counted_warnings(document: Mapping[str, Any]) -> list[CountedWarning]:
    return [
        CountedWarning(str(w["code"]), str(w["message"]), int(w.get("batches", 0)))
        for w in document["warnings"]
    ]


def _evaluation_results(body: Any) -> EvaluationResults:
    document = _document(body)
    result: EvaluateResult | HeadsResult | None = None
    if isinstance(document.get("outputs"), dict):
        if document.get("total_loss") is not None:
            # A head's part holds no count or warnings of its own: the evaluation's.
            heads = {
                head: {**part, "n_samples": document["n_samples"], "warnings": []}
                for head, part in document["outputs"].items()
            }
            result = _heads_result({**document, "outputs": heads})
    elif document.get("label_encoding") is not None:
        result = _evaluate_result(document)
    return EvaluationResults(
        **_summary_fields(document),
        result=result,
        warnings=_counted_warnings(document),
        document=document,
    )


@dataclass(frozen=True)
class BatchValues:
    """One head's values on one batch."""

    n_samples: int
    losses: dict[str, float]
    metrics: dict[str, float | list[float]]
    warnings: list[ServiceWarning]


@dataclass(frozen=True)
class BatchResult:
    """One batch of a streaming evaluation: its own values (``outputs`` and ``total_loss``
    for an evaluation with heads, whose ``losses`` and ``metrics`` are then empty).

    ``created`` is True when the service stored it just now (201), False when it had it
    already (200: a rerun or a retry; counted once), None for an item of the history,
    which has ``received_at`` instead. ``evaluation_batches`` and
    ``evaluation_samples`` are the evaluation's counts after it. A batch over the
    service's body limit is sent as ``parts`` (its rows split, each part a batch of its
    own, with an id derived from this one); it then has no values of its own.
    """

    batch_id: str
    n_samples: int
    losses: dict[str, float]
    metrics: dict[str, float | list[float]]
    warnings: list[ServiceWarning]
    outputs: dict[str, BatchValues] | None = None
    total_loss: float | None = None
    created: bool | None = None
    received_at: datetime | None = None
    evaluation_batches: int | None = None
    evaluation_samples: int | None = None
    parts: list[BatchResult] = field(default_factory=list)
    #: The response body (or the history's item) as received.
    document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


def _batch_values(document: Mapping[str, Any]) -> BatchValues:
    return BatchValues(
        n_samples=int(document["n_samples"]),
        losses={str(k): float(v) for k, v in (document.get("losses") or {}).items()},
        metrics={str(k): _value(v) for k, v in (document.get("metrics") or {}).items()},
        warnings=_warnings(document),
    )


def _batch_result(body: Any, created: bool | None) -> BatchResult:
    document = _document(body)
    values = _batch_values(document)
    outputs = document.get("outputs")
    counts = document.get("evaluation")
    received = document.get("received_at")
    total_loss = document.get("total_loss")
    return BatchResult(
        batch_id=str(document["batch_id"]),
        n_samples=values.n_samples,
        losses=values.losses,
        metrics=values.metrics,
        warnings=values.warnings,
        outputs=(
            {str(h): _batch_values(part) for h, part in outputs.items()}
            if isinstance(outputs, dict)
            else None
        ),
        total_loss=None if total_loss is None else float(total_loss),
        created=created,
        received_at=None if received is None else _timestamp(received),
        evaluation_batches=None if counts is None else int(counts["n_batches"]),
        evaluation_samples=None if counts is None else int(counts["n_samples"]),
        document=document,
    )


def _label_rank(part: Mapping[str, Any]) -> int:
    """How much a part's labels say of their family, summed over its heads: 2 for soft
    targets (a value other than 0 and 1), 1 for multi-hot ones (a row with several ones,
    or none), 0 otherwise (integer labels, one-hot rows, binary targets)."""
    rank = 0
    for fields in _arrays_of(part):
        y_true, y_pred = fields.get("y_true"), fields.get("y_pred")
        if not (isinstance(y_true, np.ndarray) and isinstance(y_pred, np.ndarray)):
            continue
        if y_true.shape != y_pred.shape or y_true.ndim < 2 or y_true.shape[-1] < 2:
            continue
        if np.any((y_true != 0) & (y_true != 1)):
            rank += 2
        elif np.any(np.count_nonzero(y_true, axis=-1) != 1):
            rank += 1
    return rank


def _sending_order(parts: list[dict[str, Any]]) -> list[int]:
    """The order a split batch's parts go in: the one whose labels say most of their
    family first (soft rows, else a multi-hot row), then the others in order. An
    evaluation's first batch fixes its label family from the labels it holds: a batch
    whose first part happened to hold only one-hot rows would fix one-hot, and its
    multi-hot parts after be refused. The order changes nothing else: the parts' ids are
    their indices, and the evaluation's results do not depend on the order of batches."""
    ranks = [_label_rank(part) for part in parts]
    return sorted(range(len(parts)), key=lambda k: -ranks[k])


def _part_refused(
    error: LossServiceError,
    batch_id: str,
    parts: list[dict[str, Any]],
    k: int,
    stored: Mapping[int, BatchResult],
) -> None:
    """Say in ``error`` (a note) which part of a split batch it was, its rows in the
    batch, and which parts the evaluation holds already."""
    starts = [0]
    for part in parts:
        starts.append(starts[-1] + (_rows(part) or 0))
    kept = ", ".join(repr(stored[j].batch_id) for j in sorted(stored)) or "none"
    # A part of a part: its rows are counted from the part's start, which this adds.
    error.part_start = (error.part_start or 0) + starts[k]
    error.parts_stored = (*(stored[j].batch_id for j in sorted(stored)), *error.parts_stored)
    if stored and len(_arrays_of(parts[k])) > 1 and "fixed by its first batch" in str(error):
        # The part sent first had the most general labels summed over the heads, not for
        # each head: one head's soft or multi-hot rows were in another part.
        error.add_note(
            "The parts sent before it may have fixed the evaluation's label families: each "
            "head's most general labels (soft, then multi-hot rows) are not all in one "
            "part. State each head's label_encoding when creating the evaluation "
            "(outputs={head: {'label_encoding': ...}}), or send a first batch under the "
            "body limit."
        )
    error.add_note(
        f"Part {_part_id(batch_id, k)!r} of batch {batch_id!r}, split over the body limit: "
        f"rows {starts[k]} to {starts[k + 1] - 1} of the batch (an index in the answer "
        f"counts from the part's first row). Parts already stored: {kept}; sent again, "
        f"corrected, with add(..., batch_id={batch_id!r}), those are replays, counted once "
        "(under another id they would count again)."
    )


def _joined(batch_id: str, parts: list[BatchResult], last: BatchResult) -> BatchResult:
    """The result of a batch sent as ``parts`` (in index order), ``last`` the part sent
    last (its counts are the evaluation's after the batch)."""
    return BatchResult(
        batch_id=batch_id,
        n_samples=sum(p.n_samples for p in parts),
        losses={},
        metrics={},
        warnings=[w for p in parts for w in p.warnings],
        created=any(bool(p.created) for p in parts),
        evaluation_batches=last.evaluation_batches,
        evaluation_samples=last.evaluation_samples,
        parts=parts,
    )


@dataclass(frozen=True)
class _Page(Generic[T]):
    items: list[T]
    next: str | None


def _batch_page(response: httpx.Response) -> _Page[BatchResult]:
    document = _document(orjson.loads(response.content))
    items = [_batch_result(item, None) for item in document["batches"]]
    return _Page(items, document["next"])


def _evaluation_page(response: httpx.Response) -> _Page[EvaluationSummary]:
    document = _document(orjson.loads(response.content))
    return _Page([_evaluation_summary(e) for e in document["evaluations"]], document["next"])


@dataclass(frozen=True)
class RetryPolicy:
    """How a streaming evaluation's requests are retried.

    A request is tried at most ``attempts`` times in all. Batches, reads and ``close``
    are retried after a connection error, a timeout, or a 408, 429, 500, 502, 503 or
    504 (a batch is idempotent: one that did arrive is answered again and counted
    once); creating and deleting an evaluation only when the request cannot have had
    an effect (no connection made, or a 429 or 503 refusal). The wait is the
    response's ``Retry-After`` when it has one (at most ``max_retry_after`` seconds),
    else ``backoff`` seconds doubled at each retry, at most ``max_backoff``, with
    jitter (a random 50 to 100 % of it), so that many workers do not retry in step.
    """

    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, received {self.attempts}")
        for name in ("backoff", "max_backoff", "max_retry_after"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0 seconds, received {value}")

    def wait(self, retry: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        delay = min(self.max_backoff, self.backoff * 2.0**retry)
        return delay * (0.5 + random.random() / 2)  # jitter, not a secret


#: No retry: every request is sent once.
NO_RETRY: Final = RetryPolicy(attempts=1)
#: The clients' default: five attempts, from half a second apart.
DEFAULT_RETRY: Final = RetryPolicy()


class _Mode(Enum):
    #: Sending it again cannot count anything twice (PUT of a batch, GET, close).
    IDEMPOTENT = "idempotent"
    #: Retried only when it cannot have had an effect (create, delete).
    UNSENT = "unsent"


_RETRY_STATUSES: Final = {
    _Mode.IDEMPOTENT: frozenset({408, 429, 500, 502, 503, 504}),
    _Mode.UNSENT: frozenset({429, 503}),
}
_RETRY_ERRORS: Final[dict[_Mode, tuple[type[Exception], ...]]] = {
    _Mode.IDEMPOTENT: (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError),
    _Mode.UNSENT: (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout),
}


def _retry_after(response: httpx.Response) -> float | None:
    """The response's ``Retry-After`` in seconds (a number or an HTTP date), if any."""
    raw = response.headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True)
class _Call(Generic[T]):
    """One request of a streaming evaluation, ready to send (by either client)."""

    method: Literal["GET", "POST", "PUT", "DELETE"]
    path: str
    #: Turns the (successful) response into the result.
    parse: Callable[[httpx.Response], T]
    mode: _Mode
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str | int] | None = None
    #: How a batch's arrays were encoded ("json", "typed", "binary"); "" for other calls.
    encoding: str = ""

    def retry_wait(
        self, policy: RetryPolicy, retry: int, outcome: httpx.Response | Exception
    ) -> float | None:
        """Seconds to wait before sending again after ``outcome`` (a failed response or a
        transport error), or None to give up: not retryable, or attempts spent."""
        if retry + 1 >= policy.attempts:
            return None
        if isinstance(outcome, httpx.Response):
            if outcome.status_code not in _RETRY_STATUSES[self.mode]:
                return None
            return policy.wait(retry, _retry_after(outcome))
        if not isinstance(outcome, _RETRY_ERRORS[self.mode]):
            return None
        return policy.wait(retry, None)


def _encoding_of(call: _Call[Any]) -> Encoding | None:
    """The encoding a batch's parts are sent in: the batch's own, when it was binary."""
    return "binary" if call.encoding == "binary" else None


def _json_of(response: httpx.Response) -> Any:
    return orjson.loads(response.content)


#: A batch id: 1 to 128 characters of A-Z a-z 0-9 . _ : -
BATCH_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_BATCH_ID: Final = 128
#: Hex digits of a content id's SHA-256 (128 bits).
_DIGEST_CHARS: Final = 32
#: Room kept after a prefix for the digest and an occurrence or part suffix.
_PREFIX_MAX: Final = MAX_BATCH_ID - _DIGEST_CHARS - 24


def _check_batch_id(batch_id: str) -> str:
    if not isinstance(batch_id, str) or BATCH_ID.fullmatch(batch_id) is None:
        raise ValueError(
            f"a batch id is 1 to {MAX_BATCH_ID} characters of A-Z a-z 0-9 . _ : -; "
            f"received {batch_id!r}"
        )
    return batch_id


def _check_prefix(prefix: str) -> str:
    if prefix and (len(prefix) > _PREFIX_MAX or BATCH_ID.fullmatch(prefix) is None):
        raise ValueError(
            f"batch_prefix is at most {_PREFIX_MAX} characters of A-Z a-z 0-9 . _ : -; "
            f"received {prefix!r}"
        )
    return prefix


def _canonical(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` in one order whatever order it was given in: its heads by name, and each
    head's (or the body's) arrays as ``y_true``, ``y_pred``, ``sample_weight``. The service
    takes the heads and fields of a body in any order as the same batch, so its id must
    not depend on them (a dict of heads built from a set changes order between runs)."""

    def fields(part: Mapping[str, Any]) -> dict[str, Any]:
        ordered = {key: part[key] for key in ARRAY_FIELDS if key in part}
        ordered.update((key, value) for key, value in part.items() if key not in ordered)
        return ordered

    outputs = body.get("outputs")
    if not isinstance(outputs, Mapping):
        return fields(body)
    heads = {
        name: fields(outputs[name]) if isinstance(outputs[name], Mapping) else outputs[name]
        for name in sorted(outputs, key=str)
    }
    return {**body, "outputs": heads}


def content_digest(body: Mapping[str, Any]) -> str:
    """A digest of a batch body's content: its arrays as sent (dtype, shape, bytes) and
    its structure (heads, fields; in no particular order: see :func:`_canonical`), so the
    same batch gives the same digest in any run. The dtypes count: ids made by earlier
    versions stay the ids of the same arrays, so a job rerun after an upgrade is still
    idempotent (a rerun must send the same dtypes), but for a batch of several heads that
    earlier versions were given out of this order (heads not by name, or arrays not as
    ``y_true``, ``y_pred``, ``sample_weight``): they hashed it as given, so its id is new,
    and such a job rerun after the upgrade goes into a new evaluation."""
    digest = hashlib.sha256()

    def absorb(a: NDArray[Any]) -> dict[str, Any]:
        digest.update(f"{a.dtype.str}{a.shape};".encode())
        digest.update(_raw_bytes(a))
        return {"dtype": a.dtype.str, "shape": list(a.shape)}

    digest.update(_dumps(_replace_arrays(_canonical(body), absorb)))
    return digest.hexdigest()[:_DIGEST_CHARS]


def _part_id(parent: str, index: int) -> str:
    """The id of part ``index`` of a split batch: ``<parent>.<index>``, or a digest of it
    when that is over the length of an id."""
    child = f"{parent}.{index}"
    if len(child) <= MAX_BATCH_ID:
        return child
    return "part-" + hashlib.sha256(child.encode()).hexdigest()[:_DIGEST_CHARS]


def _batch_body(
    y_true: Any, y_pred: Any, sample_weight: Any, outputs: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, Any]:
    if outputs is not None:
        if y_true is not None or y_pred is not None or sample_weight is not None:
            raise ValueError("a batch is either y_true/y_pred/sample_weight or `outputs`")
        heads: dict[str, Any] = {}
        for head, arrays in outputs.items():
            if not isinstance(arrays, Mapping):
                raise TypeError(
                    f"head {head!r} of a batch is a mapping of {', '.join(ARRAY_FIELDS)} (its "
                    f"arrays by name); received {type(arrays).__name__}"
                )
            unknown = sorted(set(arrays) - set(ARRAY_FIELDS))
            if unknown:
                raise TypeError(
                    f"head {head!r} of a batch holds {', '.join(ARRAY_FIELDS)} only, received "
                    f"{', '.join(unknown)}"
                )
            heads[str(head)] = {k: v for k, v in arrays.items() if v is not None}
        return {"outputs": heads}
    if y_true is None or y_pred is None:
        raise TypeError("a batch needs y_true and y_pred (or `outputs` for heads)")
    return _body(y_true, y_pred, sample_weight, {})


def _batch_of(item: Any) -> dict[str, Any]:
    """One item of ``add_all``: ``(y_true, y_pred)``, ``(y_true, y_pred, sample_weight)``,
    or a mapping of those names (or ``outputs``), optionally with ``batch_id``."""
    if isinstance(item, Mapping):
        unknown = sorted(set(item) - {*ARRAY_FIELDS, "outputs", "batch_id"})
        if unknown:
            raise TypeError(
                f"a batch mapping holds y_true, y_pred, sample_weight, outputs and batch_id, "
                f"received {', '.join(unknown)}"
            )
        return dict(item)
    if isinstance(item, tuple | list) and len(item) in (2, 3):
        return dict(zip(ARRAY_FIELDS, item, strict=False))
    raise TypeError(
        "each batch is (y_true, y_pred), (y_true, y_pred, sample_weight) or a mapping of "
        f"those names; received {type(item).__name__}"
    )


def _one_weight(key: str, value: Any) -> bool:
    """Whether ``value`` is a ``sample_weight`` of one element (a number, ``[w]``...),
    which the service applies to every row: each part of a split batch takes it whole."""
    return key == "sample_weight" and isinstance(value, np.ndarray) and value.size == 1


def _rows(body: Mapping[str, Any]) -> int | None:
    """The number of rows every array of a (normalized) batch body has (a weight of one
    element aside), or None when they differ or an array is not one (nothing to split
    along)."""
    counts = set()
    for fields in _arrays_of(body):
        for key in ARRAY_FIELDS:
            value = fields.get(key)
            if value is None or _one_weight(key, value):
                continue
            if not isinstance(value, np.ndarray) or value.ndim == 0:
                return None
            counts.add(value.shape[0])
    return counts.pop() if len(counts) == 1 else None


def _split(body: dict[str, Any], parts: int) -> list[dict[str, Any]] | None:
    """``body``'s rows in ``parts`` consecutive parts of sizes as even as can be (the first
    ones one row larger), or None when it cannot be split."""
    normalized = _replace_arrays(body, lambda a: a)
    rows = _rows(normalized)
    if rows is None or rows < 2:
        return None
    parts = min(parts, rows)
    size, extra = divmod(rows, parts)
    bounds = [k * size + min(k, extra) for k in range(parts + 1)]
    return [_replace_arrays(normalized, _rows_of(lo, hi)) for lo, hi in pairwise(bounds)]


def _rows_of(lo: int, hi: int) -> Callable[[NDArray[Any]], NDArray[Any]]:
    def rows(a: NDArray[Any]) -> NDArray[Any]:
        # Of a batch of two rows or more, an array of one element is a weight of one
        # element (see _rows): each part takes it whole.
        return a if a.size == 1 else a[lo:hi]

    return rows


_BODY_LIMIT: Final = re.compile(r"request body is over the limit of (\d+) bytes", re.IGNORECASE)
_BYTES_LIMIT: Final = re.compile(r"over the limit of (\d+) bytes", re.IGNORECASE)


class _BodyLimit:
    """The service's body limit as the client knows it (an option, or learned from a 413),
    and how a batch over it is split.

    The split depends only on the batch and the limit, never on the encoding a batch is
    sent in (JSON lists can be several times the size of the same arrays in the binary
    encoding): a batch is split when its size in the binary encoding is over the limit,
    in ``ceil(size / limit)`` parts (2 when a 413 to its binary body names no byte
    limit, e.g. one over the elements of an array), each part split again while over. A
    batch whose JSON or typed body is over the limit (or refused with a 413) while its
    binary body is not is sent whole in the binary encoding, as is one whose JSON body is
    smaller than its binary body. So a rerun, in any encoding, splits a batch the same
    way, into parts of the same ids."""

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"max_body_bytes must be >= 1, received {limit}")
        self.limit = limit

    def fits(self, size: int) -> bool:
        """Whether a body of ``size`` bytes is within the known limit."""
        return self.limit is None or size <= self.limit

    def before(self, body: dict[str, Any], size: int) -> list[dict[str, Any]] | None:
        """The parts to send instead of a batch whose binary size, ``size``, is over the
        known limit."""
        if self.fits(size):
            return None
        assert self.limit is not None
        return _split(body, max(2, -(-size // self.limit)))

    def after(
        self, body: dict[str, Any], call: _Call[Any], error: LossServiceError
    ) -> list[dict[str, Any]] | Literal["binary"] | None:
        """What to send after a 413 to a batch sent as ``call``: the batch again in the
        binary encoding when it was not sent in it, else its parts (None: not a 413, or
        splitting rows cannot help)."""
        if error.status != 413 or not _fewer_rows_help(error):
            return None
        whole = _BODY_LIMIT.search(error.detail)
        if whole is not None:
            learned = int(whole.group(1))
            self.limit = learned if self.limit is None else min(self.limit, learned)
        if call.encoding != "binary":
            return "binary"
        named = _BYTES_LIMIT.search(error.detail)
        limit = int(named.group(1)) if named is not None else None
        return _split(body, max(2, -(-_binary_size_of(body, call) // limit)) if limit else 2)


def _size_loc(loc: list[Any]) -> bool:
    """Whether a 413's ``loc`` is the body or one of its arrays (of the body, or a head's)."""
    if loc == ["body"] or loc[0] in ARRAY_FIELDS:
        return True
    return loc[0] == "outputs" and len(loc) >= 3 and loc[2] in ARRAY_FIELDS


def _fewer_rows_help(error: LossServiceError) -> bool:
    """Whether a 413 is about the batch's size (its body, an array's elements, the working
    memory its rows take), which fewer rows cure; not about the number of heads or
    entries, nor the AUC and confusion counts (thresholds and columns make those, not
    rows). A 413 that names no place (a proxy's, whatever its body) is taken as about
    size."""
    locs = [e.get("loc") for e in error.errors if isinstance(e, Mapping)]
    return all(_size_loc(loc) for loc in locs if isinstance(loc, list) and loc)


def _binary_size_of(body: dict[str, Any], call: _Call[Any]) -> int:
    """The size of a batch in the binary encoding: its body's when ``call`` sends it so."""
    return len(call.content or b"") if call.encoding == "binary" else _binary_size(body)


def _batch_put(
    stream: _StreamRequests,
    body_limit: _BodyLimit,
    evaluation_id: str,
    batch_id: str,
    body: dict[str, Any],
    encoding: Encoding | None,
) -> tuple[_Call[BatchResult], list[dict[str, Any]] | None]:
    """The PUT of a batch, and the parts to send instead when it is to be split. The PUT is
    in ``encoding`` unless that body is over the known limit or smaller than the binary
    one (integer labels can be shorter as JSON lists): then in the binary encoding, so
    that whether the service takes the batch whole depends on its binary size alone."""
    _check_batch_id(batch_id)
    call = stream.put(evaluation_id, batch_id, body, encoding)
    binary = _binary_size_of(body, call)
    parts = body_limit.before(body, binary)
    if parts is None and call.encoding != "binary":
        size = len(call.content or b"")
        if not body_limit.fits(size) or size < binary:
            call = stream.put(evaluation_id, batch_id, body, "binary")
    return call, parts


def _evaluation_path(evaluation_id: str) -> str:
    return f"/v1/evaluations/{_name(evaluation_id)}"


@dataclass(frozen=True)
class _StreamRequests:
    """The requests of streaming evaluations, built the same way for both clients."""

    encoding: Encoding
    binary_threshold: int

    @staticmethod
    def create(body: dict[str, Any]) -> _Call[EvaluationSummary]:
        return _Call(
            "POST",
            "/v1/evaluations",
            lambda r: _evaluation_summary(_json_of(r)),
            _Mode.UNSENT,
            _dumps(body),
            _json_headers(),
        )

    def put(
        self,
        evaluation_id: str,
        batch_id: str,
        body: dict[str, Any],
        encoding: Encoding | None = None,
    ) -> _Call[BatchResult]:
        """The PUT of a batch, in ``encoding`` (the client's when None)."""
        content, headers, used = encode_body(body, encoding or self.encoding, self.binary_threshold)
        return _Call(
            "PUT",
            f"{_evaluation_path(evaluation_id)}/batches/{_name(batch_id)}",
            lambda r: _batch_result(_json_of(r), r.status_code == 201),
            _Mode.IDEMPOTENT,
            content,
            headers,
            encoding=used,
        )

    @staticmethod
    def get(evaluation_id: str) -> _Call[EvaluationResults]:
        return _Call(
            "GET",
            _evaluation_path(evaluation_id),
            lambda r: _evaluation_results(_json_of(r)),
            _Mode.IDEMPOTENT,
        )

    @staticmethod
    def batches(evaluation_id: str, limit: int, cursor: str | None) -> _Call[_Page[BatchResult]]:
        params: dict[str, str | int] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        path = f"{_evaluation_path(evaluation_id)}/batches"
        return _Call("GET", path, _batch_page, _Mode.IDEMPOTENT, params=params)

    @staticmethod
    def evaluations(limit: int, cursor: str | None) -> _Call[_Page[EvaluationSummary]]:
        params: dict[str, str | int] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        return _Call("GET", "/v1/evaluations", _evaluation_page, _Mode.IDEMPOTENT, params=params)

    @staticmethod
    def close(evaluation_id: str) -> _Call[EvaluationSummary]:
        return _Call(
            "POST",
            f"{_evaluation_path(evaluation_id)}/close",
            lambda r: _evaluation_summary(_json_of(r)),
            _Mode.IDEMPOTENT,
        )

    @staticmethod
    def delete(evaluation_id: str) -> _Call[None]:
        return _Call("DELETE", _evaluation_path(evaluation_id), lambda r: None, _Mode.UNSENT)

    @staticmethod
    def report(evaluation_id: str) -> _Call[str]:
        return _Call(
            "GET",
            f"{_evaluation_path(evaluation_id)}/report",
            lambda r: r.text,
            _Mode.IDEMPOTENT,
            headers={"Accept": "text/html"},
        )


def _check_page_size(page_size: int) -> int:
    if not 1 <= page_size <= 1000:
        raise ValueError(f"page_size must be 1 to 1000, received {page_size}")
    return page_size


def _check_batch_size(batch_size: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, received {batch_size}")
    return batch_size


def _feed_arrays(
    y_true: Any, y_pred: Any, sample_weight: Any, outputs: Mapping[str, Mapping[str, Any]] | None
) -> tuple[dict[str, Any], int]:
    """The arrays of ``feed`` as NumPy arrays (memory maps stay maps: rows are read batch
    by batch), in a batch body's layout, and their common number of rows."""
    body = _batch_body(y_true, y_pred, sample_weight, outputs)

    def as_array(where: str, value: Any) -> NDArray[Any]:
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        if array.ndim == 0:
            raise ValueError(f"`{where}` is a single number; feed() splits arrays by rows")
        return array

    rows: dict[str, int] = {}
    if "outputs" in body:
        for head, arrays in body["outputs"].items():
            for key, value in list(arrays.items()):
                arrays[key] = as_array(f"outputs.{head}.{key}", value)
                rows[f"outputs.{head}.{key}"] = arrays[key].shape[0]
    else:
        for key, value in list(body.items()):
            body[key] = as_array(key, value)
            rows[key] = body[key].shape[0]
    if len(set(rows.values())) != 1:
        found = ", ".join(f"{k}: {n}" for k, n in rows.items())
        raise ValueError(f"feed() needs every array to have the same number of rows: {found}")
    return body, next(iter(rows.values()))


def _rows_slice(body: Mapping[str, Any], lo: int, hi: int) -> dict[str, Any]:
    if "outputs" in body:
        return {
            "outputs": {
                head: {k: v[lo:hi] for k, v in arrays.items()}
                for head, arrays in body["outputs"].items()
            }
        }
    return {k: v[lo:hi] for k, v in body.items()}


class _EvaluationHandle:
    """What both handles share: the evaluation's id and URLs, and the ids of batches."""

    def __init__(self, base_url: str, summary: EvaluationSummary, batch_prefix: str) -> None:
        self.id = summary.id
        #: The evaluation as it was when the handle was made (see ``results()``).
        self.summary = summary
        self.batch_prefix = _check_prefix(batch_prefix)
        self._base_url = base_url.rstrip("/")
        self._seen: dict[str, set[int]] = {}
        # Threads sharing the handle take and give back numbers one at a time.
        self._ids_lock = threading.Lock()

    @property
    def url(self) -> str:
        """The evaluation's URL."""
        return self._base_url + _evaluation_path(self.id)

    @property
    def report_url(self) -> str:
        """The URL of the evaluation's HTML report page."""
        return f"{self.url}/report"

    def batch_id_of(self, body: Mapping[str, Any]) -> str:
        """The id a batch is sent under when none is given: ``<batch_prefix>`` then 32 hex
        digits of its content's SHA-256, and ``-<n>`` for the n-th batch of the same
        content this handle sends (n ≥ 2). So a rerun of the same job sends the same ids
        (the service counts each batch once), batches that are equal by chance are each
        counted, and workers sending disjoint data never share an id (a ``batch_prefix``
        per worker keeps even equal batches apart). Each call takes the next number; a
        batch whose sending failed gives its number back, so that sent again it goes under
        the same id."""
        return self._take_id(content_digest(body))[1]

    def _take_id(self, digest: str) -> tuple[int, str]:
        """The lowest number not taken for ``digest`` (taken now), and its id."""
        with self._ids_lock:
            taken = self._seen.setdefault(digest, set())
            n = next(k for k in range(1, len(taken) + 2) if k not in taken)
            taken.add(n)
        suffix = "" if n == 1 else f"-{n}"
        return n, f"{self.batch_prefix}{digest}{suffix}"

    def _give_back(self, digest: str, n: int) -> None:
        """Number ``n`` of ``digest`` is free again (its batch was not sent)."""
        with self._ids_lock:
            self._seen[digest].discard(n)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, url={self.url!r})"


# ---- the clients ---------------------------------------------------------------------------


class LossClient:
    """A blocking client of the loss service.

    ``transport`` replaces httpx's network transport (``httpx.MockTransport`` in tests);
    ``api_key`` is sent as ``Authorization: Bearer <key>`` (a ``base_url`` with a user
    or password, which httpx would send in that header instead, is refused with it).
    ``retry`` says how a streaming evaluation's requests are retried (None: sent once; the
    one-batch calls ``loss``, ``metric`` and ``evaluate`` are always sent once);
    ``max_body_bytes`` is the service's body limit, when known, so that larger batches are
    split before they are sent (else it is learned from the first 413).
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
        retry: RetryPolicy | None = DEFAULT_RETRY,
        max_body_bytes: int | None = None,
    ) -> None:
        _check_options(encoding, binary_threshold)
        self._requests = _Requests(encoding, binary_threshold)
        self._stream = _StreamRequests(encoding, binary_threshold)
        self._retry = NO_RETRY if retry is None else retry
        self._body_limit = _BodyLimit(max_body_bytes)
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

    def _call(self, call: _Call[T]) -> T:
        """Send a streaming evaluation's request, retried as the :class:`RetryPolicy` says."""
        retry = 0
        while True:
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    content=call.content,
                    headers=call.headers,
                    params=call.params,
                )
            except httpx.TransportError as error:
                wait = call.retry_wait(self._retry, retry, error)
                if wait is None:
                    raise
            else:
                if response.is_success:
                    return call.parse(response)
                wait = call.retry_wait(self._retry, retry, response)
                if wait is None:
                    raise LossServiceError.from_response(response)
            retry += 1
            time.sleep(wait)

    def evaluation(
        self,
        *,
        metadata: Mapping[str, str] | None = None,
        outputs: Mapping[str, HeadSettings] | None = None,
        loss_weights: Mapping[str, float] | None = None,
        batch_prefix: str = "",
        **settings: Unpack[HeadSettings],
    ) -> Evaluation:
        """``POST /v1/evaluations``: a new streaming evaluation with evaluate's settings
        (``losses``, ``metrics``, ``reports``, ``from_logits``, ``label_encoding``,
        ``dtype``, ``class_names``), or ``outputs`` of them per head with ``loss_weights``;
        ``metadata`` is a flat mapping of strings. Losses and metrics left out are those
        that fit the first batch's labels. ``batch_prefix`` starts the ids of the batches
        this handle sends without an id of their own."""
        _check_prefix(batch_prefix)
        body = _creation_body(settings, outputs, loss_weights, metadata)
        return Evaluation(self, self._call(self._stream.create(body)), batch_prefix)

    def open_evaluation(self, evaluation_id: str, *, batch_prefix: str = "") -> Evaluation:
        """An existing evaluation (to go on feeding it, or to rerun a job into it); a
        :class:`NotFoundError` if there is none of that id for this API key."""
        _check_prefix(batch_prefix)
        return Evaluation(self, self._call(self._stream.get(evaluation_id)), batch_prefix)

    def evaluations(self, *, page_size: int = 100) -> Iterator[EvaluationSummary]:
        """Your evaluations, newest first (fetched a page at a time)."""
        _check_page_size(page_size)
        cursor: str | None = None
        while True:
            page = self._call(self._stream.evaluations(page_size, cursor))
            yield from page.items
            if page.next is None:
                return
            cursor = page.next

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
        retry: RetryPolicy | None = DEFAULT_RETRY,
        max_body_bytes: int | None = None,
    ) -> None:
        _check_options(encoding, binary_threshold)
        self._requests = _Requests(encoding, binary_threshold)
        self._stream = _StreamRequests(encoding, binary_threshold)
        self._retry = NO_RETRY if retry is None else retry
        self._body_limit = _BodyLimit(max_body_bytes)
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

    async def _call(self, call: _Call[T]) -> T:
        """Send a streaming evaluation's request, retried as the :class:`RetryPolicy` says."""
        retry = 0
        while True:
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    content=call.content,
                    headers=call.headers,
                    params=call.params,
                )
            except httpx.TransportError as error:
                wait = call.retry_wait(self._retry, retry, error)
                if wait is None:
                    raise
            else:
                if response.is_success:
                    return call.parse(response)
                wait = call.retry_wait(self._retry, retry, response)
                if wait is None:
                    raise LossServiceError.from_response(response)
            retry += 1
            await asyncio.sleep(wait)

    async def evaluation(
        self,
        *,
        metadata: Mapping[str, str] | None = None,
        outputs: Mapping[str, HeadSettings] | None = None,
        loss_weights: Mapping[str, float] | None = None,
        batch_prefix: str = "",
        **settings: Unpack[HeadSettings],
    ) -> AsyncEvaluation:
        """``POST /v1/evaluations``: a new streaming evaluation with evaluate's settings
        (``losses``, ``metrics``, ``reports``, ``from_logits``, ``label_encoding``,
        ``dtype``, ``class_names``), or ``outputs`` of them per head with ``loss_weights``;
        ``metadata`` is a flat mapping of strings. Losses and metrics left out are those
        that fit the first batch's labels. ``batch_prefix`` starts the ids of the batches
        this handle sends without an id of their own."""
        _check_prefix(batch_prefix)
        body = _creation_body(settings, outputs, loss_weights, metadata)
        return AsyncEvaluation(self, await self._call(self._stream.create(body)), batch_prefix)

    async def open_evaluation(
        self, evaluation_id: str, *, batch_prefix: str = ""
    ) -> AsyncEvaluation:
        """An existing evaluation (to go on feeding it, or to rerun a job into it); a
        :class:`NotFoundError` if there is none of that id for this API key."""
        _check_prefix(batch_prefix)
        summary = await self._call(self._stream.get(evaluation_id))
        return AsyncEvaluation(self, summary, batch_prefix)

    async def evaluations(self, *, page_size: int = 100) -> AsyncIterator[EvaluationSummary]:
        """Your evaluations, newest first (fetched a page at a time)."""
        _check_page_size(page_size)
        cursor: str | None = None
        while True:
            page = await self._call(self._stream.evaluations(page_size, cursor))
            for item in page.items:
                yield item
            if page.next is None:
                return
            cursor = page.next

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


# ---- streaming evaluation handles ------------------------------------------------------------


class Evaluation(_EvaluationHandle):
    """A streaming evaluation of a :class:`LossClient` (``client.evaluation(...)`` creates
    one, ``client.open_evaluation(id)`` opens an existing one).

    Batches go by ``PUT`` under deterministic ids (:meth:`batch_id_of`), so a rerun of
    the same job adds nothing; requests are retried by the client's :class:`RetryPolicy`;
    a batch over the service's body limit is split by rows into parts sent one by one.
    """

    def __init__(
        self, client: LossClient, summary: EvaluationSummary, batch_prefix: str = ""
    ) -> None:
        super().__init__(str(client._http.base_url), summary, batch_prefix)
        self._client = client

    def add(
        self,
        y_true: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        *,
        outputs: Mapping[str, Mapping[str, Any]] | None = None,
        batch_id: str | None = None,
    ) -> BatchResult:
        """Send one batch (``outputs``: ``{head: {"y_true", "y_pred", "sample_weight"?}}``
        for an evaluation with heads), under ``batch_id`` or its content id."""
        body = _batch_body(y_true, y_pred, sample_weight, outputs)
        return self._put_new(body) if batch_id is None else self._put(batch_id, body)

    def add_all(self, batches: Iterable[Any]) -> list[BatchResult]:
        """Send each batch of ``batches``, in order: ``(y_true, y_pred)``, ``(y_true,
        y_pred, sample_weight)``, or mappings of those names (or ``outputs``), each
        optionally with its ``batch_id``."""
        results = []
        for item in batches:
            batch = _batch_of(item)
            batch_id = batch.pop("batch_id", None)
            body = _batch_body(
                batch.get("y_true"),
                batch.get("y_pred"),
                batch.get("sample_weight"),
                batch.get("outputs"),
            )
            results.append(self._put_new(body) if batch_id is None else self._put(batch_id, body))
        return results

    def feed(
        self,
        y_true: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        *,
        outputs: Mapping[str, Mapping[str, Any]] | None = None,
        batch_size: int,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> list[BatchResult]:
        """Send whole arrays in batches of ``batch_size`` rows (the last one shorter);
        ``on_batch`` is called with each batch's result as it is accepted (for a progress
        bar). Memory-mapped arrays (``np.load(path, mmap_mode="r")``) are read a batch at
        a time."""
        _check_batch_size(batch_size)
        arrays, rows = _feed_arrays(y_true, y_pred, sample_weight, outputs)
        results = []
        for lo in range(0, rows, batch_size):
            body = _rows_slice(arrays, lo, min(rows, lo + batch_size))
            result = self._put_new(body)
            results.append(result)
            if on_batch is not None:
                on_batch(result)
        return results

    def _put_new(self, body: dict[str, Any]) -> BatchResult:
        """Send a batch under its content id (see :meth:`batch_id_of`)."""
        digest = content_digest(body)
        n, batch_id = self._take_id(digest)
        try:
            return self._put(batch_id, body)
        except BaseException:
            self._give_back(digest, n)
            raise

    def _put(
        self, batch_id: str, body: dict[str, Any], encoding: Encoding | None = None
    ) -> BatchResult:
        """Send a batch; over the body limit, send it as parts (in the batch's encoding,
        so that parts of a binary batch do not grow into JSON)."""
        client = self._client
        call, parts = _batch_put(
            client._stream, client._body_limit, self.id, batch_id, body, encoding
        )
        if parts is None:
            try:
                return client._call(call)
            except LossServiceError as error:
                then = client._body_limit.after(body, call, error)
                if then is None:
                    raise
                if then == "binary":
                    return self._put(batch_id, body, then)
                parts = then
        inherited = _encoding_of(call)
        order = _sending_order(parts)
        sent: dict[int, BatchResult] = {}
        for k in order:
            try:
                sent[k] = self._put(_part_id(batch_id, k), parts[k], inherited)
            except LossServiceError as error:
                _part_refused(error, batch_id, parts, k, sent)
                raise
        return _joined(batch_id, [sent[k] for k in range(len(parts))], sent[order[-1]])

    def results(self) -> EvaluationResults:
        """``GET /v1/evaluations/{id}``: the evaluate response over every batch so far."""
        return self._client._call(self._client._stream.get(self.id))

    def batches(self, *, page_size: int = 100) -> Iterator[BatchResult]:
        """Every batch the evaluation accepted, in arrival order (fetched a page at a time)."""
        _check_page_size(page_size)
        cursor: str | None = None
        while True:
            page = self._client._call(self._client._stream.batches(self.id, page_size, cursor))
            yield from page.items
            if page.next is None:
                return
            cursor = page.next

    def close(self) -> EvaluationSummary:
        """No more batches: a new one is then a :class:`ConflictError` (a batch already
        accepted may still be sent again)."""
        return self._client._call(self._client._stream.close(self.id))

    def delete(self) -> None:
        """Delete the evaluation and its batches."""
        self._client._call(self._client._stream.delete(self.id))

    def report_html(self) -> str:
        """The evaluation's HTML report page."""
        return self._client._call(self._client._stream.report(self.id))


class AsyncEvaluation(_EvaluationHandle):
    """A streaming evaluation of an :class:`AsyncLossClient`: :class:`Evaluation`'s
    methods, awaited (``batches()`` is an async iterator; ``add_all`` takes an iterable
    or an async iterable)."""

    def __init__(
        self, client: AsyncLossClient, summary: EvaluationSummary, batch_prefix: str = ""
    ) -> None:
        super().__init__(str(client._http.base_url), summary, batch_prefix)
        self._client = client

    async def add(
        self,
        y_true: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        *,
        outputs: Mapping[str, Mapping[str, Any]] | None = None,
        batch_id: str | None = None,
    ) -> BatchResult:
        """Send one batch; see :meth:`Evaluation.add`."""
        body = _batch_body(y_true, y_pred, sample_weight, outputs)
        return await (self._put_new(body) if batch_id is None else self._put(batch_id, body))

    async def add_all(self, batches: Iterable[Any] | AsyncIterable[Any]) -> list[BatchResult]:
        """Send each batch, in order; see :meth:`Evaluation.add_all`."""
        results = []

        async def send(item: Any) -> None:
            batch = _batch_of(item)
            batch_id = batch.pop("batch_id", None)
            body = _batch_body(
                batch.get("y_true"),
                batch.get("y_pred"),
                batch.get("sample_weight"),
                batch.get("outputs"),
            )
            results.append(
                await (self._put_new(body) if batch_id is None else self._put(batch_id, body))
            )

        if isinstance(batches, AsyncIterable):
            async for item in batches:
                await send(item)
        else:
            for item in batches:
                await send(item)
        return results

    async def feed(
        self,
        y_true: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        *,
        outputs: Mapping[str, Mapping[str, Any]] | None = None,
        batch_size: int,
        on_batch: Callable[[BatchResult], None] | None = None,
    ) -> list[BatchResult]:
        """Send whole arrays in batches of ``batch_size`` rows; see :meth:`Evaluation.feed`."""
        _check_batch_size(batch_size)
        arrays, rows = _feed_arrays(y_true, y_pred, sample_weight, outputs)
        results = []
        for lo in range(0, rows, batch_size):
            body = _rows_slice(arrays, lo, min(rows, lo + batch_size))
            result = await self._put_new(body)
            results.append(result)
            if on_batch is not None:
                on_batch(result)
        return results

    async def _put_new(self, body: dict[str, Any]) -> BatchResult:
        """Send a batch under its content id (see :meth:`Evaluation.batch_id_of`)."""
        digest = content_digest(body)
        n, batch_id = self._take_id(digest)
        try:
            return await self._put(batch_id, body)
        except BaseException:
            self._give_back(digest, n)
            raise

    async def _put(
        self, batch_id: str, body: dict[str, Any], encoding: Encoding | None = None
    ) -> BatchResult:
        """Send a batch; over the body limit, send it as parts (in the batch's encoding,
        so that parts of a binary batch do not grow into JSON)."""
        client = self._client
        call, parts = _batch_put(
            client._stream, client._body_limit, self.id, batch_id, body, encoding
        )
        if parts is None:
            try:
                return await client._call(call)
            except LossServiceError as error:
                then = client._body_limit.after(body, call, error)
                if then is None:
                    raise
                if then == "binary":
                    return await self._put(batch_id, body, then)
                parts = then
        inherited = _encoding_of(call)
        order = _sending_order(parts)
        sent: dict[int, BatchResult] = {}
        for k in order:
            try:
                sent[k] = await self._put(_part_id(batch_id, k), parts[k], inherited)
            except LossServiceError as error:
                _part_refused(error, batch_id, parts, k, sent)
                raise
        return _joined(batch_id, [sent[k] for k in range(len(parts))], sent[order[-1]])

    async def results(self) -> EvaluationResults:
        """``GET /v1/evaluations/{id}``: the evaluate response over every batch so far."""
        return await self._client._call(self._client._stream.get(self.id))

    async def batches(self, *, page_size: int = 100) -> AsyncIterator[BatchResult]:
        """Every batch the evaluation accepted, in arrival order (a page at a time)."""
        _check_page_size(page_size)
        cursor: str | None = None
        while True:
            call = self._client._stream.batches(self.id, page_size, cursor)
            page = await self._client._call(call)
            for item in page.items:
                yield item
            if page.next is None:
                return
            cursor = page.next

    async def close(self) -> EvaluationSummary:
        """No more batches; see :meth:`Evaluation.close`."""
        return await self._client._call(self._client._stream.close(self.id))

    async def delete(self) -> None:
        """Delete the evaluation and its batches."""
        await self._client._call(self._client._stream.delete(self.id))

    async def report_html(self) -> str:
        """The evaluation's HTML report page."""
        return await self._client._call(self._client._stream.report(self.id))
