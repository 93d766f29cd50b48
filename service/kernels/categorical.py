"""Categorical cross-entropy losses, per sample, with Keras 3's numbers.

Every function takes predictions as a 2-D ``(rows, classes)`` float array
(the caller moves the class axis last and flattens the rest) and returns one
loss per row, in the predictions' dtype. Labels come either dense, as
``(rows, classes)`` one-hot or soft targets, or as ``(rows,)`` integer class
indices; the index forms compute the same numbers as the dense form of their
one-hot labels without ever building that matrix.

Numerics, as Keras 3 (TensorFlow backend) computes them:

* probabilities are renormalized per row, then clipped to ``[ε, 1 - ε]`` with
  ``ε = 1e-7`` *in the compute dtype*, then logged;
* logits go through a max-shifted log-softmax, never ``log(softmax(x))``;
* ``sparse_categorical_crossentropy`` on probabilities clips first and then
  takes a log-softmax of ``log(p)``: ``-log(clip(p_t)) + log(Σ_j clip(p_j))``.
  It does not renormalize before clipping, so with very many classes it is
  not the same number as the categorical loss (each zero adds ε to the sum);
* label smoothing mixes the targets with the uniform distribution:
  ``y (1 - s) + s / C``, ``C`` counting the classes.

How they run (the numbers are the same, up to rounding):

* rows go by cache-sized blocks (:mod:`service.kernels._blocks`), big
  batches on all cores; each thread works in place (``out=``) in its own
  scratch buffer, and integer labels only ever gather one value per row;
* the loss at a label from logits, ``logsumexp(z) - z_t``, is
  ``log(Σ_j e^{z_j} / e^{z_t})``, without the max shift: no pass for the row
  maxima, none for ``z - max``. The quotient is ≥ 1, so its log does not
  cancel, and ``e^{z_t}`` is the very term of the sum, so that its rounding
  cancels out of a confident row's quotient. Rows where an
  exponential overflows, or ``e^{z_t}`` falls below ``√tiny`` (float32:
  ``z_t < -43``), are recomputed with the shift;
* dense targets weigh every class, and go through the shifted log-softmax
  or the clipped log-probabilities of the whole row (one-hot labels reach
  the ``*_from_indices`` kernels instead: the encodings turn them into
  indices).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from service.kernels._blocks import (
    for_each_block,
    row_dots,
    row_max,
    row_sums,
    scratch,
)
from service.kernels._math import exp_into, log_base, log_into

Floats = NDArray[np.floating]
Indices = NDArray[np.integer]

EPSILON = 1e-7


@lru_cache(maxsize=8)
def _clip_bounds(dtype: np.dtype[np.floating]) -> tuple[np.floating, np.floating]:
    eps = dtype.type(EPSILON)
    return eps, dtype.type(1) - eps


def _clip(x: Floats, lo: np.floating, hi: np.floating, out: Floats | None = None) -> Floats:
    """``np.clip(x, lo, hi, out=out)``, the same numbers (NaN stays NaN), as the two ufunc
    calls it is made of: ``np.clip``'s Python wrappers cost more than the work on a
    small batch's rows."""
    clipped: Floats = np.maximum(x, lo, out=out)
    return np.minimum(clipped, hi, out=clipped)


def _gather(matrix: Floats, labels: Indices) -> Floats:
    """``matrix[i, labels[i]]`` for every row, one value per row."""
    rows, c = matrix.shape
    if matrix.flags.c_contiguous:
        starts = (
            _row_starts(rows, c) if rows <= 1 << 14 else np.arange(0, rows * c, c, dtype=np.intp)
        )
        gathered: Floats = matrix.reshape(-1).take(np.add(starts, labels))
        return gathered
    return np.take_along_axis(matrix, labels[:, None], axis=1)[:, 0]


@lru_cache(maxsize=16)
def _row_starts(rows: int, c: int) -> NDArray[np.intp]:
    """``[0, c, 2c, ...]``: where each row of a C-contiguous ``(rows, c)`` block starts."""
    starts = np.arange(0, rows * c, c, dtype=np.intp)
    starts.flags.writeable = False
    return starts


def _shifted(z: Floats, buf: Floats) -> Floats:
    """Writes ``z - max`` (per row) into ``buf``; returns the row maxima."""
    top = row_max(z)
    np.subtract(z, top[:, None], out=buf)
    return top


def _log_sum_exp_in_place(shifted: Floats) -> Floats:
    """``log Σ exp(shifted)`` per row, exponentiating ``shifted`` in place."""
    sums = row_sums(exp_into(shifted, shifted))
    return log_into(sums, sums)


def _log_sum_exp_minus(z: Floats, labels: Indices) -> Floats:
    """``logsumexp(z) - z_t`` per row of a block of logits, ``t`` the row's label.

    Computed as ``log(Σ_j e^{z_j} / e^{z_t})``, a log of a quotient ≥ 1 (see
    the module's docstring).
    """
    dtype = z.dtype
    floor, largest = _limits(dtype)
    e = scratch(z.shape, dtype)
    with np.errstate(all="ignore"):  # overflow and underflow are caught below
        exp_into(z, e)
        sums = row_sums(e)
        e_t = _gather(e, labels)
        loss = np.log(np.divide(sums, e_t, out=sums), out=sums)
    # Valid where e^{z_t} kept its precision (≥ √tiny, so that terms lost to
    # underflow are negligible next to the sum) and nothing overflowed; else
    # shift by the max.
    if not (np.minimum.reduce(e_t) >= floor and np.maximum.reduce(loss) <= largest):
        redo = np.flatnonzero(~((e_t >= floor) & (loss <= largest)))
        block = z[redo]
        buf = np.empty_like(block)
        top = _shifted(block, buf)
        loss[redo] = _log_sum_exp_in_place(buf) - (_gather(block, labels[redo]) - top)
    return loss


@lru_cache(maxsize=8)
def _limits(dtype: np.dtype[np.floating]) -> tuple[np.floating, np.floating]:
    """``(√tiny, max)`` of ``dtype``: the range where the unshifted sums stay exact enough."""
    info = np.finfo(dtype)
    return dtype.type(np.sqrt(info.tiny)), dtype.type(info.max)


def _log_probabilities(p: Floats, buf: Floats) -> tuple[Floats, np.floating]:
    """``log(clip(p / Σp))`` per row, as Keras uses them: ``(v, f)`` with the logs ``v f``.

    ``v`` is written into ``buf``; ``f`` is a constant factor (float32 logs are
    base 2, see :func:`service.kernels._math.log_base`), for callers that sum
    the logs before scaling the sums.
    """
    lo, hi = _clip_bounds(p.dtype)
    np.divide(p, row_sums(p)[:, None], out=buf)
    _clip(buf, lo, hi, out=buf)
    return log_base(buf, buf)


def _minus_log_clipped(q: Floats, dtype: np.dtype[np.floating]) -> Floats:
    """``-log(clip(q))`` in place, for one probability per row."""
    lo, hi = _clip_bounds(dtype)
    _clip(q, lo, hi, out=q)
    return np.negative(log_into(q, q), out=q)


def categorical_crossentropy(
    y_true: Floats, y_pred: Floats, *, from_logits: bool = False, label_smoothing: float = 0.0
) -> Floats:
    """``-Σ_j y_j log p_j`` per row, for one-hot or soft ``y_true`` of ``y_pred``'s shape.

    >>> categorical_crossentropy(np.float32([[0, 1, 0]]), np.float32([[0.05, 0.95, 0]]))
    array([0.05129331], dtype=float32)
    """
    n, c = y_pred.shape
    dtype = y_pred.dtype
    out = np.empty(n, dtype=dtype)
    keep, spread = dtype.type(1 - label_smoothing), dtype.type(label_smoothing / c)

    def work(rows: slice) -> None:
        y = y_true[rows].astype(dtype, copy=False)
        z = y_pred[rows]
        if from_logits:
            # Σ_j y_j (lse - z_j) = Σy · lse_shifted - Σ_j y_j (z_j - max):
            # every term is ≥ 0, so nothing cancels.
            buf, tmp = scratch(z.shape, dtype), scratch(z.shape, dtype, slot=1)
            _shifted(z, buf)
            y_dot = row_dots(y, buf, tmp)
            total = row_sums(buf) if label_smoothing else None
            lse = _log_sum_exp_in_place(buf)
            loss: Floats = row_sums(y) * lse - y_dot
            if total is not None:
                loss = keep * loss + spread * (c * lse - total)
            out[rows] = loss
        else:
            logq, factor = _log_probabilities(z, scratch(z.shape, dtype))
            total = row_sums(logq) if label_smoothing else None
            loss_q: Floats = row_dots(y, logq, logq)
            if total is not None:
                loss_q = keep * loss_q + spread * total
            loss_q *= -factor
            out[rows] = loss_q

    for_each_block(n, c, work)
    return out


def categorical_crossentropy_from_indices(
    labels: Indices, y_pred: Floats, *, from_logits: bool = False, label_smoothing: float = 0.0
) -> Floats:
    """:func:`categorical_crossentropy` of the one-hot form of ``labels``, without building it.

    Smoothing spreads ``s / C`` over every class, so its term needs the whole
    row: ``(1 - s) (-log p_t) + (s / C) Σ_j (-log p_j)``.
    """
    n, c = y_pred.shape
    dtype = y_pred.dtype
    out = np.empty(n, dtype=dtype)
    keep, spread = dtype.type(1 - label_smoothing), dtype.type(label_smoothing / c)

    def work(rows: slice) -> None:
        t = labels[rows]
        p = y_pred[rows]
        if from_logits and not label_smoothing:
            out[rows] = _log_sum_exp_minus(p, t)
        elif from_logits:
            buf = scratch(p.shape, dtype)
            top = _shifted(p, buf)
            z_t = _gather(p, t) - top
            total = row_sums(buf)
            lse = _log_sum_exp_in_place(buf)
            out[rows] = keep * (lse - z_t) + spread * (c * lse - total)
        elif label_smoothing:
            logq, factor = _log_probabilities(p, scratch(p.shape, dtype))
            out[rows] = -factor * (keep * _gather(logq, t) + spread * row_sums(logq))
        else:
            q = _gather(p, t)
            q /= row_sums(p)
            out[rows] = _minus_log_clipped(q, dtype)

    for_each_block(n, c, work)
    return out


def sparse_categorical_crossentropy(
    labels: Indices, y_pred: Floats, *, from_logits: bool = False
) -> Floats:
    """Keras' ``sparse_categorical_crossentropy`` per row, for integer ``labels``.

    From logits: ``logsumexp(z) - z_t``. From probabilities:
    ``-log(clip(p_t)) + log(Σ_j clip(p_j))`` (clip, log, then a log-softmax).
    """
    n, c = y_pred.shape
    dtype = y_pred.dtype
    out = np.empty(n, dtype=dtype)
    lo, hi = _clip_bounds(dtype)

    def work(rows: slice) -> None:
        t = labels[rows]
        p = y_pred[rows]
        if from_logits:
            out[rows] = _log_sum_exp_minus(p, t)
            return
        q = _clip(p, lo, hi, out=scratch(p.shape, dtype))
        # log(Σ clip(p) / clip(p_t)): the quotient is ≥ 1, so its log does not cancel.
        total = row_sums(q)
        total /= _clip(_gather(p, t), lo, hi)
        out[rows] = np.log(total, out=total)

    for_each_block(n, c, work)
    return out


def _focal_probabilities(y_pred: Floats, from_logits: bool, buf: Floats) -> Floats:
    """Clipped, renormalized probabilities into ``buf``, as Keras' focal loss computes them."""
    if from_logits:
        _shifted(y_pred, buf)
        p = exp_into(buf, buf)
    else:
        p = y_pred
    lo, hi = _clip_bounds(y_pred.dtype)
    np.divide(p, row_sums(p)[:, None], out=buf)
    _clip(buf, lo, hi, out=buf)
    return buf


def categorical_focal_crossentropy(
    y_true: Floats,
    y_pred: Floats,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
) -> Floats:
    """``Σ_j α (1 - p_j)^γ (-y_j log p_j)`` per row (Lin et al., 2018), Keras' form."""
    n, c = y_pred.shape
    dtype = y_pred.dtype
    out = np.empty(n, dtype=dtype)
    a, g = dtype.type(alpha), dtype.type(gamma)
    keep, spread = dtype.type(1 - label_smoothing), dtype.type(label_smoothing / c)

    def work(rows: slice) -> None:
        y = y_true[rows].astype(dtype, copy=False)
        if label_smoothing:
            y = y * keep + spread
        q = _focal_probabilities(y_pred[rows], from_logits, scratch(y.shape, dtype))
        factor = np.subtract(1, q, out=scratch(y.shape, dtype, slot=1))
        np.power(factor, g, out=factor)
        factor *= a
        factor *= y
        logq = np.log(q, out=q)
        out[rows] = -row_dots(factor, logq, logq)

    for_each_block(n, c, work)
    return out


def categorical_focal_crossentropy_from_indices(
    labels: Indices,
    y_pred: Floats,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
) -> Floats:
    """:func:`categorical_focal_crossentropy` of the one-hot form of ``labels``."""
    n, c = y_pred.shape
    dtype = y_pred.dtype
    out = np.empty(n, dtype=dtype)
    a, g = dtype.type(alpha), dtype.type(gamma)
    keep, spread = dtype.type(1 - label_smoothing), dtype.type(label_smoothing / c)

    def work(rows: slice) -> None:
        p = y_pred[rows]
        q = _focal_probabilities(p, from_logits, scratch(p.shape, dtype))
        qt = _gather(q, labels[rows])
        loss = -(a * np.power(1 - qt, g) * np.log(qt))
        if label_smoothing:
            factor = np.subtract(1, q, out=scratch(p.shape, dtype, slot=1))
            np.power(factor, g, out=factor)
            factor *= a
            every = -row_dots(factor, np.log(q, out=q), q)
            loss = keep * loss + spread * every
        out[rows] = loss

    for_each_block(n, c, work)
    return out
