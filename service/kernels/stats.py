"""Sufficient statistics: how the metrics and reports of a batch add up across batches.

Every metric and report of :mod:`service.kernels.classification`,
:mod:`service.kernels.calibration` and :mod:`service.kernels.confusion` is
split in two:

* ``<name>_stats(y_true, y_pred, sample_weight, **params) -> Stats``: the
  batch's sufficient statistics, a dict of NumPy arrays: int64 where they
  count elements of a batch without weights, float64 sums otherwise (sums
  of weights, of confidences, of losses);
* ``<name>_value(stats, **params)`` (``<name>_report`` for reports): the
  number (or the report) those statistics give.

The contract that makes them mergeable: for batches ``A`` and ``B`` computed
with the same parameters, ``stats(A ++ B) == merge_stats(stats(A),
stats(B))``, key by key, elementwise (up to the rounding of float64 sums
when weights are not whole numbers; integer counts are exact). So a stream
of batches keeps one :data:`Stats` per evaluation, adds each batch's into it,
and finalizes whenever it is read, with the value a single call over all the
rows would give. The keys of a metric's statistics, and their shapes, depend
only on its parameters and the batch's number of classes and label family,
never on the batch's rows; :class:`Mergeable` names them.

The finalizers take statistics whose size (``Σ |x|`` over the elements) stays
below :data:`STATISTIC_LIMIT` (2**1000): within it their values are finite and
right, past it their sums may overflow. Callers refuse statistics past it.

Labels, in every ``*_stats`` function (the family is read from the shapes,
never guessed from the values):

* single-label batches: ``y_true`` is ``(rows,)`` integer class indices with
  ``y_pred`` ``(rows, C)``, ``C > 1``: the indices stand for their one-hot
  form, which is never built where a kernel does not need it (one-hot labels
  are passed as their indices);
* binary batches: ``y_pred`` is ``(rows,)`` or ``(rows, 1)``, ``y_true`` of the
  same number of elements, values 0 or 1;
* multi-label batches: ``y_true`` and ``y_pred`` both ``(rows, C)``, ``C > 1``.

``sample_weight`` is one non-negative weight per row (or None: every row
weighs 1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

Floats = NDArray[np.floating]
Indices = NDArray[np.integer]
#: One batch's sufficient statistics: key → int64 or float64 array.
Stats = dict[str, NDArray[Any]]
#: The label families of :func:`as_rows`.
Family = Literal["single_label", "binary", "multi_label"]


@dataclass(frozen=True)
class Mergeable:
    """A metric or report as a streaming layer drives it.

    ``stats(y_true, y_pred, sample_weight, **params)`` gives a batch's
    statistics, with exactly the keys ``keys``; statistics of many batches
    are added with :func:`merge_stats`; ``finalize(stats, **params)`` gives
    the value (a NumPy array: 0-d for one number) or the report (a dict ready
    for JSON). ``stats_params`` and ``finalize_params`` name the parameters
    each side takes, so that a caller can split one set of parameters
    between them.
    """

    name: str
    stats: Callable[..., Stats]
    finalize: Callable[..., Any]
    keys: tuple[str, ...]
    stats_params: tuple[str, ...]
    finalize_params: tuple[str, ...]
    kind: Literal["metric", "report"] = "metric"

    def compute(self, y_true: Any, y_pred: Any, sample_weight: Any = None, **params: Any) -> Any:
        """``finalize(stats(...))`` for one batch, parameters split between the two."""
        unknown = set(params) - set(self.stats_params) - set(self.finalize_params)
        if unknown:
            raise TypeError(f"{self.name} takes no parameter(s) {sorted(unknown)}")
        batch = self.stats(
            y_true,
            y_pred,
            sample_weight,
            **{k: v for k, v in params.items() if k in self.stats_params},
        )
        return self.finalize(
            batch, **{k: v for k, v in params.items() if k in self.finalize_params}
        )


def merge_stats(a: Mapping[str, NDArray[Any]], b: Mapping[str, NDArray[Any]]) -> Stats:
    """The statistics of two batches together: the elementwise sum, key by key.

    Both must come from the same metric with the same parameters (same keys,
    same shapes); an int64 count plus a float64 sum gives a float64 sum.
    """
    if a.keys() != b.keys():
        raise ValueError(f"cannot merge statistics with keys {sorted(a)} and {sorted(b)}")
    merged: Stats = {}
    for key, left in a.items():
        right = b[key]
        if left.shape != right.shape:
            raise ValueError(
                f"cannot merge statistics {key!r} of shapes {left.shape} and {right.shape}"
            )
        merged[key] = np.add(left, right)
    return merged


def sum_stats(parts: Iterable[Mapping[str, NDArray[Any]]]) -> Stats:
    """:func:`merge_stats` over any number of batches (at least one), in their order."""
    iterator = iter(parts)
    try:
        total: Stats = {k: np.array(v, copy=True) for k, v in next(iterator).items()}
    except StopIteration:
        raise ValueError("sum_stats needs the statistics of at least one batch") from None
    for part in iterator:
        total = merge_stats(total, part)
    return total


# ---- shared by the kernels ----------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """A batch as the kernels walk it: ``pred`` is ``(rows, C)``.

    Exactly one of ``labels`` (``(rows,)`` intp class indices: single-label)
    and ``dense`` (``(rows, C)`` targets: binary when ``C == 1``, else
    multi-label) is set; ``weight`` is ``(rows,)`` float64 or None.
    """

    pred: Floats
    labels: NDArray[np.intp] | None
    dense: NDArray[Any] | None
    weight: NDArray[np.float64] | None

    @property
    def n_rows(self) -> int:
        return int(self.pred.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.pred.shape[1])

    @property
    def family(self) -> Family:
        if self.labels is not None:
            return "single_label"
        return "binary" if self.n_classes == 1 else "multi_label"


def as_rows(y_true: Any, y_pred: Any, sample_weight: Any = None) -> Rows:
    """The batch as :class:`Rows`: the label family follows from the shapes alone.

    ``y_pred`` ``(..., C)`` becomes ``(rows, C)`` (1-D: ``(rows, 1)``);
    ``y_true`` with one axis less than a ``C > 1`` ``y_pred`` (or a last axis
    of 1 there) holds class indices; of ``y_pred``'s size, dense targets.
    """
    pred = np.asarray(y_pred)
    if pred.dtype.kind != "f":
        pred = pred.astype(np.float64)
    pred = pred.reshape(-1, 1) if pred.ndim <= 1 else pred.reshape(-1, pred.shape[-1])
    n, c = pred.shape
    true = np.asarray(y_true)
    labels: NDArray[np.intp] | None = None
    dense: NDArray[Any] | None = None
    if c > 1 and true.size == n:
        labels = true.reshape(n).astype(np.intp, copy=False)
    else:
        dense = true.reshape(n, c)
    return Rows(pred=pred, labels=labels, dense=dense, weight=row_weights(sample_weight, n))


def row_weights(sample_weight: Any, n: int) -> NDArray[np.float64] | None:
    """One float64 weight per row (a scalar weighs every row alike), or None."""
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    return np.broadcast_to(w.reshape(()), (n,)) if w.size == 1 else w.reshape(n)


def add_in_row_order(parts: Mapping[int, NDArray[Any]]) -> NDArray[Any]:
    """The sum of per-block partial results keyed by the block's first row, added in row order.

    Blocks run on several threads in any order; adding their parts in row
    order makes float sums the same from run to run.
    """
    starts = sorted(parts)
    dtype = np.result_type(*(parts[start] for start in starts))
    result = np.array(parts[starts[0]], dtype=dtype, copy=True)
    for start in starts[1:]:
        np.add(result, parts[start], out=result)
    return result


def weighted_bincount(
    indices: NDArray[np.integer], weights: NDArray[np.float64] | None, length: int
) -> NDArray[Any]:
    """``np.bincount`` of ``length`` bins: int64 counts, or float64 sums of ``weights``."""
    if weights is None:
        counts: NDArray[Any] = np.bincount(indices, minlength=length).astype(np.int64, copy=False)
        return counts
    # (np.bincount answers int64 zeros for empty weights: the float64 keeps the sums' type.)
    sums: NDArray[Any] = np.bincount(indices, weights=weights, minlength=length)
    return sums.astype(np.float64, copy=False)


def column_sums(a: NDArray[Any], weights: NDArray[np.float64] | None) -> NDArray[Any]:
    """``Σ_i w_i a_ic`` per column of a 2-D array.

    Without weights: int64 counts for a boolean ``a``; otherwise sums in
    ``a``'s dtype widened to float64 (float32 sums of whole numbers are exact
    below 2²⁴ rows). With weights: a float64 product ``w @ a``.
    """
    if weights is not None:
        return np.asarray(weights @ a.astype(np.float64, copy=False))
    if a.dtype == np.bool_:
        return count_true(a, axis=0)
    return np.asarray(np.add.reduce(a, axis=0)).astype(np.float64)


#: Rows (or columns) a uint16 count of True can span without overflowing.
_UINT16_SPAN = (1 << 16) - 1


def count_true(mask: NDArray[np.bool_], axis: int) -> NDArray[np.int64]:
    """The count of True along ``axis`` of a 2-D boolean array, as int64.

    Counted in uint16, four times as fast as in int64 (SIMD lanes), over
    spans of at most 65535 elements whose counts are then added.
    """
    as_bytes = mask.view(np.uint8)
    length = mask.shape[axis]
    if length <= _UINT16_SPAN:
        counted: NDArray[np.int64] = np.add.reduce(as_bytes, axis=axis, dtype=np.uint16).astype(
            np.int64
        )
        return counted
    counts = np.zeros(mask.shape[1 - axis], dtype=np.int64)
    for start in range(0, length, _UINT16_SPAN):
        span = slice(start, start + _UINT16_SPAN)
        part = as_bytes[span] if axis == 0 else as_bytes[:, span]
        counts += np.add.reduce(part, axis=axis, dtype=np.uint16)
    return counts


def total(weights: NDArray[np.float64] | None, n: int) -> NDArray[Any]:
    """The weight of ``n`` rows: ``n`` as int64, or the float64 sum of their weights."""
    if weights is None:
        return np.asarray(n, dtype=np.int64)
    return np.asarray(np.add.reduce(weights, dtype=np.float64))


#: The largest size (:func:`statistic_size`) of one statistic that the finalizers take:
#: 2**1000 ≈ 1.07e301. A finalizer adds at most a handful of statistics' elements or
#: sums (``tp + fp``, ``2 tp + fp + fn``, ``Σ support``) and multiplies such sums by at
#: most about 2**11 (the log term of the precision-recall interpolation), so from
#: statistics within it no intermediate value leaves float64's range (2**1024): the
#: values are finite and right. Past it, a finalizer's sums may overflow to infinity and
#: give a wrong number (``tp / (tp + fp)`` as 0) or none.
STATISTIC_LIMIT = 2.0**1000


def statistic_size(values: ArrayLike) -> float:
    """``Σ |x|`` over a statistic's elements, in float64: ``inf`` when that sum, or an
    element, is beyond float64's range, NaN when an element is NaN."""
    array = np.asarray(values).astype(np.float64, copy=False)
    if array.size == 0:
        return 0.0
    with np.errstate(over="ignore"):
        # Statistics are mostly sums of weights, never negative: no copy of their magnitudes.
        if array.min() >= 0:
            return float(np.add.reduce(array, axis=None))
        return float(np.add.reduce(np.abs(array), axis=None))


def divide_no_nan(num: NDArray[Any], den: NDArray[Any]) -> NDArray[np.float64]:
    """``num / den`` in float64, 0 where ``den`` is 0 (Keras' ``divide_no_nan``)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast_shapes(num.shape, den.shape), dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out
