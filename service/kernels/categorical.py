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
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from service.kernels._blocks import for_each_block

Floats = NDArray[np.floating]
Indices = NDArray[np.integer]

EPSILON = 1e-7


def _clip_bounds(dtype: np.dtype[np.floating]) -> tuple[np.floating, np.floating]:
    eps = dtype.type(EPSILON)
    return eps, dtype.type(1) - eps


def _log_softmax_parts(z: Floats) -> tuple[Floats, Floats]:
    """``(z - max, log Σ exp(z - max))`` per row: log-softmax is their difference."""
    shifted = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1))
    return shifted, lse


def _log_probabilities(p: Floats) -> Floats:
    """``log(clip(p / Σp))`` per row: the log-probabilities Keras uses."""
    lo, hi = _clip_bounds(p.dtype)
    q = p / p.sum(axis=1, keepdims=True)
    np.clip(q, lo, hi, out=q)
    logq: Floats = np.log(q, out=q)
    return logq


def _gather(matrix: Floats, labels: Indices) -> Floats:
    return np.take_along_axis(matrix, labels[:, None], axis=1)[:, 0]


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
        if from_logits:
            # Σ_j y_j (lse - z_j): every term is ≥ 0, so nothing cancels.
            shifted, lse = _log_softmax_parts(y_pred[rows])
            loss = y.sum(axis=1) * lse - np.einsum("ij,ij->i", y, shifted)
            if label_smoothing:
                uniform = c * lse - shifted.sum(axis=1)
                loss = keep * loss + spread * uniform
        else:
            logq = _log_probabilities(y_pred[rows])
            loss = -np.einsum("ij,ij->i", y, logq)
            if label_smoothing:
                loss = keep * loss - spread * logq.sum(axis=1)
        out[rows] = loss

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
    lo, hi = _clip_bounds(dtype)

    def work(rows: slice) -> None:
        t = labels[rows]
        if from_logits:
            shifted, lse = _log_softmax_parts(y_pred[rows])
            loss = lse - _gather(shifted, t)
            if label_smoothing:
                loss = keep * loss + spread * (c * lse - shifted.sum(axis=1))
        elif label_smoothing:
            logq = _log_probabilities(y_pred[rows])
            loss = -(keep * _gather(logq, t)) - spread * logq.sum(axis=1)
        else:
            p = y_pred[rows]
            q = _gather(p, t) / p.sum(axis=1)
            loss = -np.log(np.clip(q, lo, hi))
        out[rows] = loss

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
        if from_logits:
            shifted, lse = _log_softmax_parts(y_pred[rows])
            out[rows] = lse - _gather(shifted, t)
        else:
            q = np.clip(y_pred[rows], lo, hi)
            out[rows] = np.log(q.sum(axis=1)) - np.log(_gather(q, t))

    for_each_block(n, c, work)
    return out


def _focal_probabilities(y_pred: Floats, from_logits: bool) -> Floats:
    """Clipped, renormalized probabilities, as Keras' focal loss computes them."""
    if from_logits:
        shifted, lse = _log_softmax_parts(y_pred)
        p = np.exp(shifted - lse[:, None])
    else:
        p = y_pred
    lo, hi = _clip_bounds(y_pred.dtype)
    q: Floats = p / p.sum(axis=1, keepdims=True)
    np.clip(q, lo, hi, out=q)
    return q


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
        q = _focal_probabilities(y_pred[rows], from_logits)
        factor = a * np.power(1 - q, g)
        out[rows] = -np.einsum("ij,ij->i", y * factor, np.log(q))

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
        q = _focal_probabilities(y_pred[rows], from_logits)
        qt = _gather(q, labels[rows])
        loss = -(a * np.power(1 - qt, g) * np.log(qt))
        if label_smoothing:
            every = -np.einsum("ij,ij->i", a * np.power(1 - q, g), np.log(q))
            loss = keep * loss + spread * every
        out[rows] = loss

    for_each_block(n, c, work)
    return out
