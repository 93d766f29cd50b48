"""Label encodings: detect them, check them, convert them. The batch is validated here, once.

The encoding of ``y_true`` is decided by its shape against ``y_pred`` first,
then by its values (the names are fixed; see the README):

``sparse``
    ``y_true`` has one dimension less than ``y_pred`` (or a class axis of
    size 1 where ``y_pred``'s is ``C > 1``): integer class indices in ``[0, C)``.
``binary``
    ``y_pred``'s class axis has size 1, or both are 1-D of one length: targets in ``[0, 1]``.
``one_hot``
    same shape, ``C > 1``, every row a single 1 and zeros elsewhere.
``multi_hot``
    same shape, 0/1 values, any other count of ones per row (all-zero rows included).
``soft``
    same shape, values in ``[0, 1]`` that are not all 0 or 1.

:func:`prepare` checks, in this order, and raises :class:`InvalidInput` at
the first problem: empty arrays; non-finite values; the class axis; shapes;
label values for the detected encoding; a stated encoding against the
values; ``sample_weight``. Whether the batch then fits one loss, metric or
report is decided by :func:`service.registry.check_fits`, from the spec's
properties; it calls the two checks of this module that need a parameter of
the spec (:func:`check_label_range` with ``ignore_class``, and
:func:`check_probabilities` with ``from_logits``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from service.errors import InvalidInput, invalid

Encoding = Literal["sparse", "binary", "one_hot", "multi_hot", "soft"]
ENCODINGS: tuple[Encoding, ...] = ("sparse", "binary", "one_hot", "multi_hot", "soft")
DENSE: frozenset[Encoding] = frozenset({"one_hot", "multi_hot", "soft"})
ComputeDtype = Literal["float32", "float64"]

Floats = NDArray[np.floating]
Indices = NDArray[np.int64]


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _first(mask: NDArray[np.bool_]) -> tuple[int, ...]:
    """Index of the first True in ``mask`` (which has at least one)."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def _at(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]"


@dataclass
class Batch:
    """A validated batch, classes on the last axis and samples flattened to rows.

    ``y_pred`` is ``(rows, classes)`` in the compute dtype; for sparse labels
    ``labels`` holds ``(rows,)`` integer indices and ``dense`` is None; for the
    other encodings ``dense`` holds ``(rows, classes)`` targets (one-hot labels
    also get their ``labels``, so the sparse loss and metrics can use them): float
    targets in the compute dtype, integer and boolean ones as they came.
    Per-sample results have ``sample_shape`` (``y_pred``'s shape without its
    class axis); ``sample_weight`` already broadcasts to it.
    """

    encoding: Encoding
    y_pred: Floats
    labels: Indices | None
    dense: Floats | None
    sample_shape: tuple[int, ...]
    n_classes: int
    sample_weight: Floats | None
    stated: bool = False
    _row_sums: Floats | None = field(default=None, repr=False)

    @property
    def n_samples(self) -> int:
        return self.sample_shape[0] if self.sample_shape else 1

    @property
    def n_rows(self) -> int:
        return int(self.y_pred.shape[0])

    def row_sums(self) -> Floats:
        """Each row's sum of predictions (computed once, used by several checks)."""
        if self._row_sums is None:
            self._row_sums = self.y_pred.sum(axis=1, dtype=np.float64)
        return self._row_sums

    def reshape(self, per_row: NDArray[Any]) -> NDArray[Any]:
        """Per-row results back to ``sample_shape``."""
        return per_row.reshape(self.sample_shape)


def _check_not_empty(name: str, a: NDArray[Any]) -> None:
    if a.size == 0:
        raise invalid(
            (name,),
            f"`{name}` is empty: expected at least one sample, received shape {_shape(a.shape)}.",
        )


def _check_finite(name: str, a: NDArray[Any]) -> None:
    if a.dtype.kind != "f":
        return
    # Any NaN or infinity makes the sum non-finite: one reduction (no temporary, no
    # ndarray.any wrapper) for the usual finite batch; the exact search only when it is not
    # (a finite sum can overflow: then the search finds nothing and nothing is raised).
    with np.errstate(over="ignore"):  # finite values whose sum overflows: searched below
        total = np.add.reduce(a, axis=None)
    if math.isfinite(total):
        return
    bad = ~np.isfinite(a)
    if bad.any():
        where = _first(bad)
        raise invalid(
            (name, *where),
            f"`{name}` has {int(bad.sum())} non-finite value(s) (NaN or infinity), the first "
            f"{a[where].item()!r} at index {_at(where)}: expected finite numbers.",
        )


def _check_fits_dtype(y_pred: NDArray[Any], rows: Floats, ax: int) -> None:
    """Finite predictions that overflow the computation's dtype (1e308 in float32) are
    refused, not computed as infinities."""
    with np.errstate(over="ignore"):  # finite values whose sum overflows: searched below
        total = np.add.reduce(rows, axis=None)
    if math.isfinite(total):
        return
    bad = ~np.isfinite(rows)
    if bad.any():
        flat = int(np.flatnonzero(bad.reshape(-1))[0])
        moved = np.moveaxis(y_pred, ax, -1)
        where = np.unravel_index(flat, moved.shape)
        # Back to the caller's axis order for the index shown.
        index = list(where)
        index.insert(ax % y_pred.ndim, index.pop())
        info = np.finfo(rows.dtype)
        raise invalid(
            ("y_pred", *(int(i) for i in index)),
            f"`y_pred` has {int(bad.sum())} value(s) outside {rows.dtype}'s range "
            f"(±{float(info.max):.4g}), the first {moved[where].item()!r} at index "
            f"{_at(tuple(int(i) for i in index))}: expected values that fit in {rows.dtype}, "
            'or `dtype: "float64"` to compute in float64.',
        )


def _check_weights_fit(sample_weight: NDArray[Any], dtype: np.dtype[Any]) -> None:
    """Weights are applied in the computation's dtype: ones beyond its range are refused."""
    info = np.finfo(dtype)
    bad = np.abs(sample_weight) > info.max
    if bad.any():
        where = _first(bad)
        raise invalid(
            ("sample_weight", *where),
            f"`sample_weight` has {int(bad.sum())} value(s) outside {dtype}'s range "
            f"(±{float(info.max):.4g}), the first {sample_weight[where].item()!r} at index "
            f'{_at(where)}: expected smaller weights, or `dtype: "float64"`.',
        )


def _normalize_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise invalid(
            ("axis",),
            f"`axis` is out of range: expected an integer in [{-ndim}, {ndim - 1}] for `y_pred` "
            f"with {ndim} dimension(s), received axis={axis}.",
        )
    return axis % ndim


def _shape_error(y_true: NDArray[Any], y_pred: NDArray[Any], ax: int) -> InvalidInput:
    if y_pred.ndim == 1:
        # One prediction a sample (binary), not one sample's class scores.
        return invalid(
            ("y_true",),
            f"`y_true` does not match `y_pred`: a 1-D `y_pred` holds one binary prediction "
            f"a sample, so expected shape {_shape(y_pred.shape)} (a 0/1 target a sample), "
            f"received {_shape(y_true.shape)}.",
        )
    without = y_pred.shape[:ax] + y_pred.shape[ax + 1 :]
    return invalid(
        ("y_true",),
        f"`y_true` does not match `y_pred`: expected shape {_shape(y_pred.shape)} (one-hot, "
        f"multi-hot, soft or binary targets) or {_shape(without)} (integer class indices) "
        f"for `y_pred` of shape {_shape(y_pred.shape)} with classes on axis {ax}, received "
        f"{_shape(y_true.shape)}.",
    )


def _shape_class(
    y_true: NDArray[Any], y_pred: NDArray[Any], ax: int
) -> tuple[Literal["sparse", "binary", "dense"], NDArray[Any]]:
    """Which family the shapes say, with ``y_true`` reshaped to match it."""
    pred, true = y_pred.shape, y_true.shape
    without = pred[:ax] + pred[ax + 1 :]
    kept = (*pred[:ax], 1, *pred[ax + 1 :])
    if pred[ax] == 1 or y_pred.ndim == 1:
        if y_pred.ndim == 1 and true in (pred, (*pred, 1)):
            return "binary", y_true.reshape(pred)
        if true == pred:
            return "binary", y_true
        if true == without:
            return "binary", y_true.reshape(pred)
        raise _shape_error(y_true, y_pred, ax)
    if true == without:
        return "sparse", y_true
    if true == kept:
        return "sparse", y_true.reshape(without)
    if true == pred:
        return "dense", y_true
    raise _shape_error(y_true, y_pred, ax)


def _check_unit_interval(y: NDArray[Any], what: str) -> None:
    bad = (y < 0) | (y > 1)
    if bad.any():
        where = _first(bad)
        hint = ""
        if y.dtype.kind in "iub" or np.all(y == np.floor(y)):
            hint = (
                " Integer class indices go in `y_true` with one dimension less than `y_pred`"
                " (shape (n,) for `y_pred` of shape (n, C))."
            )
        raise invalid(
            ("y_true", *where),
            f"`y_true` holds {what}, which must lie in [0, 1]: received {y[where].item()!r} at "
            f"index {_at(where)}.{hint}",
        )


def _dense_encoding(d: Floats) -> Encoding:
    """one_hot, multi_hot or soft, from the values of ``(rows, C)`` targets in [0, 1]."""
    binary_valued = bool(np.all((d == 0) | (d == 1)))
    if not binary_valued:
        return "soft"
    return "one_hot" if bool(np.all(d.sum(axis=1) == 1)) else "multi_hot"


def _check_integer_labels(y: NDArray[Any], n_classes: int) -> Indices:
    if y.dtype.kind == "f":
        bad = y != np.floor(y)
        if bad.any():
            where = _first(bad)
            raise invalid(
                ("y_true", *where),
                f"`y_true` has one dimension less than `y_pred`, so it holds integer class "
                f"indices: received {y[where].item()!r} at index {_at(where)}. Soft targets go in "
                "`y_true` of `y_pred`'s shape.",
            )
        # beyond int64, the cast below would wrap (and warn): such labels are out of range anyway
        huge = np.abs(y) >= 2.0**62
        if huge.any():
            where = _first(huge)
            raise invalid(
                ("y_true", *where),
                f"`y_true` has a label outside the classes of `y_pred`: expected integers in "
                f"[0, {n_classes - 1}], received {y[where].item()!r} at index {_at(where)}.",
            )
    return y.astype(np.int64, copy=False).reshape(-1)


def _check_stated(
    stated: Encoding, detected: Encoding, dense: Floats | None, sample_shape: tuple[int, ...]
) -> Encoding:
    if stated == detected:
        return stated
    if dense is not None and stated in DENSE:
        ok = {
            # a multi-label batch whose rows happen to hold one positive each
            "multi_hot": detected == "one_hot",
            # one-hot rows are a special case of soft targets
            "soft": detected in ("one_hot", "multi_hot"),
            "one_hot": False,
        }[stated]
        if ok:
            return stated
        if stated == "one_hot" and detected in DENSE:
            sums = dense.sum(axis=1)
            bad = sums != 1 if detected == "multi_hot" else ~np.all((dense == 0) | (dense == 1), 1)
            row = int(np.argmax(bad))
            raise invalid(
                ("label_encoding",),
                f"`label_encoding` is 'one_hot', which expects every row of `y_true` to hold a "
                f"single 1 and zeros elsewhere; row {row} does not (its values sum to "
                f"{float(sums[row]):g}): these labels are {detected}.",
            )
        if stated == "multi_hot" and detected == "soft":
            row, column = _first((dense != 0) & (dense != 1))
            sample = tuple(int(i) for i in np.unravel_index(row, sample_shape))
            raise invalid(
                ("label_encoding",),
                "`label_encoding` is 'multi_hot', which expects `y_true` to hold 0 and 1 only, "
                f"but `y_true` is soft: sample {_at(sample)} holds "
                f"{dense[row, column].item():g} for class {column}. Leave `label_encoding` "
                "out to have it detected (or state 'soft').",
            )
    if stated in DENSE and detected == "binary":
        raise invalid(
            ("label_encoding",),
            f"`label_encoding` is '{stated}', but `y_true` against `y_pred` is binary: "
            "`y_pred` has a class axis of size 1 (or is 1-D), so each target is one "
            f"label of its own; {stated.replace('_', '-')} targets go with a `y_pred` of "
            "more than one column (one per class). Leave `label_encoding` out to have it "
            "detected.",
        )
    raise invalid(
        ("label_encoding",),
        f"`label_encoding` is '{stated}', but `y_true` against `y_pred` is {detected}: "
        + {
            "sparse": "sparse labels are integer class indices with one dimension less than "
            "`y_pred`.",
            "binary": "binary targets go with a `y_pred` whose class axis has size 1, or with a "
            "1-D `y_pred`; several labels per row are 'multi_hot'.",
        }.get(stated, "one-hot, multi-hot and soft targets have `y_pred`'s shape.")
        + " Leave `label_encoding` out to have it detected.",
    )


def align_sample_weight(sample_weight: NDArray[Any], target: tuple[int, ...]) -> Floats:
    """``sample_weight`` shaped to broadcast against per-sample values of shape ``target``.

    As Keras does, a trailing axis of size 1 is squeezed; weights with fewer
    dimensions apply to the leading (batch) axes.
    """
    w = sample_weight
    if w.ndim == len(target) + 1 and w.shape[-1] == 1:
        w = w.reshape(w.shape[:-1])
    if w.ndim < len(target):
        w = w.reshape(w.shape + (1,) * (len(target) - w.ndim))
    fits = w.ndim == len(target) and all(a in (1, b) for a, b in zip(w.shape, target, strict=True))
    if not fits:
        expected = f"{_shape(target[:1])} (one weight per sample)"
        if len(target) > 1:
            expected += (
                f" or {_shape(target)} (one per loss value), or either with a trailing axis "
                f"of 1 ({_shape((*target[:1], 1))}, {_shape((*target, 1))})"
            )
        else:
            expected += f", or {_shape((*target, 1))}"
        raise invalid(
            ("sample_weight",),
            f"`sample_weight` does not fit the batch: expected shape {expected}, received "
            f"{_shape(sample_weight.shape)}.",
        )
    negative = w < 0
    if negative.any():
        where = _first(negative)
        raise invalid(
            ("sample_weight", *where),
            f"`sample_weight` must be non-negative: received {w[where].item()!r} at index "
            f"{_at(where)}.",
        )
    return w.astype(np.float64, copy=False)


def prepare(
    y_true: NDArray[Any],
    y_pred: NDArray[Any],
    *,
    sample_weight: NDArray[Any] | None = None,
    axis: int = -1,
    label_encoding: Encoding | None = None,
    dtype: ComputeDtype = "float32",
) -> Batch:
    """Validate a batch and bring it to the kernels' layout (see the module docstring)."""
    for name, a in (("y_true", y_true), ("y_pred", y_pred)):
        _check_not_empty(name, a)
    if y_true.ndim == 0:
        raise invalid(
            ("y_true",), "`y_true` is a single number: expected a batch (an array of samples)."
        )
    if sample_weight is not None:
        _check_not_empty("sample_weight", sample_weight)
    _check_finite("y_true", y_true)
    _check_finite("y_pred", y_pred)
    if sample_weight is not None:
        _check_finite("sample_weight", sample_weight)
    ax = _normalize_axis(axis, y_pred.ndim)
    family, y_true = _shape_class(y_true, y_pred, ax)

    pred = y_pred if ax == y_pred.ndim - 1 else np.moveaxis(y_pred, ax, -1)
    if pred.ndim == 1:
        # 1-D binary targets: one sample each, as if shaped (n, 1) (see the API contract)
        pred = pred[:, None]
    sample_shape = tuple(int(d) for d in pred.shape[:-1]) or (1,)
    n_classes = int(pred.shape[-1])
    narrowed = pred.dtype.kind == "f" and pred.dtype.itemsize > np.dtype(dtype).itemsize
    if narrowed:
        with np.errstate(over="ignore"):  # an overflow is refused just below, with its index
            rows = pred.reshape(-1, n_classes).astype(dtype, copy=False)
    else:
        rows = pred.reshape(-1, n_classes).astype(dtype, copy=False)
    rows = np.ascontiguousarray(rows)
    if narrowed:
        _check_fits_dtype(y_pred, rows, ax)

    labels: Indices | None = None
    dense: Floats | None = None
    encoding: Encoding
    if family == "sparse":
        labels = _check_integer_labels(y_true, n_classes)
        encoding = "sparse"
    else:
        _check_unit_interval(
            y_true, "binary targets" if family == "binary" else "one-hot, multi-hot or soft targets"
        )
        moved = y_true if ax == y_true.ndim - 1 else np.moveaxis(y_true, ax, -1)
        targets = moved.reshape(-1, n_classes)
        # Float targets in the compute dtype, as the losses take them (Keras casts them)
        # and as a streaming batch is hashed: JSON lists (read as float64) and a float32
        # array of the same targets give the same numbers. Integers and booleans are
        # exact in any dtype, and stay as they came (a uint8 matrix is a quarter the size).
        kind = dtype if targets.dtype.kind == "f" else None
        dense = np.ascontiguousarray(targets, dtype=kind)
        encoding = "binary" if family == "binary" else _dense_encoding(dense)
        if encoding == "one_hot":
            labels = dense.argmax(axis=1).astype(np.int64)
    stated = label_encoding is not None
    if label_encoding is not None:
        encoding = _check_stated(label_encoding, encoding, dense, sample_shape)
        if encoding not in ("sparse", "one_hot"):
            labels = None  # stated multi-hot or soft rows are not class indices
    weights: Floats | None = None
    if sample_weight is not None:
        weights = align_sample_weight(sample_weight, sample_shape)
        _check_weights_fit(sample_weight, rows.dtype)
    return Batch(encoding, rows, labels, dense, sample_shape, n_classes, weights, stated)


# ---- checks that take a parameter of the loss or metric (see registry.check_fits) ----------


def check_label_range(
    batch: Batch, ignore_class: int | None = None, name: str | None = None
) -> None:
    """Sparse labels must be class indices in ``[0, C)`` (or ``ignore_class``); ``name``:
    the loss, metric or report that reads them, named in the refusal (a loss's
    ``ignore_class`` does not reach the metrics of the same request)."""
    labels = batch.labels
    if labels is None or batch.encoding != "sparse":
        return
    # The usual case, every label in range, told by two reductions.
    if (
        ignore_class is None
        and labels.size
        and np.minimum.reduce(labels) >= 0
        and np.maximum.reduce(labels) < batch.n_classes
    ):
        return
    bad = (labels < 0) | (labels >= batch.n_classes)
    if ignore_class is not None:
        bad &= labels != ignore_class
    if bad.any():
        i = int(np.argmax(bad))
        where = np.unravel_index(i, batch.sample_shape)
        allowed = "" if ignore_class is None else f" or ignore_class={ignore_class}"
        reader = "" if name is None else f" as {name} reads them"
        raise invalid(
            ("y_true", *(int(j) for j in where)),
            f"`y_true` has {int(bad.sum())} label(s) outside the classes of `y_pred`{reader}: "
            f"expected integers in [0, {batch.n_classes - 1}]{allowed}, received "
            f"{int(labels[i])} at index {_at(tuple(int(j) for j in where))}.",
        )


def check_probabilities(batch: Batch, *, binary: bool, loss: str) -> None:
    """With ``from_logits`` false, predictions must be able to be probabilities."""
    p = batch.y_pred
    # Finite here (prepare refused the rest): the extremes tell whether any value is out.
    if p.size and (
        np.minimum.reduce(p, axis=None) < 0 or (binary and np.maximum.reduce(p, axis=None) > 1)
    ):
        bad = (p < 0) | (p > 1) if binary else p < 0
        row, col = _first(bad)
        expected = "in [0, 1]" if binary else "non-negative"
        raise invalid(
            ("y_pred",),
            f"`y_pred` cannot be probabilities for {loss}: expected values {expected} with "
            f"`from_logits` false, received {float(p[row, col])!r} (sample row {row}, class "
            f"{col}). If these are logits (raw scores), send `from_logits: true`.",
        )
    if not binary:
        zero = batch.row_sums() == 0
        if zero.any():
            row = int(np.argmax(zero))
            raise invalid(
                ("y_pred",),
                f"`y_pred` row {row} sums to 0, so it cannot be renormalized to probabilities "
                f"for {loss}: expected each row to hold a probability distribution.",
            )


def sparse_labels(
    batch: Batch, ignore_class: int | None
) -> tuple[Indices, NDArray[np.bool_] | None]:
    """Labels with ``ignore_class`` positions replaced by 0, and the mask of kept positions."""
    assert batch.labels is not None
    if ignore_class is None:
        return batch.labels, None
    keep = batch.labels != ignore_class
    if keep.all():
        return batch.labels, None
    return np.where(keep, batch.labels, 0), keep
