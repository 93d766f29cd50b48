"""Sample evaluations for the chart and report tests, computed from random data.

Each builder draws labels and logits with a seeded NumPy generator, then computes
with plain NumPy what the service's responses hold: losses and metrics, the
``per_class``, ``confusion_matrix`` and ``calibration`` reports, the confusion
counts per threshold of an AUC (``curves``), the batch history in arrival order and
the ``GET /v1/evaluations/{id}`` fields around them. The numbers are consistent with
each other (supports sum to ``n_samples``, the matrix's diagonal is the true
positives, ...) so the charts draw realistic data; they are not Keras' golden values.

- :func:`single_label`: sparse labels, 37 named classes by default;
  ``single_label(n_classes=1000)`` has classes absent from the data.
- :func:`multi_head`: a ``species`` head (10 classes) and a multi-hot ``attributes``
  head (6 labels), with ``total_loss``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]

#: Keras' AUC thresholds for num_thresholds=200.
THRESHOLDS = np.concatenate([[-1e-7], np.arange(1, 199) / 199.0, [1.0 + 1e-7]])
N_BINS = 15

NAMES_37 = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
    "truck", "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle",
    "bicycle", "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can",
    "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud",
    "cockroach", "couch", "a rather long class name for the axis labels",
]  # fmt: skip


def _softmax(logits: Floats) -> Floats:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: Floats = shifted / shifted.sum(axis=1, keepdims=True)
    return result


def _sigmoid(logits: Floats) -> Floats:
    result: Floats = 1.0 / (1.0 + np.exp(-logits))
    return result


def _prf(tp: Floats, predicted: Floats, support: Floats) -> tuple[Floats, Floats, Floats]:
    """Precision, recall and F1 per class, 0 where undefined (zero_division=0)."""
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(tp), where=total > 0)
    return precision, recall, f1


def _averages(tp: Floats, predicted: Floats, support: Floats) -> dict[str, dict[str, float]]:
    precision, recall, f1 = _prf(tp, predicted, support)
    weights = support / support.sum()
    micro = _prf(np.array([tp.sum()]), np.array([predicted.sum()]), np.array([support.sum()]))
    return {
        "macro": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
        },
        "weighted": {
            "precision": float(precision @ weights),
            "recall": float(recall @ weights),
            "f1": float(f1 @ weights),
        },
        "micro": {
            "precision": float(micro[0][0]),
            "recall": float(micro[1][0]),
            "f1": float(micro[2][0]),
        },
    }


def _calibration(confidence: Floats, correct: Floats) -> dict[str, Any]:
    """torchmetrics-style bins [k/n, (k+1)/n) and the bin of confidences equal to 1."""
    index = np.where(confidence >= 1.0, N_BINS, np.floor(confidence * N_BINS).astype(np.int64))
    count = np.bincount(index, minlength=N_BINS + 1).astype(np.float64)
    conf_sum = np.bincount(index, weights=confidence, minlength=N_BINS + 1)
    correct_sum = np.bincount(index, weights=correct, minlength=N_BINS + 1)
    mean_conf = np.divide(conf_sum, count, out=np.zeros_like(count), where=count > 0)
    accuracy = np.divide(correct_sum, count, out=np.zeros_like(count), where=count > 0)
    gaps = np.abs(accuracy - mean_conf)
    bins = [
        {
            "lower": k / N_BINS if k < N_BINS else 1.0,
            "upper": (k + 1) / N_BINS if k < N_BINS else 1.0,
            "count": int(count[k]),
            "confidence": float(mean_conf[k]),
            "accuracy": float(accuracy[k]),
        }
        for k in range(N_BINS + 1)
        if k < N_BINS or count[k] > 0
    ]
    return {
        "n_bins": N_BINS,
        "bins": bins,
        "ece": float((count / count.sum()) @ gaps),
        "mce": float(gaps[count > 0].max()),
    }


def _curve(labels: Floats, scores: Floats, curve: str) -> dict[str, Any]:
    """Confusion counts per threshold, positives being scores > threshold; one column per
    label when ``labels`` is 2-D and ``curve`` ends in "_multi"."""
    multi = curve.endswith("_multi")
    if not multi:
        labels, scores = labels.reshape(-1, 1), scores.reshape(-1, 1)
    # Scores above threshold t: those whose count of thresholds below them exceeds t.
    above = np.searchsorted(THRESHOLDS, scores, side="left")
    columns = []
    for column in range(labels.shape[1]):
        positive = labels[:, column] > 0
        pos_hist = np.bincount(above[positive, column], minlength=len(THRESHOLDS) + 1)
        neg_hist = np.bincount(above[~positive, column], minlength=len(THRESHOLDS) + 1)
        tp = np.cumsum(pos_hist[::-1])[::-1][1:]
        fp = np.cumsum(neg_hist[::-1])[::-1][1:]
        columns.append((tp, fp, positive.sum() - tp, (~positive).sum() - fp))
    tp, fp, fn, tn = (np.stack([c[i] for c in columns], axis=1) for i in range(4))
    if not multi:
        tp, fp, fn, tn = tp[:, 0], fp[:, 0], fn[:, 0], tn[:, 0]
    return {
        "curve": "PR" if curve.startswith("PR") else "ROC",
        "thresholds": THRESHOLDS.tolist(),
        "true_positives": tp.tolist(),
        "false_positives": fp.tolist(),
        "true_negatives": tn.tolist(),
        "false_negatives": fn.tolist(),
    }


def _auc(entry: dict[str, Any]) -> float:
    """The area under a curve's points by the trapezoid rule (mean over label columns)."""
    tp, fp, tn, fn = (
        np.asarray(entry[k], dtype=np.float64)
        for k in ("true_positives", "false_positives", "true_negatives", "false_negatives")
    )
    recall = np.divide(tp, tp + fn, out=np.zeros_like(tp), where=tp + fn > 0)
    if entry["curve"] == "ROC":
        x = np.divide(fp, fp + tn, out=np.zeros_like(fp), where=fp + tn > 0)
        y = recall
    else:
        x = recall
        y = np.divide(tp, tp + fp, out=np.ones_like(tp), where=tp + fp > 0)
    area = ((x[:-1] - x[1:]) * (y[:-1] + y[1:]) / 2).sum(axis=0)
    return float(np.mean(area))


def _history(batch_losses: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    """Batch records in arrival order, as ``GET /v1/evaluations/{id}/batches`` lists them."""
    return [
        {
            "batch_id": f"part-{i:04d}",
            "n_samples": size,
            "received_at": f"2026-11-30T10:{i // 60:02d}:{i % 60:02d}Z",
            **values,
        }
        for i, (values, size) in enumerate(zip(batch_losses, sizes, strict=True))
    ]


def _batches(n_samples: int, n_batches: int) -> list[NDArray[np.intp]]:
    return np.array_split(np.arange(n_samples), n_batches)


def _single_head(
    rng: np.random.Generator, n_classes: int, n_samples: int, names: list[str] | None
) -> tuple[dict[str, Any], Ints, Floats]:
    """The evaluate response of a sparse single-label batch; its labels and probabilities."""
    prior = 1.0 / np.arange(1, n_classes + 1) ** 0.8
    prior = rng.permutation(prior / prior.sum())
    y = rng.choice(n_classes, size=n_samples, p=prior)
    strength = rng.uniform(0.3, 4.5, size=n_classes)
    # Every class resembles the next one, so confusions concentrate on some pairs.
    partner = (np.arange(n_classes) + 1) % n_classes
    logits = rng.normal(size=(n_samples, n_classes)).astype(np.float32)
    rows = np.arange(n_samples)
    logits[rows, y] += strength[y]
    logits[rows, partner[y]] += 0.6 * strength[y]
    # Logits scaled up a little make the model overconfident, as trained networks often are.
    probs = _softmax(2.2 * logits.astype(np.float64))
    predicted = probs.argmax(axis=1)
    matrix = np.bincount(y * n_classes + predicted, minlength=n_classes**2).reshape(
        n_classes, n_classes
    )
    support = matrix.sum(axis=1).astype(np.float64)
    tp = np.diag(matrix).astype(np.float64)
    predicted_count = matrix.sum(axis=0).astype(np.float64)
    precision, recall, f1 = _prf(tp, predicted_count, support)
    ce = -np.log(probs[rows, y])
    ce_sum = np.bincount(y, weights=ce, minlength=n_classes)
    class_loss = np.divide(ce_sum, support, out=np.zeros_like(ce_sum), where=support > 0)
    labels: list[Any] = names if names is not None else list(range(n_classes))
    one_hot = np.zeros_like(probs)
    one_hot[rows, y] = 1.0
    calibration = _calibration(probs.max(axis=1), (predicted == y).astype(np.float64))
    calibration["brier"] = float(((one_hot - probs) ** 2).sum(axis=1).mean())
    curve = _curve(one_hot, probs, "ROC")
    top5 = np.argsort(-probs, axis=1)[:, :5]
    evaluation = {
        "label_encoding": "sparse",
        "n_samples": n_samples,
        "n_classes": n_classes,
        "losses": {"sparse_categorical_crossentropy": float(ce.mean())},
        "metrics": {
            "accuracy": float((predicted == y).mean()),
            "sparse_top_k_categorical_accuracy": float((top5 == y[:, None]).any(axis=1).mean()),
            "auc": _auc(curve),
            "f1_score": f1.tolist(),
        },
        "resolved": {"accuracy": "sparse_categorical_accuracy"},
        "reports": {
            "per_class": {
                "labels": labels,
                "support": support.astype(int).tolist(),
                "precision": precision.tolist(),
                "recall": recall.tolist(),
                "f1": f1.tolist(),
                "loss": {"sparse_categorical_crossentropy": class_loss.tolist()},
                "averages": _averages(tp, predicted_count, support),
            },
            "confusion_matrix": {"labels": labels, "matrix": matrix.tolist()},
            "calibration": calibration,
        },
        "curves": {"auc": curve},
    }
    return evaluation, y, probs


def _meta(n_batches: int, n_samples: int) -> dict[str, Any]:
    return {
        "id": "0f8b6c1e9d6a4c2b8e7f5a3d1c9b7e6a",
        "status": "closed",
        "created_at": "2026-11-30T10:00:00Z",
        "updated_at": "2026-11-30T10:41:07Z",
        "n_batches": n_batches,
        "n_samples": n_samples,
        "metadata": {"model": "resnet-50 v3", "dataset": "validation split"},
    }


@cache
def single_label(
    n_classes: int = 37,
    n_samples: int = 4000,
    n_batches: int = 40,
    class_names: tuple[str, ...] | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A streaming evaluation of sparse labels and its batch history.

    Classes are named from :data:`NAMES_37` when there are 37 of them (or from
    ``class_names``), else numbered. Cached: callers must not modify the result.
    """
    rng = np.random.default_rng(seed)
    names = list(class_names) if class_names else (NAMES_37 if n_classes == 37 else None)
    head, y, probs = _single_head(rng, n_classes, n_samples, names)
    batch_losses = []
    sizes = []
    for rows in _batches(n_samples, n_batches):
        ce = -np.log(probs[rows, y[rows]])
        batch_losses.append(
            {
                "losses": {"sparse_categorical_crossentropy": float(ce.mean())},
                "metrics": {"accuracy": float((probs[rows].argmax(axis=1) == y[rows]).mean())},
            }
        )
        sizes.append(rows.size)
    warnings = [
        {
            "code": "probabilities_renormalized",
            "message": "Rows of y_pred do not sum to 1 (largest difference 0.031); "
            "categorical losses renormalized them.",
            "batches": 3,
        }
    ]
    evaluation = {**_meta(n_batches, n_samples), **head, "warnings": warnings}
    return evaluation, _history(batch_losses, sizes)


@cache
def multi_head(
    n_samples: int = 1500, n_batches: int = 12, seed: int = 1
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A streaming evaluation of two heads: ``species`` (10 sparse classes, a PR AUC) and
    ``attributes`` (6 multi-hot labels, a multi-label ROC AUC); with its history."""
    rng = np.random.default_rng(seed)
    species, y, probs = _single_head(rng, 10, n_samples, None)
    species["curves"] = {"auc_pr": _curve(np.eye(10)[y], probs, "PR")}
    species["metrics"]["auc_pr"] = _auc(species["curves"]["auc_pr"])
    del species["metrics"]["auc"]
    species["warnings"] = []

    names = ["striped", "spotted", "winged", "aquatic", "nocturnal", "domestic"]
    rate = np.array([0.3, 0.2, 0.4, 0.1, 0.25, 0.05])
    labels = (rng.random((n_samples, 6)) < rate).astype(np.float64)
    logits = rng.normal(size=(n_samples, 6)) + (labels * 2 - 1) * rng.uniform(0.5, 2.5, 6)
    p = _sigmoid(logits)
    positive = p > 0.5
    tp = (positive & (labels > 0)).sum(axis=0).astype(np.float64)
    fp = (positive & (labels == 0)).sum(axis=0).astype(np.float64)
    fn = (~positive & (labels > 0)).sum(axis=0).astype(np.float64)
    tn = n_samples - tp - fp - fn
    support = labels.sum(axis=0)
    precision, recall, f1 = _prf(tp, tp + fp, support)
    bce = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    calibration = _calibration(p.ravel(), labels.ravel())
    calibration["brier"] = float(((labels - p) ** 2).mean())
    curve = _curve(labels, p, "ROC_multi")
    attributes = {
        "label_encoding": "multi_hot",
        "n_samples": n_samples,
        "n_classes": 6,
        "losses": {"binary_crossentropy": float(bce.mean())},
        "metrics": {
            "accuracy": float((positive == (labels > 0)).all(axis=1).mean()),
            "binary_accuracy": float((positive == (labels > 0)).mean()),
            "auc": _auc(curve),
        },
        "resolved": {"accuracy": "subset_accuracy"},
        "reports": {
            "per_class": {
                "labels": names,
                "support": support.astype(int).tolist(),
                "precision": precision.tolist(),
                "recall": recall.tolist(),
                "f1": f1.tolist(),
                "loss": {"binary_crossentropy": bce.mean(axis=0).tolist()},
                "averages": _averages(tp, tp + fp, support),
            },
            "confusion_matrix": {
                "labels": names,
                "matrices": np.stack([tn, fp, fn, tp], axis=1)
                .reshape(6, 2, 2)
                .astype(int)
                .tolist(),
            },
            "calibration": calibration,
        },
        "curves": {"auc": curve},
        "warnings": [
            {
                "code": "binary_accuracy_inflated",
                "message": "Multi-hot labels: binary_accuracy 0.91 is dominated by true "
                "negatives; subset accuracy is 0.42 and predicting all zeros scores 0.78.",
            }
        ],
    }
    weights = {"species": 1.0, "attributes": 0.5}
    outputs = {"species": species, "attributes": attributes}
    batch_losses = []
    sizes = []
    for rows in _batches(n_samples, n_batches):
        ce = float(-np.log(probs[rows, y[rows]]).mean())
        bce_batch = float(bce[rows].mean())
        batch_losses.append(
            {
                "outputs": {
                    "species": {"losses": {"sparse_categorical_crossentropy": ce}},
                    "attributes": {"losses": {"binary_crossentropy": bce_batch}},
                },
                "total_loss": weights["species"] * ce + weights["attributes"] * bce_batch,
            }
        )
        sizes.append(rows.size)
    evaluation = {
        **_meta(n_batches, n_samples),
        "outputs": outputs,
        "total_loss": sum(
            weights[head] * sum(outputs[head]["losses"].values()) for head in outputs
        ),
        "warnings": [
            {
                "code": "binary_accuracy_inflated",
                "message": "attributes: binary accuracy is dominated by true negatives.",
                "batches": 12,
            }
        ],
    }
    return evaluation, _history(batch_losses, sizes)
