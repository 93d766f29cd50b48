"""Precision, recall, F-beta and AUC kernels: hand values, references, merges, label forms."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import kernels
from service.kernels import MERGEABLE, merge_stats
from service.kernels.classification import NEG_INF, auc_thresholds, top_k_mask
from tests import kernel_batches
from tests.kernel_batches import row_weights

PROPERTY = settings(derandomize=True, max_examples=50, deadline=None, database=None)

#: Predictions on a grid of sixteenths: exact in float32, full of ties and of values equal to
#: thresholds such as 0.25 or 0.5, where the strict ``>`` matters.
GRID = st.sampled_from([i / 16 for i in range(17)])


# ---- batches ------------------------------------------------------------------------------


def batches(family: str, *, weighted: bool | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """A batch of one label family, predictions on this module's grid."""
    return kernel_batches.batches(family, GRID, weighted=weighted)


def one_hot(labels: np.ndarray, c: int) -> np.ndarray:
    return np.eye(c, dtype=np.float32)[labels]


def dense_truth(batch: dict[str, Any]) -> np.ndarray:
    y, p = batch["y_true"], batch["y_pred"]
    return one_hot(y, p.shape[1]) if y.ndim == 1 else y


@st.composite
def splits(draw: st.DrawFn, n: int) -> tuple[list[int], list[int]]:
    # Parts of one row at least: the service never computes an empty batch.
    cuts = draw(st.lists(st.integers(1, n - 1), max_size=4, unique=True)) if n > 1 else []
    order = draw(st.permutations(list(range(len(cuts) + 1))))
    return cuts, list(order)


def merged_in_order(
    name: str, batch: dict[str, Any], cuts: list[int], order: list[int], **stats_params: Any
) -> dict[str, np.ndarray]:
    """The parts' statistics added in the permuted ``order`` (each part once)."""
    spec = MERGEABLE[name]
    bounds = [0, *sorted(cuts), len(batch["y_pred"])]
    w = batch["sample_weight"]
    parts = [
        spec.stats(
            batch["y_true"][a:b],
            batch["y_pred"][a:b],
            None if w is None else w[a:b],
            **stats_params,
        )
        for a, b in pairwise(bounds)
    ]
    merged = parts[order[0]]
    for i in order[1:]:
        merged = merge_stats(merged, parts[i])
    return merged


# ---- references, written the plain way ----------------------------------------------------


def reference_decisions(
    p: np.ndarray, thresholds: list[float], top_k: int | None
) -> list[np.ndarray]:
    """``filtered > t`` per threshold, the filter keeping each row's top ``k`` (stable ties)."""
    if top_k is not None:
        keep = np.zeros(p.shape, dtype=bool)
        order = np.argsort(-p, axis=1, kind="stable")[:, :top_k]
        np.put_along_axis(keep, order, True, axis=1)
        p = np.where(keep, p, np.float32(NEG_INF))
    return [p > np.float32(t) for t in thresholds]


def reference_counts(
    truth: np.ndarray, decisions: np.ndarray, w: np.ndarray
) -> tuple[float, float, float]:
    weights = np.broadcast_to(w[:, None], truth.shape)
    pos = truth != 0
    return (
        float((weights * (pos & decisions)).sum()),
        float((weights * (~pos & decisions)).sum()),
        float((weights * (pos & ~decisions)).sum()),
    )


def reference_fbeta(
    truth: np.ndarray,
    p: np.ndarray,
    w: np.ndarray,
    *,
    threshold: float | None,
    beta: float,
    average: str | None,
) -> np.ndarray:
    """Keras' ``FBetaScore.update_state`` and ``result``, line by line, in float64."""
    if threshold is None:
        top = p.max(axis=1, keepdims=True)
        d = ((p >= top) & (np.abs(p) > np.float32(1e-9))).astype(np.float64)
    else:
        d = (p > np.float32(threshold)).astype(np.float64)
    axis = None if average == "micro" else 0
    tp = (d * truth * w[:, None]).sum(axis=axis)
    fp = (d * (1 - truth) * w[:, None]).sum(axis=axis)
    fn = ((1 - d) * truth * w[:, None]).sum(axis=axis)
    support = (truth * w[:, None]).sum(axis=axis)
    precision = tp / (tp + fp + 1e-7)
    recall = tp / (tp + fn + 1e-7)
    b2 = beta**2
    f = (1 + b2) * (precision * recall / (b2 * precision + recall + 1e-7))
    if average == "weighted":
        return np.asarray(np.sum(f * support / (support.sum() + 1e-7)))
    if average is not None:
        return np.asarray(np.mean(f))
    return np.asarray(f)


def reference_auc_counts(
    truth: np.ndarray, p: np.ndarray, w: np.ndarray, num_thresholds: int, *, multi_label: bool
) -> dict[str, np.ndarray]:
    """Keras' unoptimized path: every element against every threshold, ``p > t`` in float32."""
    thresholds = auc_thresholds(num_thresholds).astype(np.float32)
    pos = truth != 0
    weights = np.broadcast_to(w[:, None], p.shape)
    axis = 0 if multi_label else None
    counts: dict[str, list[Any]] = {"tp": [], "fp": [], "tn": [], "fn": []}
    for t in thresholds:
        above = np.clip(p, 0, 1) > t
        counts["tp"].append((weights * (above & pos)).sum(axis=axis))
        counts["fp"].append((weights * (above & ~pos)).sum(axis=axis))
        counts["tn"].append((weights * (~above & ~pos)).sum(axis=axis))
        counts["fn"].append((weights * (~above & pos)).sum(axis=axis))
    return {key: np.array(values) for key, values in counts.items()}


# ---- precision and recall -----------------------------------------------------------------


def test_precision_recall_hand_values() -> None:
    y_true = np.array([0, 1, 1, 1])
    y_pred = np.float32([1, 0, 1, 1])
    # tp = 2 (the last two), fp = 1 (the first), fn = 1 (the second)
    assert float(kernels.precision(y_true, y_pred)) == pytest.approx(2 / 3)
    assert float(kernels.recall(y_true, y_pred)) == pytest.approx(2 / 3)
    # only the third element weighs: a true positive
    weights = np.float32([0, 0, 1, 0])
    assert float(kernels.precision(y_true, y_pred, weights)) == 1.0
    assert float(kernels.recall(y_true, y_pred, weights)) == 1.0


def test_top_k_takes_the_lowest_indices_among_ties() -> None:
    # all four tie: the top 2 are elements 0 and 1, both labelled 0 → precision 0 / 2
    y_true = np.float32([[0, 0, 1, 1]])
    y_pred = np.float32([[1, 1, 1, 1]])
    assert float(kernels.precision(y_true, y_pred, top_k=2)) == 0.0
    # the top 4 are every element: 2 right out of 4
    assert float(kernels.precision(y_true, y_pred, top_k=4)) == 0.5
    np.testing.assert_array_equal(top_k_mask(y_pred, 2), [[True, True, False, False]])


def test_precision_threshold_is_strict_and_compared_in_float32() -> None:
    # float32(0.3) is not above the threshold 0.3 read as float32; in float64 it would be
    y_true = np.array([1, 0, 1, 0])
    y_pred = np.float32([0.3, 0.3, 0.31, 0.2])
    stats = kernels.precision_recall_stats(y_true, y_pred, thresholds=0.3)
    assert stats["tp"].tolist() == [1] and stats["fp"].tolist() == [0]
    assert stats["fn"].tolist() == [1]


def test_several_thresholds_give_one_value_each() -> None:
    y_true = np.array([1, 0, 1, 1])
    y_pred = np.float32([0.9, 0.6, 0.4, 0.1])
    # t = 0.5: tp 1 (0.9), fp 1 (0.6) → 1/2; t = 0.05: tp 3, fp 1 → 3/4
    np.testing.assert_allclose(
        kernels.precision(y_true, y_pred, thresholds=[0.5, 0.05]), [0.5, 0.75]
    )
    # evenly spread thresholds take Keras' bucketed path: 0, 0.5, 1
    np.testing.assert_allclose(
        kernels.recall(y_true, y_pred, thresholds=[0.0, 0.5, 1.0]), [1, 1 / 3, 0]
    )


def test_no_predicted_positive_gives_zero() -> None:
    assert float(kernels.precision(np.array([1, 0]), np.float32([0.1, 0.2]))) == 0.0
    assert float(kernels.recall(np.array([0, 0]), np.float32([0.9, 0.2]))) == 0.0


@PROPERTY
@given(st.data())
def test_precision_recall_match_a_plain_reference(data: st.DataObject) -> None:
    family = data.draw(st.sampled_from(["labels", "binary", "multi_label"]))
    batch = data.draw(batches(family))
    c = batch["y_pred"].shape[1]
    top_k = data.draw(st.none() | st.integers(1, c + 1)) if c > 1 else None
    class_id = data.draw(st.none() | st.integers(0, c - 1)) if c > 1 else None
    thresholds = data.draw(
        st.sampled_from([None, 0.5, 0.25, [0.0, 0.25, 0.5, 0.75, 1.0], [0.7, 0.1, 0.5]])
    )
    stats = kernels.precision_recall_stats(
        batch["y_true"],
        batch["y_pred"],
        batch["sample_weight"],
        thresholds=thresholds,
        top_k=top_k,
        class_id=class_id,
    )
    default = NEG_INF if top_k is not None else 0.5
    listed = [default] if thresholds is None else np.atleast_1d(thresholds).tolist()
    truth = dense_truth(batch)
    decisions = reference_decisions(batch["y_pred"], listed, top_k)
    for j, d in enumerate(decisions):
        t, d_ = (truth, d) if class_id is None else (truth[:, [class_id]], d[:, [class_id]])
        tp, fp, fn = reference_counts(t, d_, row_weights(batch))
        assert stats["tp"][j] == pytest.approx(tp)
        assert stats["fp"][j] == pytest.approx(fp)
        assert stats["fn"][j] == pytest.approx(fn)


# ---- F-beta -------------------------------------------------------------------------------


def test_f1_hand_values() -> None:
    # Keras' example: threshold 0.5
    y_true = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    y_pred = np.float32([[0.2, 0.6, 0.7], [0.2, 0.6, 0.6], [0.6, 0.8, 0.0]])
    # class 0: tp 1, fn 2 → P 1, R 1/3, F1 = 2 · (1/3) / (4/3) = 0.5
    # class 1: tp 2, fp 1 → P 2/3, R 1, F1 = 0.8; class 2: tp 1, fp 1 → P 1/2, R 1, F1 = 2/3
    np.testing.assert_allclose(
        kernels.f1_score(y_true, y_pred, threshold=0.5), [0.5, 0.8, 2 / 3], rtol=1e-6
    )
    # beta 2: class 0 = 5 · (1/3) / (4 + 1/3) = 5 / 13
    np.testing.assert_allclose(
        kernels.fbeta_score(y_true, y_pred, beta=2.0, threshold=0.5)[0], 5 / 13, rtol=1e-6
    )


def test_f1_ties_and_zero_rows_with_threshold_none() -> None:
    labels = np.array([0, 1, 2])
    y_pred = np.float32([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.1, 0.2, 0.7]])
    stats = kernels.fbeta_stats(labels, y_pred)
    # row 0: both tied maxima are positives (class 0 right, class 1 wrong); row 1: none
    assert stats["tp"].tolist() == [1, 0, 1]
    assert stats["fp"].tolist() == [0, 1, 0]
    assert stats["fn"].tolist() == [0, 1, 0]
    assert stats["support"].tolist() == [1, 1, 1]


def test_f1_averages() -> None:
    labels = np.array([0, 0, 1, 2])
    y_pred = np.float32([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.6, 0.2, 0.2]])
    # argmax [0, 1, 1, 0]: class 0 tp 1, fp 1 (row 3), fn 1 (row 1) → P 1/2, R 1/2, F1 1/2;
    # class 1 tp 1, fp 1 (row 1) → P 1/2, R 1, F1 2 · (1/2) / (3/2) = 2/3; class 2: 0
    per_class = kernels.f1_score(labels, y_pred)
    np.testing.assert_allclose(per_class, [1 / 2, 2 / 3, 0.0], atol=1e-6)
    macro = float(kernels.f1_score(labels, y_pred, average="macro"))
    assert macro == pytest.approx((1 / 2 + 2 / 3 + 0) / 3, abs=1e-6)
    # weighted by supports 2, 1, 1: (2 · 1/2 + 2/3 + 0) / 4
    weighted = float(kernels.f1_score(labels, y_pred, average="weighted"))
    assert weighted == pytest.approx((2 * 1 / 2 + 2 / 3) / 4, abs=1e-6)
    # micro: tp 2, fp 2, fn 2 → 1/2
    assert float(kernels.f1_score(labels, y_pred, average="micro")) == pytest.approx(0.5, abs=1e-6)


@PROPERTY
@given(st.data())
def test_fbeta_matches_keras_formulas(data: st.DataObject) -> None:
    family = data.draw(st.sampled_from(["labels", "multi_label"]))
    batch = data.draw(batches(family))
    threshold = data.draw(st.sampled_from([None, 0.5, 0.25, 1.0]))
    beta = data.draw(st.sampled_from([1.0, 2.0, 0.5]))
    average = data.draw(st.sampled_from([None, "micro", "macro", "weighted"]))
    got = kernels.fbeta_score(
        batch["y_true"],
        batch["y_pred"],
        batch["sample_weight"],
        average=average,
        beta=beta,
        threshold=threshold,
    )
    expected = reference_fbeta(
        dense_truth(batch).astype(np.float64),
        batch["y_pred"],
        row_weights(batch),
        threshold=threshold,
        beta=beta,
        average=average,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


# ---- AUC ----------------------------------------------------------------------------------


def test_auc_hand_values() -> None:
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.float32([0, 0.5, 0.3, 0.9])
    # thresholds [-1e-7, 0.5, 1 + 1e-7]: tp [2, 1, 0], fp [2, 0, 0], fn [0, 1, 2], tn [0, 2, 2]
    stats = kernels.auc_stats(y_true, y_pred, num_thresholds=3)
    assert {k: v.tolist() for k, v in stats.items()} == {
        "tp": [2, 1, 0],
        "fp": [2, 0, 0],
        "tn": [0, 2, 2],
        "fn": [0, 1, 2],
    }
    # recall [1, 0.5, 0], fpr [1, 0, 0]: ((1 + 0.5) / 2) · (1 - 0) + ((0.5 + 0) / 2) · 0
    assert float(kernels.auc(y_true, y_pred, num_thresholds=3)) == 0.75
    # weights [1, 0, 0, 1] leave 0 (negative) and 0.9 (positive): perfectly ranked
    weights = np.float32([1, 0, 0, 1])
    assert float(kernels.auc(y_true, y_pred, weights, num_thresholds=3)) == 1.0


def test_auc_summation_methods() -> None:
    stats = kernels.auc_stats(
        np.array([0, 0, 1, 1]), np.float32([0, 0.5, 0.3, 0.9]), num_thresholds=3
    )
    # ROC heights over the interval fpr 1 → 0: minoring min(1, 0.5), majoring max(1, 0.5)
    assert float(kernels.auc_value(stats, summation_method="minoring")) == 0.5
    assert float(kernels.auc_value(stats, summation_method="majoring")) == 1.0
    # PR, majoring: recall [1, 0.5, 0], precision [0.5, 1, 0] → 0.5 · 1 + 0.5 · 1
    assert float(kernels.auc_value(stats, curve="PR", summation_method="majoring")) == 1.0


def test_auc_multi_label_counts_a_column_without_positives_as_zero() -> None:
    y_true = np.float32([[1, 0], [0, 0], [1, 0]])
    y_pred = np.float32([[0.9, 0.2], [0.1, 0.8], [0.8, 0.3]])
    stats = kernels.auc_stats(y_true, y_pred, multi_label=True)
    assert kernels.auc_columns_without_positives(stats).tolist() == [1]
    # column 0 ranks perfectly (area 1), column 1 has area 0: mean 1/2
    assert float(kernels.auc_value(stats)) == pytest.approx(0.5)


@PROPERTY
@given(st.data())
def test_auc_counts_match_every_threshold_compared(data: st.DataObject) -> None:
    family = data.draw(st.sampled_from(["labels", "binary", "multi_label"]))
    batch = data.draw(batches(family))
    multi_label = family != "binary" and data.draw(st.booleans())
    num_thresholds = data.draw(st.sampled_from([2, 3, 17, 200]))
    got = kernels.auc_stats(
        batch["y_true"],
        batch["y_pred"],
        batch["sample_weight"],
        num_thresholds=num_thresholds,
        multi_label=multi_label,
    )
    expected = reference_auc_counts(
        dense_truth(batch),
        batch["y_pred"],
        row_weights(batch),
        num_thresholds,
        multi_label=multi_label,
    )
    for key in ("tp", "fp", "tn", "fn"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, atol=1e-12, err_msg=key)


def test_auc_from_logits_is_the_sigmoid_of_every_element() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(40, 3)).astype(np.float32) * 4
    labels = rng.integers(0, 3, 40)
    sigmoid = (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    for multi_label in (False, True):
        got = kernels.auc_stats(labels, logits, from_logits=True, multi_label=multi_label)
        expected = kernels.auc_stats(labels, sigmoid, multi_label=multi_label)
        for key in got:
            # the sigmoids may differ by an ulp, which moves an element only at a bucket's edge
            np.testing.assert_allclose(got[key], expected[key], atol=1, err_msg=key)


# ---- big batches: every block, every thread, the skipped low elements ---------------------


@pytest.mark.parametrize("shape", ["softmax", "uniform"])
def test_big_batches_match_the_references(shape: str) -> None:
    rng = np.random.default_rng(7)
    n, c = 1200, 250  # 300k elements: several blocks, on several threads
    if shape == "softmax":
        z = rng.normal(size=(n, c)) * 3
        y_pred = np.exp(z - z.max(axis=1, keepdims=True))
        y_pred = (y_pred / y_pred.sum(axis=1, keepdims=True)).astype(np.float32)
    else:
        y_pred = rng.random((n, c), dtype=np.float32)
    labels = rng.integers(0, c, n)
    multi = (rng.random((n, c)) < 0.05).astype(np.float32)
    w = rng.random(n).astype(np.float32)
    truth = one_hot(labels, c)
    # AUC counts per element and threshold, on 12 thresholds to keep the reference small
    for y_true, dense in ((labels, truth), (multi, multi)):
        for weight in (None, w):
            ref_w = np.ones(n) if weight is None else weight.astype(np.float64)
            for multi_label in (False, True):
                got = kernels.auc_stats(
                    y_true, y_pred, weight, num_thresholds=12, multi_label=multi_label
                )
                expected = reference_auc_counts(dense, y_pred, ref_w, 12, multi_label=multi_label)
                for key in got:
                    np.testing.assert_allclose(got[key], expected[key], rtol=1e-9, atol=1e-6)
            stats = kernels.precision_recall_stats(y_true, y_pred, weight, thresholds=[0.01, 0.3])
            for j, d in enumerate(reference_decisions(y_pred, [0.01, 0.3], None)):
                tp, fp, fn = reference_counts(dense, d, ref_w)
                np.testing.assert_allclose(
                    [stats["tp"][j], stats["fp"][j], stats["fn"][j]], [tp, fp, fn], rtol=1e-9
                )
            for threshold in (None, 0.01):
                np.testing.assert_allclose(
                    kernels.fbeta_score(y_true, y_pred, weight, threshold=threshold),
                    reference_fbeta(
                        dense.astype(np.float64),
                        y_pred,
                        ref_w,
                        threshold=threshold,
                        beta=1.0,
                        average=None,
                    ),
                    rtol=1e-9,
                    atol=1e-12,
                )


# ---- merging, label forms, weights ---------------------------------------------------------

PARAMS: dict[str, list[dict[str, Any]]] = {
    "precision": [{}, {"thresholds": [0.0, 0.25, 0.5, 0.75, 1.0]}, {"top_k": 2}, {"class_id": 1}],
    "recall": [{}, {"thresholds": [0.3, 0.6]}, {"top_k": 1, "class_id": 0}],
    "f1_score": [{}, {"threshold": 0.5}, {"average": "macro"}, {"average": "weighted"}],
    "fbeta_score": [{"beta": 2.0, "average": "micro"}, {"threshold": 0.25, "average": "weighted"}],
    "auc": [
        {},
        {"curve": "PR"},
        {"multi_label": True},
        {"num_thresholds": 7, "summation_method": "minoring"},
    ],
}


def _split(name: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = MERGEABLE[name]
    return (
        {k: v for k, v in params.items() if k in spec.stats_params},
        {k: v for k, v in params.items() if k in spec.finalize_params},
    )


@PROPERTY
@given(st.data())
def test_any_split_merged_in_any_order_gives_the_one_shot_value(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(PARAMS)))
    params = data.draw(st.sampled_from(PARAMS[name]))
    family = data.draw(st.sampled_from(["labels", "multi_label"]))
    batch = data.draw(batches(family))
    cuts, order = data.draw(splits(len(batch["y_pred"])))
    stats_params, finalize_params = _split(name, params)
    spec = MERGEABLE[name]
    whole = spec.stats(batch["y_true"], batch["y_pred"], batch["sample_weight"], **stats_params)
    merged = merged_in_order(name, batch, cuts, order, **stats_params)
    assert set(merged) == set(whole) == set(spec.keys)
    for key in whole:
        np.testing.assert_allclose(merged[key], whole[key], rtol=1e-12, atol=1e-12, err_msg=key)
    np.testing.assert_allclose(
        spec.finalize(merged, **finalize_params), spec.finalize(whole, **finalize_params), rtol=1e-6
    )


@PROPERTY
@given(st.data())
def test_integer_labels_equal_their_one_hot_form(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(PARAMS)))
    params = data.draw(st.sampled_from(PARAMS[name]))
    batch = data.draw(batches("labels"))
    spec = MERGEABLE[name]
    as_indices = spec.compute(batch["y_true"], batch["y_pred"], batch["sample_weight"], **params)
    as_one_hot = spec.compute(dense_truth(batch), batch["y_pred"], batch["sample_weight"], **params)
    np.testing.assert_allclose(as_indices, as_one_hot, rtol=1e-12)


@PROPERTY
@given(st.data())
def test_weights_of_ones_equal_no_weights(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(PARAMS)))
    params = data.draw(st.sampled_from(PARAMS[name]))
    family = data.draw(st.sampled_from(["labels", "multi_label"]))
    batch = data.draw(batches(family, weighted=False))
    spec = MERGEABLE[name]
    ones = np.ones(len(batch["y_pred"]), dtype=np.float32)
    unweighted = spec.compute(batch["y_true"], batch["y_pred"], None, **params)
    weighted = spec.compute(batch["y_true"], batch["y_pred"], ones, **params)
    np.testing.assert_allclose(unweighted, weighted, rtol=1e-12)


def test_unweighted_counts_are_integers() -> None:
    labels, y_pred = np.array([0, 1, 1]), np.float32([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    for stats in (
        kernels.precision_recall_stats(labels, y_pred),
        kernels.fbeta_stats(labels, y_pred),
        kernels.auc_stats(labels, y_pred),
    ):
        assert all(v.dtype == np.int64 for v in stats.values()), stats
    weighted = kernels.auc_stats(labels, y_pred, np.float32([1, 2, 0.5]))
    assert all(v.dtype == np.float64 for v in weighted.values())


def test_merge_refuses_statistics_of_another_shape() -> None:
    a = kernels.auc_stats(np.array([0, 1]), np.float32([[0.2, 0.8], [0.6, 0.4]]), num_thresholds=5)
    b = kernels.auc_stats(np.array([0, 1]), np.float32([[0.2, 0.8], [0.6, 0.4]]), num_thresholds=6)
    with pytest.raises(ValueError, match="shapes"):
        merge_stats(a, b)
    with pytest.raises(ValueError, match="keys"):
        merge_stats(a, {"tp": a["tp"]})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_logits_are_ranked_as_logits_not_as_their_rounded_sigmoid(dtype: Any) -> None:
    # The sigmoid keeps the logits' order but rounds large ones alike (float32: every
    # logit past ~17 to 1.0; float64: past ~37): the top element and the row's maximum
    # are the largest logit's, as when the probabilities are given.
    big = dtype(40.0) if dtype == np.float64 else dtype(17.0)
    logits = np.array([[big, big + 8, -5.0]], dtype)
    probabilities = np.array([[0.2, 0.7, 0.1]], dtype)  # the same order
    onehot = np.array([[0, 1, 0]])
    for scores, from_logits in ((logits, True), (probabilities, False)):
        for metric in (kernels.precision, kernels.recall):
            got = metric(onehot, scores, top_k=1, from_logits=from_logits)
            assert float(got) == 1.0, (metric, from_logits)
        column = kernels.precision(onehot, scores, top_k=1, class_id=1, from_logits=from_logits)
        assert float(column) == 1.0
        for labels in (np.array([1]), onehot):
            f1 = kernels.f1_score(labels, scores, average="micro", from_logits=from_logits)
            assert float(f1) == pytest.approx(1.0, abs=1e-6), (labels, from_logits)
    # Tied logits are still tied; a row whose largest sigmoid is ~0 still has no positive.
    tied = np.array([[3.0, 3.0, -1.0]], dtype)
    f1 = kernels.f1_score(np.array([0]), tied, average="micro", from_logits=True)
    assert float(f1) == pytest.approx(2 / 3, abs=1e-6)
    low = np.array([[-25.0, -27.0, -30.0]], dtype)
    assert float(kernels.f1_score(np.array([0]), low, average="micro", from_logits=True)) == 0.0
