"""Precision, recall, F-beta and AUC with Keras 3's numbers, as mergeable statistics.

Each metric is a ``*_stats`` function (one batch → its confusion counts, see
:mod:`service.kernels.stats` for the contract and the label families) and a
``*_value`` function (counts → the metric), plus a one-shot function of the
metric's name that chains the two. Values are float64 NumPy arrays: 0-d for
one number, 1-D for one value per class or per threshold.

Decisions, as Keras 3 makes them (TensorFlow backend):

* a positive prediction is ``y_pred > threshold``, strictly, compared in
  ``y_pred``'s dtype (float32: ``float32(0.3)`` is not above a threshold of
  0.3, which is read as ``float32(0.3)``);
* a true label counts as positive where it is non-zero;
* ``top_k`` keeps the ``k`` largest predictions of each row (ties: the
  lowest indices, as ``tf.math.top_k``) and sets the others to ``-1e10``
  before the thresholds are applied, so with the default threshold of
  ``-1e10`` the top ``k`` are the positives whatever their values;
* thresholds evenly spread over ``[0, 1]`` (three or more, ``k / (T - 1)``)
  take Keras' bucketed path: an element counts above threshold ``j`` when
  ``ceil(clip(p, 0, 1) (T - 1)) - 1 ≥ j``, computed in ``y_pred``'s dtype.
  AUC always does, with the end thresholds moved to ``-1e-7`` and
  ``1 + 1e-7`` so that every prediction is above the first and none above
  the last.

How they run: by row blocks (:mod:`service.kernels._blocks`), each block
adding its counts into its own slot, the slots then added in row order, so
the result does not depend on which thread ran which block. Integer labels
only ever gather the one prediction at the label of each row; the counts of
all elements are per-row integers (``count_nonzero`` of a row's decisions)
weighted once per row, never an ``n × C`` one-hot matrix. AUC needs every
element's bucket, but elements below ``1 / (T - 1)`` (all in the first
bucket: most of a softmax over many classes) are counted without being
bucketed one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, cast

import numpy as np
from numpy.typing import NDArray

from service.kernels._blocks import for_each_block, row_max, scratch
from service.kernels._math import exp_into
from service.kernels.stats import (
    Floats,
    Mergeable,
    Rows,
    Stats,
    add_in_row_order,
    as_rows,
    column_sums,
    count_true,
    divide_no_nan,
    total,
    weighted_bincount,
)

#: What Keras' ``top_k`` filter writes over the predictions outside the top ``k``.
NEG_INF = -1e10
#: Keras' ``backend.epsilon()``: the F-beta score's guard against 0/0, AUC's end thresholds.
EPSILON = 1e-7

Average = Literal["micro", "macro", "weighted"] | None
Curve = Literal["ROC", "PR"]
Summation = Literal["interpolation", "minoring", "majoring"]
Thresholds = float | Sequence[float] | None

# ---- shared helpers ---------------------------------------------------------------------


def sigmoid_into(x: Floats, out: Floats) -> Floats:
    """``1 / (1 + e^{-x})`` into ``out`` (``out`` may be ``x``), in ``x``'s dtype.

    ``e^{-x}`` overflows to infinity for very negative ``x``, and the quotient
    is then exactly 0, the sigmoid's rounded value.
    """
    with np.errstate(over="ignore"):
        exp_into(x, out, scale=-1.0)
    out += out.dtype.type(1)
    result: Floats = np.reciprocal(out, out=out)
    return result


def _flags(shape: tuple[int, int], slot: int) -> NDArray[np.bool_]:
    """A per-thread boolean scratch block (see :func:`service.kernels._blocks.scratch`)."""
    return cast("NDArray[np.bool_]", scratch(shape, np.dtype(bool), slot=slot))


def _row_counts(mask: NDArray[np.bool_]) -> NDArray[np.int64]:
    """The number of True per row of a 2-D boolean block."""
    return count_true(mask, axis=1)


def _weighted_total(per_row: NDArray[Any], w: NDArray[np.float64] | None) -> NDArray[Any]:
    """``Σ_i w_i v_i`` (float64), or ``Σ_i v_i`` (int64 for integer ``v``) without weights."""
    if w is None:
        return np.asarray(
            np.add.reduce(per_row, dtype=np.int64 if per_row.dtype.kind in "biu" else np.float64)
        )
    return np.asarray(np.dot(w, per_row.astype(np.float64, copy=False)))


def _total_only(mask: NDArray[np.bool_]) -> NDArray[np.intp]:
    """The count of True in ``mask`` as a one-element array: the total of
    :func:`_row_counts`, for callers that only add the rows up (no weights)."""
    return np.array([np.count_nonzero(mask)], dtype=np.intp)


def _flat_positions(labels: NDArray[np.intp], c: int) -> NDArray[np.intp]:
    """Flat index of each row's label element in a C-contiguous ``(rows, c)`` block."""
    positions: NDArray[np.intp] = np.arange(0, labels.shape[0] * c, c, dtype=np.intp)
    positions += labels
    return positions


def _block(rows: Rows, sl: slice, *, from_logits: bool, slot: int = 0) -> Floats:
    """The block's predictions, C-contiguous; with ``from_logits``, their sigmoid (scratch)."""
    x = rows.pred[sl]
    if from_logits:
        return sigmoid_into(x, scratch(x.shape, x.dtype, slot=slot))
    return np.ascontiguousarray(x)


def top_k_mask(x: Floats, k: int) -> NDArray[np.bool_]:
    """The ``k`` largest elements of each row of ``x``, ties going to the lowest indices.

    Exactly ``min(k, C)`` Trues per row, as ``tf.math.top_k`` picks them: every
    element above the row's ``k``-th largest value, then the first of those
    equal to it.
    """
    n, c = x.shape
    if k >= c:
        return np.ones((n, c), dtype=bool)
    kth = row_max(x) if k == 1 else np.partition(x, c - k, axis=1)[:, c - k]
    mask = x > kth[:, None]
    ties = x == kth[:, None]
    need = k - _row_counts(mask)
    crowded = np.flatnonzero(_row_counts(ties) > need)
    mask |= ties
    if crowded.size:
        # Rows with more ties than places left: only the first `need` ties count.
        tied = ties[crowded]
        drop = tied & (np.cumsum(tied, axis=1) > need[crowded, None])
        mask[crowded] &= ~drop
    return mask


def _top_k_filtered(x: Floats, k: int, ranked: Floats | None = None) -> Floats:
    """Keras' ``_filter_top_k``: the top ``k`` of each row kept, the rest set to ``-1e10``.

    ``ranked``: what the rows are ranked by, when not ``x`` itself: the logits whose
    sigmoid ``x`` is. The sigmoid keeps their order but rounds large ones alike (every
    float32 logit past ~17 to 1.0), which would make ties of distinct logits."""
    mask = top_k_mask(x if ranked is None else np.ascontiguousarray(ranked), k)
    return np.where(mask, x, x.dtype.type(NEG_INF))


def _evenly_distributed(thresholds: Sequence[float]) -> bool:
    """Keras' test for its bucketed path: three or more thresholds ``k / (T - 1)``."""
    t = len(thresholds)
    if t < 3:
        return False
    even = np.arange(t, dtype=np.float32) / (t - 1)
    return bool(np.allclose(thresholds, even, atol=EPSILON))


# ---- bucket histograms (AUC, evenly spread thresholds) -----------------------------------


def _bucket_index_into(x: Floats, n_thresholds: int, out: NDArray[np.intp]) -> NDArray[np.intp]:
    """``ceil(clip(x, 0, 1) (T - 1))`` into ``out``, in ``x``'s dtype, as Keras buckets.

    Keras' bucket is this index minus one: an element counts above threshold
    ``j`` when its index is at least ``j + 1`` (strictly above ``j / (T - 1)``).
    ``clip(x (T - 1), 0, T - 1)`` is the same number: the product by a
    positive constant keeps the order and maps 0 and 1 onto the ends exactly.
    """
    m = x.dtype.type(n_thresholds - 1)
    buf = scratch(x.shape if x.ndim == 2 else (1, x.size), x.dtype, slot=1).reshape(x.shape)
    np.multiply(x, m, out=buf)
    np.clip(buf, 0, m, out=buf)
    np.ceil(buf, out=out, casting="unsafe")
    return out


def _bucket_index(x: Floats, n_thresholds: int) -> NDArray[np.intp]:
    return _bucket_index_into(x, n_thresholds, np.empty(x.shape, dtype=np.intp))


def _low_cut(dtype: np.dtype[Any], n_thresholds: int) -> np.floating:
    """A value below which every prediction has a bucket index of at most 1.

    ``p ≤ (1 - 2⁻¹⁰) / (T - 1)`` gives ``p (T - 1) < 1`` even after rounding
    (float32 rounds by 2⁻²⁴ at most), so its index ``ceil(p (T - 1))`` is 0 or
    1: Keras' first bucket, with thresholds that start below 0.
    """
    cut: np.floating = dtype.type((1 - 2.0**-10) / (n_thresholds - 1))
    return cut


def _bucket_histograms(
    rows: Rows,
    n_thresholds: int,
    values: Callable[[slice], Floats],
    *,
    per_column: bool,
    skip_low: bool,
    logits: bool = False,
) -> tuple[NDArray[Any], NDArray[Any]]:
    """Histograms ``(positives, negatives)`` of the elements' bucket index.

    The index is :func:`_bucket_index_into`'s, in ``[0, T)``; histograms are
    ``(T,)`` over all elements pooled, or ``(T, C)`` per column. Counts are
    int64 without weights, float64 sums of row weights with them.
    ``logits``: ``values`` gives logits, and the sigmoid is applied here.

    ``skip_low`` (only for thresholds that start below 0, where indices 0 and
    1 are the same bucket): blocks where few elements exceed
    :func:`_low_cut` bucket only those, and count the rest in index 0 (for
    logits, the cut is moved to logit space with a margin of 0.01, so that
    the sigmoid's rounding cannot carry an element across it).
    """
    n, c = rows.n_rows, rows.n_classes
    dtype = rows.pred.dtype
    width = n_thresholds * c if per_column else n_thresholds
    cut = _low_cut(dtype, n_thresholds)
    if logits:
        cut = dtype.type(np.log(float(cut) / (1 - float(cut))) - 0.01)
    parts: dict[int, NDArray[Any] | _HighElements] = {}

    def work(sl: slice) -> None:
        x = values(sl)
        r = x.shape[0]
        w = None if rows.weight is None else rows.weight[sl]
        labels = None if rows.labels is None else rows.labels[sl]
        ypos = None
        if rows.dense is not None:
            ypos = np.not_equal(rows.dense[sl], 0, out=_flags((r, c), 2))
        if skip_low:
            low = np.less_equal(x, cut, out=_flags((r, c), 3))
            if 4 * (x.size - int(np.count_nonzero(low))) <= x.size:
                parts[sl.start] = _high_elements(
                    x, low, labels, ypos, w, n_thresholds, per_column=per_column, logits=logits
                )
                return
        if logits:
            x = sigmoid_into(x, scratch(x.shape, x.dtype))
        index = _bucket_index_into(
            x, n_thresholds, cast("NDArray[np.intp]", scratch((r, c), np.dtype(np.intp), slot=4))
        )
        if per_column:
            index *= c
            index += np.arange(c, dtype=np.intp)
        # Positives go to the upper half of the histogram: one bincount for both.
        flat = index.reshape(-1)
        if labels is not None:
            flat[_flat_positions(labels, c)] += width
        else:
            np.add(index, width, out=index, where=ypos)
        weights = None if w is None else np.repeat(w, c)
        parts[sl.start] = weighted_bincount(flat, weights, 2 * width)

    for_each_block(n, c, work)
    both = np.zeros(2 * width, dtype=np.int64 if rows.weight is None else np.float64)
    high = []
    for start in sorted(parts):
        part = parts[start]
        if isinstance(part, _HighElements):
            high.append(part)
        else:
            both += part
    if high:
        # Every block's high elements in one bincount, in row order.
        weights = None if rows.weight is None else np.concatenate([h.weights for h in high])
        both += weighted_bincount(np.concatenate([h.index for h in high]), weights, 2 * width)
        first = np.add.reduce([h.first for h in high])
        k = first.shape[1]
        both[:k] += first[0]
        both[width : width + k] += first[1]
    shape = (n_thresholds, c) if per_column else (n_thresholds,)
    return both[width:].reshape(shape), both[:width].reshape(shape)


@dataclass(frozen=True)
class _HighElements:
    """A block's elements above the cut, left for one bincount over all blocks.

    ``index`` is each one's histogram index (positives in the upper half),
    ``weights`` its row's weight; ``first`` is ``(2, k)``: the block's
    other elements (all in the first bucket), negatives then positives, per
    column (``k = C``) or pooled (``k = 1``).
    """

    index: NDArray[np.intp]
    weights: NDArray[np.float64] | None
    first: NDArray[Any]


def _high_elements(
    x: Floats,
    low: NDArray[np.bool_],
    labels: NDArray[np.intp] | None,
    ypos: NDArray[np.bool_] | None,
    w: NDArray[np.float64] | None,
    n_thresholds: int,
    *,
    per_column: bool,
    logits: bool,
) -> _HighElements:
    """One block bucketing only its elements above the cut (``low`` is overwritten).

    The elements at or below the cut are all in the first bucket: pooled,
    they are counted per row as whole numbers (the row's elements minus its
    high ones, split into positives and negatives), then weighted once per
    row; per column, as the column's weight minus its high elements'.
    """
    r, c = x.shape
    high = np.flatnonzero(np.logical_not(low, out=low))
    row_of = high // c
    col_of = high - row_of * c
    if labels is not None:
        is_pos = col_of == labels[row_of]
    else:
        assert ypos is not None
        is_pos = ypos.reshape(-1)[high]
    v = x.reshape(-1)[high]
    if logits:
        v = sigmoid_into(v, v)
    bucket = _bucket_index(v, n_thresholds)
    width = n_thresholds * c if per_column else n_thresholds
    index = bucket * c + col_of if per_column else bucket
    index[is_pos] += width
    wsel = None if w is None else w[row_of]
    if per_column:
        high_all = weighted_bincount(col_of, wsel, c)
        high_pos = weighted_bincount(col_of[is_pos], None if wsel is None else wsel[is_pos], c)
        if labels is not None:
            pos_all = weighted_bincount(labels, w, c)
        else:
            assert ypos is not None
            pos_all = column_sums(ypos, w)
        low_pos = pos_all - high_pos
        low_neg = total(w, r) - high_all - low_pos
        if w is not None:
            # Weighted sums subtract: keep their rounding from going below 0.
            low_pos, low_neg = np.maximum(low_pos, 0), np.maximum(low_neg, 0)
        return _HighElements(index, wsel, np.stack([low_neg, low_pos]))
    high_per_row = np.bincount(row_of, minlength=r)
    high_pos_per_row = np.bincount(row_of[is_pos], minlength=r)
    if labels is not None:
        pos_per_row = np.ones(r, dtype=np.intp)
    else:
        assert ypos is not None
        pos_per_row = _row_counts(ypos)
    low_pos_rows = pos_per_row - high_pos_per_row
    low_neg_rows = (c - high_per_row) - low_pos_rows
    first = np.array([[_weighted_total(low_neg_rows, w)], [_weighted_total(low_pos_rows, w)]])
    return _HighElements(index, wsel, first)


def _above_thresholds(hist: NDArray[Any], *, epsilon_ends: bool) -> NDArray[Any]:
    """From a histogram of bucket indices to the count above each of the ``T`` thresholds.

    Above threshold ``j`` means an index of at least ``j + 1``; with
    ``epsilon_ends`` (AUC's first threshold is ``-1e-7``) every element is
    above threshold 0.
    """
    above = np.flip(np.cumsum(np.flip(hist, axis=0), axis=0), axis=0)
    tail = np.zeros((1, *hist.shape[1:]), dtype=above.dtype)
    above = np.concatenate([above, tail], axis=0)
    if epsilon_ends:
        return np.concatenate([above[:1], above[2:]], axis=0)
    return above[1:]


# ---- precision and recall ---------------------------------------------------------------


def _threshold_list(thresholds: Thresholds, top_k: int | None) -> list[float]:
    if thresholds is None:
        return [NEG_INF if top_k is not None else 0.5]
    if isinstance(thresholds, int | float):
        return [float(thresholds)]
    return [float(t) for t in thresholds]


def _column(rows: Rows, class_id: int, top_k: int | None, from_logits: bool) -> Rows:
    """Column ``class_id`` as a binary batch, after the sigmoid and the top-``k`` filter."""
    x = logits = rows.pred
    if from_logits:
        x = sigmoid_into(x, np.empty_like(x))
    if top_k is not None:
        x = _top_k_filtered(x, top_k, logits if from_logits else None)
    if rows.labels is not None:
        y = (rows.labels == class_id)[:, None]
    else:
        assert rows.dense is not None
        y = rows.dense[:, class_id, None]
    return Rows(
        pred=np.ascontiguousarray(x[:, class_id, None]), labels=None, dense=y, weight=rows.weight
    )


def precision_recall_stats(
    y_true: Any,
    y_pred: Any,
    sample_weight: Any = None,
    *,
    thresholds: Thresholds = None,
    top_k: int | None = None,
    class_id: int | None = None,
    from_logits: bool = False,
) -> Stats:
    """Weighted ``tp``, ``fp``, ``fn`` at each threshold: Keras' ``Precision``/``Recall`` state.

    Args:
      y_true: ``(rows,)`` class indices, or targets of ``y_pred``'s shape
        (non-zero is positive).
      y_pred: ``(rows, C)`` probabilities (``(rows,)`` or ``(rows, 1)``: binary).
      sample_weight: ``(rows,)`` or None.
      thresholds: one threshold or several; default 0.5 (``-1e10`` with ``top_k``).
      top_k: keep only the ``k`` largest predictions of each row (ranking a row
        needs all of it: each block builds its rows' top-``k`` mask). Rows of
        a binary batch hold one prediction, which is always kept.
      class_id: count only this column (after ``top_k``).
      from_logits: apply a sigmoid to every prediction first.

    Returns:
      ``{"tp", "fp", "fn"}``, each ``(T,)`` for ``T`` thresholds.
    """
    rows = as_rows(y_true, y_pred, sample_weight)
    values = _threshold_list(thresholds, top_k)
    if class_id is not None:
        rows = _column(rows, class_id, top_k, from_logits)
        top_k, from_logits = None, False

    def block_values(sl: slice) -> Floats:
        x = _block(rows, sl, from_logits=from_logits)
        if top_k is None:
            return x
        return _top_k_filtered(x, top_k, rows.pred[sl] if from_logits else None)

    if _evenly_distributed(values):
        pos, neg = _bucket_histograms(
            rows, len(values), block_values, per_column=False, skip_low=False
        )
        tp = _above_thresholds(pos, epsilon_ends=False)
        fp = _above_thresholds(neg, epsilon_ends=False)
        return {"tp": tp, "fp": fp, "fn": pos.sum(axis=0) - tp}
    return _threshold_counts(rows, values, block_values)


def _threshold_counts(
    rows: Rows, thresholds: list[float], values: Callable[[slice], Floats]
) -> Stats:
    """``tp``, ``fp``, ``fn`` at each threshold by direct comparison, ``p > t``."""
    n, c = rows.n_rows, rows.n_classes
    parts: dict[int, NDArray[Any]] = {}

    def work(sl: slice) -> None:
        x = values(sl)
        r = x.shape[0]
        w = None if rows.weight is None else rows.weight[sl]
        # Per-row counts (whole numbers), weighted once per row; without
        # weights only their totals matter, and count_nonzero gives those directly.
        count: Callable[[NDArray[np.bool_]], NDArray[Any]] = (
            _row_counts if w is not None else _total_only
        )
        d = _flags((r, c), 2)
        out = []
        if rows.dense is not None:
            ypos = np.not_equal(rows.dense[sl], 0, out=_flags((r, c), 3))
            positives = count(ypos)
        else:
            ypos = None
            positives = np.ones(r, dtype=np.intp) if w is not None else np.array([r])
        for t in thresholds:
            np.greater(x, x.dtype.type(t), out=d)
            if ypos is None:
                assert rows.labels is not None
                hits = d.reshape(-1)[_flat_positions(rows.labels[sl], c)]
                tp = hits.astype(np.intp) if w is not None else _total_only(hits)
            else:
                tp = count(np.logical_and(d, ypos, out=_flags((r, c), 5)))
            predicted = count(d)
            out.append(
                [
                    _weighted_total(tp, w),
                    _weighted_total(predicted - tp, w),
                    _weighted_total(positives - tp, w),
                ]
            )
        parts[sl.start] = np.array(out).T

    for_each_block(n, c, work)
    counts = add_in_row_order(parts)
    return {"tp": counts[0], "fp": counts[1], "fn": counts[2]}


def _one_or_many(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Keras returns a single number for one threshold, else one per threshold."""
    return values.reshape(()) if values.shape == (1,) else values


def precision_value(stats: Stats) -> NDArray[np.float64]:
    """``tp / (tp + fp)`` per threshold; 0 where nothing was predicted positive."""
    return _one_or_many(divide_no_nan(stats["tp"], stats["tp"] + stats["fp"]))


def recall_value(stats: Stats) -> NDArray[np.float64]:
    """``tp / (tp + fn)`` per threshold; 0 where there is no positive label."""
    return _one_or_many(divide_no_nan(stats["tp"], stats["tp"] + stats["fn"]))


def precision(
    y_true: Any, y_pred: Any, sample_weight: Any = None, **options: Any
) -> NDArray[np.float64]:
    """Keras' ``Precision``: ``tp / (tp + fp)`` over every element's decision.
    ``options`` are :func:`precision_recall_stats`'s (``thresholds``, ``top_k``,
    ``class_id``, ``from_logits``).

    >>> float(precision(np.array([0, 1, 1, 1]), np.float32([1, 0, 1, 1])))  # 2 / 3
    0.6666666666666666
    """
    return precision_value(precision_recall_stats(y_true, y_pred, sample_weight, **options))


def recall(
    y_true: Any, y_pred: Any, sample_weight: Any = None, **options: Any
) -> NDArray[np.float64]:
    """Keras' ``Recall``: ``tp / (tp + fn)`` over every element's decision.
    ``options`` are :func:`precision_recall_stats`'s (``thresholds``, ``top_k``,
    ``class_id``, ``from_logits``).

    >>> float(recall(np.array([0, 1, 1, 1]), np.float32([1, 0, 1, 1])))  # 2 / 3
    0.6666666666666666
    """
    return recall_value(precision_recall_stats(y_true, y_pred, sample_weight, **options))


# ---- F-beta -------------------------------------------------------------------------------


def fbeta_stats(
    y_true: Any,
    y_pred: Any,
    sample_weight: Any = None,
    *,
    threshold: float | None = None,
    from_logits: bool = False,
) -> Stats:
    """Per-class weighted ``tp``, ``fp``, ``fn`` and ``support``: Keras' ``FBetaScore`` state.

    A positive prediction is ``y_pred > threshold``; with ``threshold`` None,
    every element equal to its row's maximum whose magnitude exceeds
    ``1e-9`` (ties give several positives, a row of zeros none); with
    ``from_logits``, the maxima are the logits' (their sigmoid rounds large ones
    alike) and the magnitude is the sigmoid's. Targets
    count by value, as Keras multiplies by them (``tp = Σ w ŷ y``, ``support
    = Σ w y``); integer labels stand for their one-hot rows.

    Returns:
      ``{"tp", "fp", "fn", "support"}``, each ``(C,)``.
    """
    rows = as_rows(y_true, y_pred, sample_weight)
    n, c = rows.n_rows, rows.n_classes
    parts: dict[int, NDArray[Any]] = {}

    def work(sl: slice) -> None:
        x = _block(rows, sl, from_logits=from_logits)
        ranked = np.ascontiguousarray(rows.pred[sl]) if from_logits else x
        w = None if rows.weight is None else rows.weight[sl]
        if rows.labels is not None:
            labels = rows.labels[sl]
            if threshold is None:
                parts[sl.start] = _fbeta_argmax_block(x, labels, w, ranked)
            else:
                d = np.greater(x, x.dtype.type(threshold), out=_flags(x.shape, 2))
                parts[sl.start] = _fbeta_labels_block(d, labels, w)
        else:
            assert rows.dense is not None
            d = _decisions(x, threshold, ranked)
            parts[sl.start] = _fbeta_dense_block(d, rows.dense[sl], w)

    for_each_block(n, c, work)
    counts = add_in_row_order(parts)
    if rows.weight is None and counts.dtype.kind == "f" and rows.dense is None:
        counts = counts.astype(np.int64)
    return {"tp": counts[0], "fp": counts[1], "fn": counts[2], "support": counts[3]}


def _decisions(x: Floats, threshold: float | None, ranked: Floats) -> NDArray[np.bool_]:
    """Positive predictions: above ``threshold``, or (None) equal to the row's maximum of
    ``ranked`` (``x``, or the logits whose sigmoid it is) where ``x`` there is not ~0."""
    if threshold is not None:
        return x > x.dtype.type(threshold)
    top = row_max(ranked)
    peak = top if ranked is x else row_max(x)
    # |max| > 1e-9 so that a row of zeros does not become a row of positives.
    return (ranked >= top[:, None]) & (np.abs(peak) > x.dtype.type(1e-9))[:, None]


def _fbeta_argmax_block(
    x: Floats, labels: NDArray[np.intp], w: NDArray[np.float64] | None, ranked: Floats
) -> NDArray[Any]:
    """Counts for integer labels with ``threshold`` None: the row maxima (of ``ranked``:
    ``x``, or the logits whose sigmoid it is) are the positives.

    Rows with one maximum (the common case) are counted from their first
    argmax alone; rows with tied maxima take every tied element.
    """
    r, c = x.shape
    first = np.argmax(ranked, axis=1)
    at = _flat_positions(first, c)
    top = ranked.reshape(-1)[at]
    # |max| > 1e-9 so that a row of zeros does not become a row of positives.
    valid = np.abs(x.reshape(-1)[at]) > x.dtype.type(1e-9)
    ones = np.ones(r) if w is None else w
    support = np.bincount(labels, weights=ones, minlength=c)
    hit = (first == labels) & valid
    ties = np.equal(ranked, top[:, None], out=_flags(x.shape, 2))
    if int(np.count_nonzero(ties)) == r:
        tp = np.bincount(labels, weights=ones * hit, minlength=c)
        fp = np.bincount(first, weights=ones * (valid & ~hit), minlength=c)
        fn = np.bincount(labels, weights=ones * ~hit, minlength=c)
        return np.stack([tp, fp, fn, support])
    tied = _row_counts(ties) > 1
    lone = ~tied
    tp = np.bincount(labels, weights=ones * (hit & lone), minlength=c)
    fp = np.bincount(first, weights=ones * (valid & ~hit & lone), minlength=c)
    fn = np.bincount(labels, weights=ones * (~hit & lone), minlength=c)
    # Rows with tied maxima: every tied element is a positive prediction.
    where = np.flatnonzero(tied)
    d = ties[where] & valid[where, None]
    at_label = d[np.arange(where.size), labels[where]]
    wt = ones[where]
    tp_tied = np.bincount(labels[where], weights=wt * at_label, minlength=c)
    tp += tp_tied
    fn += np.bincount(labels[where], weights=wt * ~at_label, minlength=c)
    # A column's predicted positives include its hits, so the difference is ≥ 0.
    fp += np.maximum(wt @ d - tp_tied, 0)
    return np.stack([tp, fp, fn, support])


def _fbeta_labels_block(
    d: NDArray[np.bool_], labels: NDArray[np.intp], w: NDArray[np.float64] | None
) -> NDArray[Any]:
    """Counts for integer labels and a threshold: decisions gathered at the labels."""
    r, c = d.shape
    hit = d.reshape(-1)[_flat_positions(labels, c)]
    ones = np.ones(r) if w is None else w
    tp = np.bincount(labels, weights=ones * hit, minlength=c)
    fn = np.bincount(labels, weights=ones * ~hit, minlength=c)
    support = np.bincount(labels, weights=ones, minlength=c)
    predicted = column_sums(d, w).astype(np.float64)
    # Each hit is one of its column's predicted positives, so the difference is ≥ 0.
    return np.stack([tp, np.maximum(predicted - tp, 0), fn, support])


def _fbeta_dense_block(
    d: NDArray[np.bool_], y: NDArray[Any], w: NDArray[np.float64] | None
) -> NDArray[Any]:
    """Counts for dense targets: ``Σ w ŷ y``, ``Σ w ŷ (1 - y)``, ``Σ w (1 - ŷ) y``, ``Σ w y``.

    The last two are the column's predicted positives and support minus its
    true positives (both at least as large, as ``0 ≤ y ≤ 1``).
    """
    targets = y if y.dtype.kind == "f" else y.astype(np.float32)
    hits = np.multiply(d, targets, out=scratch(d.shape, targets.dtype, slot=3))
    tp = column_sums(hits, w).astype(np.float64)
    predicted = column_sums(d, w)
    support = column_sums(targets, w)
    fp = np.maximum(predicted - tp, 0)
    fn = np.maximum(support - tp, 0)
    return np.stack([tp, fp, fn, support])


def fbeta_value(stats: Stats, *, average: Average = None, beta: float = 1.0) -> NDArray[np.float64]:
    """Keras' F-beta from the counts: ``(1 + β²) P R / (β² P + R)``, with Keras' guards.

    ``P = tp / (tp + fp + ε)`` and ``R = tp / (tp + fn + ε)``, and the score
    divides by ``β² P + R + ε`` (``ε = 1e-7``), so 0/0 gives 0. ``micro``
    pools the counts of every class first; ``macro`` is the plain mean over
    classes (a class without support scores 0 and counts); ``weighted``
    weighs each class by ``support / (Σ support + ε)``; None gives one value
    per class.
    """
    tp, fp, fn = (np.asarray(stats[k], dtype=np.float64) for k in ("tp", "fp", "fn"))
    if average == "micro":
        tp, fp, fn = tp.sum(), fp.sum(), fn.sum()
    p = tp / (tp + fp + EPSILON)
    r = tp / (tp + fn + EPSILON)
    b2 = beta * beta
    score = (1 + b2) * (p * r / (b2 * p + r + EPSILON))
    if average == "weighted":
        support = np.asarray(stats["support"], dtype=np.float64)
        return np.asarray(np.sum(score * (support / (support.sum() + EPSILON))))
    if average is not None:
        return np.asarray(np.mean(score))
    return np.asarray(score)


def fbeta_score(
    y_true: Any,
    y_pred: Any,
    sample_weight: Any = None,
    *,
    average: Average = None,
    beta: float = 1.0,
    threshold: float | None = None,
    from_logits: bool = False,
) -> NDArray[np.float64]:
    """Keras' ``FBetaScore`` on 2-D batches (see :func:`fbeta_stats`, :func:`fbeta_value`).

    >>> y = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    >>> p = np.float32([[0.2, 0.6, 0.7], [0.2, 0.6, 0.6], [0.6, 0.8, 0.0]])
    >>> fbeta_score(y, p, beta=2.0, threshold=0.5).round(4)  # class 0: P = 1, R = 1/3
    array([0.3846, 0.9091, 0.8333])
    """
    stats = fbeta_stats(y_true, y_pred, sample_weight, threshold=threshold, from_logits=from_logits)
    return fbeta_value(stats, average=average, beta=beta)


def f1_score(
    y_true: Any,
    y_pred: Any,
    sample_weight: Any = None,
    *,
    average: Average = None,
    threshold: float | None = None,
    from_logits: bool = False,
) -> NDArray[np.float64]:
    """Keras' ``F1Score``: :func:`fbeta_score` with ``β = 1``, ``2 P R / (P + R)``."""
    stats = fbeta_stats(y_true, y_pred, sample_weight, threshold=threshold, from_logits=from_logits)
    return fbeta_value(stats, average=average, beta=1.0)


# ---- AUC ----------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def auc_thresholds(num_thresholds: int) -> NDArray[np.float64]:
    """Keras' AUC thresholds: ``[-1e-7, 1/(T-1), ..., (T-2)/(T-1), 1 + 1e-7]``."""
    inner = [(i + 1) / (num_thresholds - 1) for i in range(num_thresholds - 2)]
    thresholds = np.array([-EPSILON, *inner, 1 + EPSILON])
    thresholds.flags.writeable = False
    return thresholds


def auc_stats(
    y_true: Any,
    y_pred: Any,
    sample_weight: Any = None,
    *,
    num_thresholds: int = 200,
    multi_label: bool = False,
    from_logits: bool = False,
) -> Stats:
    """Keras' ``AUC`` state: weighted ``tp``, ``fp``, ``tn``, ``fn`` at each threshold.

    Every element is a binary decision at each of :func:`auc_thresholds`,
    pooled into one curve, or one curve per column with ``multi_label``.
    Predictions are clipped to ``[0, 1]``; ``from_logits`` applies a sigmoid
    to every element first (to categorical logits too, as Keras does).

    Integer labels give the positives (one per row, gathered); the negatives
    still need every element's bucket, but not a one-hot matrix.

    Returns:
      ``{"tp", "fp", "tn", "fn"}``, each ``(T,)``, or ``(T, C)`` with ``multi_label``.
    """
    rows = as_rows(y_true, y_pred, sample_weight)

    def block_values(sl: slice) -> Floats:
        return np.ascontiguousarray(rows.pred[sl])

    pos, neg = _bucket_histograms(
        rows,
        num_thresholds,
        block_values,
        per_column=multi_label,
        skip_low=True,
        logits=from_logits,
    )
    tp = _above_thresholds(pos, epsilon_ends=True)
    fp = _above_thresholds(neg, epsilon_ends=True)
    return {"tp": tp, "fp": fp, "tn": neg.sum(axis=0) - fp, "fn": pos.sum(axis=0) - tp}


def auc_value(
    stats: Stats, *, curve: Curve = "ROC", summation_method: Summation = "interpolation"
) -> NDArray[np.float64]:
    """Keras' AUC from the counts: a Riemann sum over the ``T - 1`` threshold intervals.

    ROC plots recall against the false positive rate, PR precision against
    recall (each ``0/0 = 0``). Heights: the mean of the two ends
    (``interpolation``), their minimum (``minoring``) or maximum
    (``majoring``); PR with interpolation uses Davis & Goadrich's
    interpolation instead (:func:`_interpolate_pr_auc`). Per-column counts
    (``multi_label``) give the plain mean of the columns' areas; a column
    without positives has area 0 and counts.
    """
    tp, fp, tn, fn = (np.asarray(stats[k], dtype=np.float64) for k in ("tp", "fp", "tn", "fn"))
    if curve == "PR" and summation_method == "interpolation":
        areas = _interpolate_pr_auc(tp, fp, fn)
    else:
        recall_ = divide_no_nan(tp, tp + fn)
        if curve == "ROC":
            x, y = divide_no_nan(fp, fp + tn), recall_
        else:
            x, y = recall_, divide_no_nan(tp, tp + fp)
        if summation_method == "interpolation":
            heights = (y[:-1] + y[1:]) / 2
        elif summation_method == "minoring":
            heights = np.minimum(y[:-1], y[1:])
        else:
            heights = np.maximum(y[:-1], y[1:])
        areas = np.sum((x[:-1] - x[1:]) * heights, axis=0)
    return np.asarray(np.mean(areas))


def _interpolate_pr_auc(tp: Floats, fp: Floats, fn: Floats) -> Floats:
    """Keras' ``interpolate_pr_auc``: PR area with TP and P interpolated linearly per interval.

    Within an interval ``[A, B]`` of predicted positives ``P = TP + FP``,
    precision is ``(TP_A + s (P - P_A)) / P`` with slope ``s = ΔTP / ΔP``;
    its integral over recall is ``s (ΔTP + c log(P_A / P_B)) / positives``
    with intercept ``c = TP_B - s P_B`` (the log term is dropped when either
    end has no predicted positive).
    """
    p = tp + fp
    dtp = tp[:-1] - tp[1:]
    dp = p[:-1] - p[1:]
    slope = divide_no_nan(dtp, np.maximum(dp, 0))
    intercept = tp[1:] - slope * p[1:]
    both = (p[:-1] > 0) & (p[1:] > 0)
    ratio = np.where(both, divide_no_nan(p[:-1], np.maximum(p[1:], 0)), 1.0)
    increments = divide_no_nan(
        slope * (dtp + intercept * np.log(ratio)), np.maximum(tp[1:] + fn[1:], 0)
    )
    areas: Floats = np.sum(increments, axis=0)
    return areas


def auc_columns_without_positives(stats: Stats) -> NDArray[np.intp]:
    """The columns of ``multi_label`` AUC counts that saw no positive label (area 0)."""
    positives = np.asarray(stats["tp"])[0] + np.asarray(stats["fn"])[0]
    empty: NDArray[np.intp] = np.flatnonzero(np.atleast_1d(positives) == 0)
    return empty


def auc_curve(
    stats: Stats, *, curve: Curve = "ROC"
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """The curve's points, one per threshold: ``(fpr, recall)`` for ROC, ``(recall, precision)``
    for PR; per-column counts give ``(T, C)`` arrays."""
    tp, fp, tn, fn = (np.asarray(stats[k], dtype=np.float64) for k in ("tp", "fp", "tn", "fn"))
    recall_ = divide_no_nan(tp, tp + fn)
    if curve == "ROC":
        return divide_no_nan(fp, fp + tn), recall_
    return recall_, divide_no_nan(tp, tp + fp)


def auc(
    y_true: Any,
    y_pred: Any,
    sample_weight: Any = None,
    *,
    num_thresholds: int = 200,
    curve: Curve = "ROC",
    summation_method: Summation = "interpolation",
    multi_label: bool = False,
    from_logits: bool = False,
) -> NDArray[np.float64]:
    """Keras' binned ``AUC`` (see :func:`auc_stats`, :func:`auc_value`).

    >>> float(auc(np.array([0, 0, 1, 1]), np.float32([0, 0.5, 0.3, 0.9]), num_thresholds=3))
    0.75

    (Thresholds ``[-1e-7, 0.5, 1 + 1e-7]``: recall ``[1, 0.5, 0]``, false
    positive rate ``[1, 0, 0]``; area ``(1 + 0.5) / 2 · (1 - 0) = 0.75``.)
    """
    stats = auc_stats(
        y_true,
        y_pred,
        sample_weight,
        num_thresholds=num_thresholds,
        multi_label=multi_label,
        from_logits=from_logits,
    )
    return auc_value(stats, curve=curve, summation_method=summation_method)


# ---- the mergeable specs -------------------------------------------------------------------

_PR_PARAMS = ("thresholds", "top_k", "class_id", "from_logits")

PRECISION = Mergeable(
    name="precision",
    stats=precision_recall_stats,
    finalize=precision_value,
    keys=("tp", "fp", "fn"),
    stats_params=_PR_PARAMS,
    finalize_params=(),
)
RECALL = Mergeable(
    name="recall",
    stats=precision_recall_stats,
    finalize=recall_value,
    keys=("tp", "fp", "fn"),
    stats_params=_PR_PARAMS,
    finalize_params=(),
)
FBETA_SCORE = Mergeable(
    name="fbeta_score",
    stats=fbeta_stats,
    finalize=fbeta_value,
    keys=("tp", "fp", "fn", "support"),
    stats_params=("threshold", "from_logits"),
    finalize_params=("average", "beta"),
)
F1_SCORE = Mergeable(
    name="f1_score",
    stats=fbeta_stats,
    finalize=fbeta_value,
    keys=("tp", "fp", "fn", "support"),
    stats_params=("threshold", "from_logits"),
    finalize_params=("average",),
)
AUC = Mergeable(
    name="auc",
    stats=auc_stats,
    finalize=auc_value,
    keys=("tp", "fp", "tn", "fn"),
    stats_params=("num_thresholds", "multi_label", "from_logits"),
    finalize_params=("curve", "summation_method"),
)

__all__ = [
    "AUC",
    "EPSILON",
    "F1_SCORE",
    "FBETA_SCORE",
    "NEG_INF",
    "PRECISION",
    "RECALL",
    "auc",
    "auc_columns_without_positives",
    "auc_curve",
    "auc_stats",
    "auc_thresholds",
    "auc_value",
    "f1_score",
    "fbeta_score",
    "fbeta_stats",
    "fbeta_value",
    "precision",
    "precision_recall_stats",
    "precision_value",
    "recall",
    "recall_value",
    "sigmoid_into",
    "top_k_mask",
]
