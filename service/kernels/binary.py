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
"""

from __future__ import annotations

import numpy as np

from service.kernels._blocks import for_each_block
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


def _bce_from_logits(y: Floats, x: Floats) -> Floats:
    # log(1 + exp(-|x|)) never overflows; max(x, 0) - x y restores the sign.
    return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def _sigmoid(x: Floats) -> Floats:
    # exp(-|x|) never overflows; the two branches give σ(x) for each sign.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


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
        y = _smoothed(y_true[rows].astype(dtype, copy=False), label_smoothing)
        x = y_pred[rows]
        per = _bce_from_logits(y, x) if from_logits else _bce_from_probabilities(y, x)
        out[rows] = per.mean(axis=1)

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
