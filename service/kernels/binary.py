"""Binary cross-entropy losses, per sample, with Keras 3's numbers.

Inputs are 2-D ``(rows, k)``: ``k`` independent binary targets per row (one
for a single sigmoid output, several for multi-label). Each function returns
the mean over the ``k`` targets, one value per row, as Keras averages binary
losses over their last axis.

Numerics, as Keras 3 (TensorFlow backend) computes them:

* probabilities are clipped to ``[ε, 1 - ε]`` (``ε = 1e-7``, in the compute
  dtype), then ``-(y log p + (1 - y) log(1 - p))``;
* logits use the stable form ``max(x, 0) - x y + log1p(exp(-|x|))``;
* label smoothing squeezes targets toward one half: ``y (1 - s) + s / 2``;
* the focal loss applies a sigmoid to logits first, then uses the clipped
  probability loss above, as Keras does.

How :func:`binary_crossentropy` runs: by row blocks on all cores (see
:mod:`service.kernels._blocks`), each element's loss formed in place in two
per-thread scratch buffers, then summed per row (``log(1 + e^-|x|)`` stays
``log1p``, exact for tiny ``e^-|x|``). From probabilities, the sums
``Σ y log q`` and ``Σ (1 - y) log(1 - q)`` are taken apart, each a sum of
terms of one sign, and float32 logs are base 2 (scaled once per row).
"""

from __future__ import annotations

import numpy as np

from service.kernels._blocks import for_each_block, row_dots, row_sums, scratch
from service.kernels._math import exp_into, log_base
from service.kernels.categorical import EPSILON, Floats


def _smoothed(y: Floats, label_smoothing: float) -> Floats:
    if not label_smoothing:
        return y
    dtype = y.dtype
    return y * dtype.type(1 - label_smoothing) + dtype.type(0.5 * label_smoothing)


def _bce_from_probabilities(y: Floats, p: Floats) -> Floats:
    eps = p.dtype.type(EPSILON)
    q = np.clip(p, eps, p.dtype.type(1) - eps)
    return -(y * np.log(q) + (1 - y) * np.log(1 - q))


def _sigmoid(x: Floats) -> Floats:
    # exp(-|x|) never overflows; the two branches give σ(x) for each sign.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _bce_logits_sums(y: Floats, x: Floats, s: float, buf: Floats, tmp: Floats) -> Floats:
    """Σ_j [max(x, 0) - x y' + log1p(e^-|x|)] per row, ``y' = y (1 - s) + s / 2``.

    ``max(x, 0) - x y'`` comes first, per element: for a confident right
    answer it is exactly 0, and the small ``log1p`` term is then added
    without being rounded away against a large ``x``.
    """
    dtype = x.dtype
    loss = np.clip(x, dtype.type(0), dtype.type(np.inf), out=buf)  # max(x, 0)
    if s:
        np.multiply(y, dtype.type(1 - s), out=tmp)
        tmp += dtype.type(s / 2)
        tmp *= x
    else:
        np.multiply(x, y, out=tmp)
    loss -= tmp
    e = exp_into(np.abs(x, out=tmp), tmp, scale=-1.0)  # e^-|x|, never overflows
    loss += np.log1p(e, out=e)
    return row_sums(loss)


def _bce_probabilities_sums(y: Floats, p: Floats, s: float, buf: Floats, tmp: Floats) -> Floats:
    """Σ_j -[y' log q + (1 - y') log(1 - q)] per row, ``q = clip(p)``, ``y' = y (1 - s) + s / 2``.

    The two parts are sums of terms of one sign (logs ≤ 0 times weights ≥ 0),
    added up separately: nothing cancels. Smoothing mixes them with positive
    weights: ``Σ y' log q = (1 - s) Σ y log q + (s / 2) Σ log q``.
    """
    dtype = p.dtype
    eps = dtype.type(EPSILON)
    q = np.clip(p, eps, dtype.type(1) - eps, out=buf)
    log_r, factor = log_base(np.subtract(dtype.type(1), q, out=tmp), tmp)  # log(1 - q)
    log_q, _ = log_base(q, q)
    every_q = row_sums(log_q) if s else None
    every_r = row_sums(log_r) if s else None
    positive = row_dots(y, log_q, log_q)  # Σ y log q; spends log_q (buf)
    negative = row_dots(np.subtract(dtype.type(1), y, out=buf), log_r, log_r)
    if every_q is not None and every_r is not None:
        keep, half = dtype.type(1 - s), dtype.type(s / 2)
        positive = keep * positive + half * every_q
        negative = keep * negative + half * every_r
    total: Floats = positive + negative
    total *= -factor  # base-2 logs (float32) back to natural ones
    return total


def binary_crossentropy(
    y_true: Floats, y_pred: Floats, *, from_logits: bool = False, label_smoothing: float = 0.0
) -> Floats:
    """Mean binary cross-entropy over each row's targets.

    >>> binary_crossentropy(np.float32([[0, 1]]), np.float32([[0.4, 0.6]]))
    array([0.5108256], dtype=float32)
    """
    n, k = y_pred.shape
    dtype = y_pred.dtype
    out = np.empty(n, dtype=dtype)

    def work(rows: slice) -> None:
        y = y_true[rows].astype(dtype, copy=False)
        x = y_pred[rows]
        buf, tmp = scratch(x.shape, dtype), scratch(x.shape, dtype, slot=1)
        if from_logits:
            sums = _bce_logits_sums(y, x, label_smoothing, buf, tmp)
        else:
            sums = _bce_probabilities_sums(y, x, label_smoothing, buf, tmp)
        out[rows] = np.divide(sums, dtype.type(k), out=sums)

    for_each_block(n, k, work)
    return out


def binary_focal_crossentropy(
    y_true: Floats,
    y_pred: Floats,
    *,
    apply_class_balancing: bool = False,
    alpha: float = 0.25,
    gamma: float = 2.0,
    from_logits: bool = False,
    label_smoothing: float = 0.0,
) -> Floats:
    """Mean focal binary cross-entropy over each row's targets (Lin et al., 2018).

    ``(1 - p_t)^γ · bce``, with ``p_t = y p + (1 - y)(1 - p)``; with class
    balancing, positives weigh ``α`` and negatives ``1 - α``.
    """
    n, k = y_pred.shape
    dtype = y_pred.dtype
    out = np.empty(n, dtype=dtype)
    a, g = dtype.type(alpha), dtype.type(gamma)

    def work(rows: slice) -> None:
        y = _smoothed(y_true[rows].astype(dtype, copy=False), label_smoothing)
        p = _sigmoid(y_pred[rows]) if from_logits else y_pred[rows]
        p_t = y * p + (1 - y) * (1 - p)
        focal = np.power(1 - p_t, g) * _bce_from_probabilities(y, p)
        if apply_class_balancing:
            focal *= y * a + (1 - y) * (1 - a)
        out[rows] = focal.mean(axis=1)

    for_each_block(n, k, work)
    return out
