"""Calibration: expected calibration error (torchmetrics' numbers) and the Brier score
(scikit-learn's), as mergeable statistics, and the ``calibration`` report.

Labels and statistics follow :mod:`service.kernels.stats`: single-label
batches come as integer indices, binary and multi-label ones as dense 0/1
targets, and every ``*_stats`` result adds up across batches.

Expected calibration error, as torchmetrics' ``MulticlassCalibrationError``
(single-label) and ``BinaryCalibrationError`` (binary and multi-label, every
element on its own):

* confidence: the row's top probability, and correct: its first argmax is
  the label (single-label); or each probability ``p`` itself, and its label
  as the accuracy (binary, multi-label: ``p``, not ``max(p, 1 - p)``);
* bin ``k < n`` holds confidences in ``[k/n, (k+1)/n)``, the edges as
  torchmetrics makes them (``torch.linspace`` in ``y_pred``'s dtype, see
  :func:`bin_edges`) and compared in it; a confidence of exactly 1 forms
  bin ``n``, after the others (torchmetrics' ``bucketize(right=True) - 1``);
* with ``count_k`` the (weighted) count of bin ``k``, ``N = Σ count_k`` and
  ``gap_k = |accuracy_k - confidence_k|`` (bin means; an empty bin has gap 0):
  ``l1 = Σ_k (count_k / N) gap_k``, ``max = max_k gap_k``,
  ``l2 = sqrt(Σ_k (count_k / N) gap_k²)``.

Brier score, as scikit-learn's ``brier_score_loss``: binary, the weighted
mean of ``(y - p)²``; single-label with ``C ≥ 3`` classes, the weighted mean
over rows of ``Σ_c (onehot_c - p_c)²`` (range ``[0, 2]``); with exactly two
columns that sum halved (scikit-learn's ``scale_by_half="auto"``);
multi-label, the mean of ``(y - p)²`` over every element (each row's
elements weighing its weight). Rows are not renormalized.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from typing import Any, Literal, cast

import numpy as np
from numpy.typing import NDArray

from service.kernels._blocks import for_each_block, row_sums, scratch
from service.kernels._math import exp_into
from service.kernels.classification import sigmoid_into
from service.kernels.stats import (
    Floats,
    Mergeable,
    Rows,
    Stats,
    add_in_row_order,
    as_rows,
    divide_no_nan,
    total,
    weighted_bincount,
)

Norm = Literal["l1", "l2", "max"]


@lru_cache(maxsize=32)
def bin_edges(n_bins: int, dtype: np.dtype[Any]) -> Floats:
    """torchmetrics' edges, ``torch.linspace(0, 1, n + 1)`` in ``dtype``, then ``+inf``: bin
    ``k`` is ``[e_k, e_{k+1})``.

    PyTorch's CPU kernel takes ``s = 1 / n`` in the dtype and gives edge ``k`` as ``k s``
    below the middle (``k < (n + 1) // 2``), ``1 - (n - k) s`` from it, each rounded
    once to the dtype (its builds for current x86 processors fuse the multiply and the
    add): not always ``k / n`` rounded (``n = 20``: edge 9 is float32's 0.45000002, not
    0.45, so a float32 confidence of 0.45 falls in bin 8). The last edge is exactly 1: a
    confidence of 1 falls in bin ``n``.
    """
    n, half = n_bins, (n_bins + 1) // 2
    if dtype.itemsize <= 4:
        # s has 24 significant bits and n - k at most 14: in float64, k s and 1 - (n - k) s
        # are exact, and one rounding to the dtype is PyTorch's.
        step = float(dtype.type(1) / dtype.type(n))
        k = np.arange(n + 1, dtype=np.float64)
        values = np.where(k < half, k * step, 1.0 - (n - k) * step)
    else:
        # Exact in rationals, then rounded once.
        s = Fraction(1.0 / n)
        values = np.array([float(k * s if k < half else 1 - (n - k) * s) for k in range(n + 1)])
    edges = np.append(values.astype(dtype), dtype.type(np.inf))
    edges.flags.writeable = False
    return edges


def _bin_index(v: Floats, edges: Floats) -> NDArray[np.intp]:
    """The bin of each value (``0 ≤ v ≤ 1``): the count of edges ``≤ v``, minus one.

    ``floor(v n)`` is the bin unless an edge lies within the rounding of
    ``v n``: values whose ``floor(v n (1 ∓ 2⁻²⁰))`` differ (an edge is that
    close, far wider than the edges' own rounding to the dtype, 2⁻²⁴) are
    placed by comparing them with the edges themselves.
    """
    n = edges.size - 2
    t = np.multiply(v, v.dtype.type(n))
    below = np.floor(t * v.dtype.type(1 - 2.0**-20))
    above = np.floor(np.multiply(t, v.dtype.type(1 + 2.0**-20), out=t), out=t)
    index = above.astype(np.intp)
    near = np.flatnonzero(below != above)
    index[near] = np.searchsorted(edges, v[near], side="right") - 1
    np.clip(index, 0, n, out=index)
    return index


def _softmax_rows(x: Floats, out: Floats) -> Floats:
    """``softmax(x)`` per row into ``out``, shifted by each row's maximum."""
    np.subtract(x, x.max(axis=1, keepdims=True), out=out)
    exp_into(out, out)
    out /= row_sums(out)[:, None]
    return out


# ---- expected calibration error -----------------------------------------------------------


def ece_stats(
    y_true: Any,
    y_pred: Any,
    sample_weight: Any = None,
    *,
    n_bins: int = 15,
    from_logits: bool = False,
) -> Stats:
    """Per bin: weighted ``count``, ``confidence`` sum and ``accuracy`` sum.

    Args:
      y_true: ``(rows,)`` class indices (single-label), or 0/1 targets of
        ``y_pred``'s shape (binary, multi-label).
      y_pred: ``(rows, C)`` probabilities, or ``(rows,)`` binary ones.
      sample_weight: ``(rows,)`` or None; counts become sums of weights.
      n_bins: the bins of ``[0, 1)``; one more bin holds confidences of exactly 1.
      from_logits: softmax (single-label) or sigmoid (the others) first.

    Returns:
      ``{"count", "confidence", "accuracy"}``, each ``(n_bins + 1,)``.
    """
    rows = as_rows(y_true, y_pred, sample_weight)
    if rows.labels is not None:
        return _ece_single_label(rows, n_bins, from_logits)
    return _ece_elements(rows, n_bins, from_logits)


def _ece_single_label(rows: Rows, n_bins: int, from_logits: bool) -> Stats:
    """Top-1 confidence and correctness per row, then bins of those ``n`` values."""
    n, c = rows.n_rows, rows.n_classes
    labels = rows.labels
    assert labels is not None
    confidence = np.empty(n, dtype=rows.pred.dtype)
    correct = np.empty(n, dtype=bool)

    def work(sl: slice) -> None:
        x = rows.pred[sl]
        first = np.argmax(x, axis=1)
        top = np.take_along_axis(x, first[:, None], axis=1)[:, 0]
        if from_logits:
            # The top softmax probability is e^0 / Σ_j e^{z_j - max}: the row's maximum is z_first.
            e = np.subtract(x, top[:, None], out=scratch(x.shape, x.dtype))
            top = np.reciprocal(row_sums(exp_into(e, e)))
        confidence[sl] = top
        correct[sl] = first == labels[sl]

    for_each_block(n, c, work)
    index = _bin_index(confidence, bin_edges(n_bins, confidence.dtype))
    w = rows.weight
    weights = confidence.astype(np.float64) if w is None else w * confidence
    return {
        "count": weighted_bincount(index, w, n_bins + 1),
        "confidence": np.bincount(index, weights=weights, minlength=n_bins + 1),
        "accuracy": weighted_bincount(
            index[correct], None if w is None else w[correct], n_bins + 1
        ),
    }


def _ece_elements(rows: Rows, n_bins: int, from_logits: bool) -> Stats:
    """Every element is its own confidence, its target its accuracy.

    Blocks where most elements fall in bin 0 (below ``1 / n``: the bulk of
    multi-label outputs) bin only the others; bin 0 then takes the rest as
    per-row sums.
    """
    n, c = rows.n_rows, rows.n_classes
    dense = rows.dense
    assert dense is not None
    parts: dict[int, NDArray[np.float64]] = {}
    width = n_bins + 1

    def work(sl: slice) -> None:
        x = rows.pred[sl]
        if from_logits:
            x = sigmoid_into(x, scratch(x.shape, x.dtype))
        r = x.shape[0]
        w = None if rows.weight is None else rows.weight[sl]
        y = dense[sl]
        edges = bin_edges(n_bins, x.dtype)
        high = cast("NDArray[np.bool_]", scratch(x.shape, np.dtype(bool), slot=2))
        np.greater_equal(x, edges[1], out=high)
        n_high = int(np.count_nonzero(high))
        if 4 * n_high > x.size:
            index = _bin_index(x.reshape(-1), edges)
            flat_w = None if w is None else np.repeat(w, c)
            values = x.reshape(-1).astype(np.float64)
            targets = y.reshape(-1).astype(np.float64)
            if flat_w is not None:
                values *= flat_w
                targets *= flat_w
            parts[sl.start] = np.stack(
                [
                    np.bincount(index, weights=flat_w, minlength=width).astype(np.float64),
                    np.bincount(index, weights=values, minlength=width),
                    np.bincount(index, weights=targets, minlength=width),
                ]
            )
            return
        where = np.flatnonzero(high.reshape(-1))
        row_of = where // c
        v = x.reshape(-1)[where]
        t = y.reshape(-1)[where].astype(np.float64)
        vw = v.astype(np.float64)
        wsel = None if w is None else w[row_of]
        if wsel is not None:
            vw *= wsel
            t *= wsel
        index = _bin_index(v, edges)
        part = np.stack(
            [
                weighted_bincount(index, wsel, width).astype(np.float64),
                weighted_bincount(index, vw, width),
                weighted_bincount(index, t, width),
            ]
        )
        # Bin 0: each row's elements below the first edge, summed per row.
        low_count = c - np.bincount(row_of, minlength=r)
        below = np.logical_not(high, out=high)
        low = np.multiply(x, below, out=scratch(x.shape, x.dtype, slot=1))
        # Summed in float64, as the other bins' sums: the bins do not depend on the path.
        low_conf = np.einsum("ij->i", low, dtype=np.float64)
        # Targets are 0/1: their float32 row sums are exact.
        y_rows = row_sums(y) if y.dtype.kind == "f" else np.add.reduce(y, axis=1, dtype=np.float64)
        low_acc = y_rows - np.bincount(row_of, weights=y.reshape(-1)[where], minlength=r)
        ones = np.ones(r) if w is None else w
        part[0, 0] += ones @ low_count
        part[1, 0] += ones @ low_conf
        part[2, 0] += ones @ low_acc
        parts[sl.start] = part

    for_each_block(n, c, work)
    sums = add_in_row_order(parts)
    count: NDArray[Any] = sums[0] if rows.weight is not None else sums[0].astype(np.int64)
    return {"count": count, "confidence": sums[1], "accuracy": sums[2]}


def _bin_means(
    stats: Stats,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``(proportion, mean confidence, mean accuracy)`` per bin; empty bins have means 0."""
    count = np.asarray(stats["count"], dtype=np.float64)
    n = count.sum()
    share = count / n if n > 0 else np.zeros_like(count)
    return share, divide_no_nan(stats["confidence"], count), divide_no_nan(stats["accuracy"], count)


def ece_value(stats: Stats, *, norm: Norm = "l1") -> NDArray[np.float64]:
    """The calibration error from the bins' sums (see the module docstring for the norms)."""
    share, confidence, accuracy = _bin_means(stats)
    gap = np.abs(accuracy - confidence)
    if norm == "l1":
        return np.asarray(np.dot(share, gap))
    if norm == "max":
        return np.asarray(gap.max())
    return np.asarray(np.sqrt(np.dot(share, gap * gap)))


def expected_calibration_error(
    y_true: Any,
    y_pred: Any,
    sample_weight: Any = None,
    *,
    n_bins: int = 15,
    norm: Norm = "l1",
    from_logits: bool = False,
) -> NDArray[np.float64]:
    """torchmetrics' calibration error (see :func:`ece_stats`, :func:`ece_value`).

    >>> y_pred = np.float32([[0.9, 0.1], [0.7, 0.3]])
    >>> round(float(expected_calibration_error(np.array([0, 1]), y_pred)), 6)
    0.4

    (Row 0: confidence 0.9 in bin 13, right, gap ``|1 - 0.9| = 0.1``; row 1:
    confidence 0.7 in bin 10, wrong, gap ``|0 - 0.7| = 0.7``; each bin holds
    half the rows: ``(0.1 + 0.7) / 2 = 0.4``.)
    """
    stats = ece_stats(y_true, y_pred, sample_weight, n_bins=n_bins, from_logits=from_logits)
    return ece_value(stats, norm=norm)


# ---- Brier score --------------------------------------------------------------------------


def brier_stats(
    y_true: Any, y_pred: Any, sample_weight: Any = None, *, from_logits: bool = False
) -> Stats:
    """``brier_sum`` (``Σ w_i s_i``, ``s_i`` the row's score) and ``brier_weight`` (``Σ w_i``).

    ``s_i``: binary ``(y - p)²``; single-label ``Σ_{c≠t} p_c² + (1 - p_t)²``
    (halved for two columns); multi-label ``Σ_c (y_c - p_c)² / C``.
    """
    rows = as_rows(y_true, y_pred, sample_weight)
    n, c = rows.n_rows, rows.n_classes
    scores = np.empty(n, dtype=np.float64)

    def work(sl: slice) -> None:
        x = rows.pred[sl]
        if from_logits:
            buf = scratch(x.shape, x.dtype)
            x = _softmax_rows(x, buf) if rows.labels is not None else sigmoid_into(x, buf)
        if rows.labels is not None:
            positions = np.arange(0, x.shape[0] * c, c, dtype=np.intp) + rows.labels[sl]
            p_t = x.reshape(-1)[positions].astype(np.float64)
            # Σ_{c≠t} p_c² as a sum of non-negative float32 terms (no cancellation),
            # then the label's term (1 - p_t)² in float64.
            sq = np.multiply(x, x, out=scratch(x.shape, x.dtype, slot=1))
            sq.reshape(-1)[positions] = 0
            s = row_sums(sq).astype(np.float64) + (1 - p_t) ** 2
            scores[sl] = s / 2 if c == 2 else s
        else:
            assert rows.dense is not None
            diff = rows.dense[sl].astype(np.float64) - x
            scores[sl] = np.einsum("ij,ij->i", diff, diff) / c

    for_each_block(n, c, work)
    w = rows.weight
    brier_sum = np.add.reduce(scores) if w is None else np.dot(w, scores)
    return {"brier_sum": np.asarray(brier_sum, dtype=np.float64), "brier_weight": total(w, n)}


def brier_value(stats: Stats) -> NDArray[np.float64]:
    """``brier_sum / brier_weight`` (0 when nothing weighs anything)."""
    return divide_no_nan(stats["brier_sum"], stats["brier_weight"])


def brier_score(
    y_true: Any, y_pred: Any, sample_weight: Any = None, *, from_logits: bool = False
) -> NDArray[np.float64]:
    """scikit-learn's ``brier_score_loss`` (see the module docstring for the families).

    >>> float(brier_score(np.array([0, 1]), np.float32([0.25, 0.5])))  # (0.0625 + 0.25) / 2
    0.15625
    """
    return brier_value(brier_stats(y_true, y_pred, sample_weight, from_logits=from_logits))


# ---- the calibration report --------------------------------------------------------------


def calibration_stats(
    y_true: Any,
    y_pred: Any,
    sample_weight: Any = None,
    *,
    n_bins: int = 15,
    from_logits: bool = False,
) -> Stats:
    """:func:`ece_stats` and :func:`brier_stats` of one batch, in one dict."""
    return {
        **ece_stats(y_true, y_pred, sample_weight, n_bins=n_bins, from_logits=from_logits),
        **brier_stats(y_true, y_pred, sample_weight, from_logits=from_logits),
    }


def calibration_report(stats: Stats) -> dict[str, Any]:
    """The ``calibration`` report: the bins, ``ece`` (l1), ``mce`` (max) and ``brier``.

    ``bins`` holds the ``n_bins`` bins ``[k/n, (k+1)/n)``, then the bin of
    confidences equal to 1 when it is not empty; each with its ``count``
    (int, or a sum of weights) and mean ``confidence`` and ``accuracy``
    (None for an empty bin).
    """
    count = np.asarray(stats["count"])
    n_bins = count.size - 1
    _, confidence, accuracy = _bin_means(stats)
    bins = []
    for k in range(n_bins + 1):
        if k == n_bins and count[k] == 0:
            break
        filled = bool(count[k] > 0)
        bins.append(
            {
                "lower": k / n_bins if k < n_bins else 1.0,
                "upper": (k + 1) / n_bins if k < n_bins else 1.0,
                "count": count[k].item(),
                "confidence": float(confidence[k]) if filled else None,
                "accuracy": float(accuracy[k]) if filled else None,
            }
        )
    return {
        "n_bins": n_bins,
        "bins": bins,
        "ece": float(ece_value(stats, norm="l1")),
        "mce": float(ece_value(stats, norm="max")),
        "brier": float(brier_value(stats)),
    }


EXPECTED_CALIBRATION_ERROR = Mergeable(
    name="expected_calibration_error",
    stats=ece_stats,
    finalize=ece_value,
    keys=("count", "confidence", "accuracy"),
    stats_params=("n_bins", "from_logits"),
    finalize_params=("norm",),
)
BRIER_SCORE = Mergeable(
    name="brier_score",
    stats=brier_stats,
    finalize=brier_value,
    keys=("brier_sum", "brier_weight"),
    stats_params=("from_logits",),
    finalize_params=(),
)
CALIBRATION = Mergeable(
    name="calibration",
    stats=calibration_stats,
    finalize=calibration_report,
    keys=("count", "confidence", "accuracy", "brier_sum", "brier_weight"),
    stats_params=("n_bins", "from_logits"),
    finalize_params=(),
    kind="report",
)

__all__ = [
    "BRIER_SCORE",
    "CALIBRATION",
    "EXPECTED_CALIBRATION_ERROR",
    "bin_edges",
    "brier_score",
    "brier_stats",
    "brier_value",
    "calibration_report",
    "calibration_stats",
    "ece_stats",
    "ece_value",
    "expected_calibration_error",
]
