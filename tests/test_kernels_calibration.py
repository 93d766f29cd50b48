"""Calibration error, Brier score and the calibration report: bins, edges, references, merges."""

from __future__ import annotations

from fractions import Fraction
from itertools import pairwise
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import kernels
from service.kernels import MERGEABLE, merge_stats
from service.kernels.calibration import _bin_index, bin_edges
from tests import kernel_batches
from tests.kernel_batches import row_weights

PROPERTY = settings(derandomize=True, max_examples=50, deadline=None, database=None)

#: Probabilities with ties, bin edges (0.2 = 3/15, 0.6 = 9/15) and exact 0 and 1.
GRID = st.sampled_from([0.0, 0.05, 0.2, 0.25, 0.5, 0.6, 0.75, 0.95, 1.0]) | st.floats(
    0, 1, width=32
)


def batches(family: str, *, weighted: bool | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """A batch of one label family, predictions on this module's grid."""
    return kernel_batches.batches(family, GRID, weighted=weighted)


# ---- references, written the plain way ----------------------------------------------------


def reference_linspace(n_bins: int, dtype: type) -> np.ndarray:
    """``torch.linspace(0, 1, n + 1, dtype=dtype)`` as PyTorch's CPU kernel computes it:
    ``s = 1 / n`` in the dtype, edge ``k`` the fused ``k s`` below the middle and
    ``1 - (n - k) s`` from it, each exact (in rationals) then rounded once: to the
    nearest of the dtype's values around it (ties to the even one)."""
    s = Fraction(float(dtype(1) / dtype(n_bins)))
    half = (n_bins + 1) // 2
    edges = []
    for k in range(n_bins + 1):
        exact = k * s if k < half else 1 - (n_bins - k) * s
        guess = dtype(float(exact))
        around = [np.nextafter(guess, dtype(-1)), guess, np.nextafter(guess, dtype(2))]
        edges.append(
            min(
                around,
                key=lambda v: (
                    abs(Fraction(float(v)) - exact),
                    int(v.view(np.uint64 if dtype is np.float64 else np.uint32)) % 2,
                ),
            )
        )
    return np.array(edges, dtype)


#: ``torch.linspace(0, 1, n + 1, dtype=torch.float32)`` (PyTorch 2.13 on x86-64): the edges
#: that are not ``k / n`` rounded to float32.
TORCH_FLOAT32_EDGES = {
    3: {2: float.fromhex("0x1.5555540000000p-1")},
    15: {
        3: float.fromhex("0x1.99999c0000000p-3"),
        6: float.fromhex("0x1.99999c0000000p-2"),
        7: float.fromhex("0x1.dddde00000000p-2"),
        8: float.fromhex("0x1.1111100000000p-1"),
        9: float.fromhex("0x1.3333320000000p-1"),
        10: float.fromhex("0x1.5555540000000p-1"),
    },
    20: {9: float.fromhex("0x1.ccccce0000000p-2")},
}
#: The same in float64.
TORCH_FLOAT64_EDGES = {
    3: {2: float.fromhex("0x1.5555555555556p-1")},
    15: {11: float.fromhex("0x1.7777777777778p-1")},
    20: {
        3: float.fromhex("0x1.3333333333334p-3"),
        6: float.fromhex("0x1.3333333333334p-2"),
        7: float.fromhex("0x1.6666666666667p-2"),
        11: float.fromhex("0x1.1999999999999p-1"),
    },
}


def reference_bins(
    confidence: np.ndarray, accuracy: np.ndarray, weight: np.ndarray, n_bins: int
) -> dict[str, np.ndarray]:
    """torchmetrics' ``_binning_bucketize``: ``bucketize(right=True) - 1`` over its edges."""
    edges = reference_linspace(n_bins, confidence.dtype.type)
    index = np.searchsorted(edges, confidence, side="right") - 1
    return {
        "count": np.bincount(index, weights=weight, minlength=n_bins + 1),
        "confidence": np.bincount(index, weights=weight * confidence, minlength=n_bins + 1),
        "accuracy": np.bincount(index, weights=weight * accuracy, minlength=n_bins + 1),
    }


def reference_ece_inputs(batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Confidences, accuracies and weights as torchmetrics takes them."""
    y_true, y_pred, w = batch["y_true"], batch["y_pred"], row_weights(batch)
    if y_true.ndim == 1:
        confidence = y_pred.max(axis=1)
        return confidence, (y_pred.argmax(axis=1) == y_true).astype(np.float64), w
    c = y_pred.shape[1]
    return y_pred.reshape(-1), y_true.reshape(-1).astype(np.float64), np.repeat(w, c)


def reference_brier(batch: dict[str, Any]) -> float:
    """scikit-learn's ``brier_score_loss`` for each family, in float64."""
    y_true, w = batch["y_true"], row_weights(batch)
    p = batch["y_pred"].astype(np.float64)
    if y_true.ndim == 1:
        c = p.shape[1]
        per_row = ((np.eye(c)[y_true] - p) ** 2).sum(axis=1)
        per_row = per_row / 2 if c == 2 else per_row
    elif p.shape[1] == 1:
        per_row = (y_true[:, 0] - p[:, 0]) ** 2
    else:
        per_row = ((y_true - p) ** 2).mean(axis=1)
    return float(np.average(per_row, weights=w)) if w.sum() > 0 else 0.0


# ---- bins and edges -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_bins", [1, 3, 7, 10, 15, 100])
def test_bin_index_is_exact_at_and_around_every_edge(dtype: type, n_bins: int) -> None:
    edges = reference_linspace(n_bins, dtype)
    values = np.concatenate(
        [edges, np.nextafter(edges, dtype(0)), np.nextafter(edges, dtype(1))]
    ).astype(dtype)
    values = values[(values >= 0) & (values <= 1)]
    expected = np.searchsorted(edges, values, side="right") - 1
    np.testing.assert_array_equal(_bin_index(values, bin_edges(n_bins, np.dtype(dtype))), expected)


@pytest.mark.parametrize(
    ("dtype", "known"), [(np.float32, TORCH_FLOAT32_EDGES), (np.float64, TORCH_FLOAT64_EDGES)]
)
def test_bin_edges_are_torch_linspace(dtype: type, known: dict[int, dict[int, float]]) -> None:
    for n_bins, differing in known.items():
        expected = [differing.get(k, float(dtype(k / n_bins))) for k in range(n_bins + 1)]
        np.testing.assert_array_equal(reference_linspace(n_bins, dtype), np.array(expected, dtype))
    for n_bins in [*range(1, 200), 999, 4096, 10_000]:
        np.testing.assert_array_equal(
            bin_edges(n_bins, np.dtype(dtype))[:-1], reference_linspace(n_bins, dtype)
        )


@pytest.mark.parametrize(
    ("y_true", "y_pred", "n_bins", "expected"),
    [
        # torchmetrics 1.9 (PyTorch 2.13): BinaryCalibrationError(n_bins)(preds, target) and
        # MulticlassCalibrationError(3, n_bins): a float32 confidence on an edge k / n that
        # torch.linspace rounds upwards falls in the bin below.
        ([1, 0], [0.45, 0.44], 20, 0.05500000715255737),
        ([1, 0], [0.2, 0.19], 15, 0.3050000071525574),
        ([0, 0], [[0.4, 0.3, 0.3], [0.31, 0.39, 0.3]], 15, 0.10500001907348633),
    ],
)
def test_ece_of_confidences_on_an_edge_is_torchmetrics(
    y_true: Any, y_pred: Any, n_bins: int, expected: float
) -> None:
    got = kernels.expected_calibration_error(np.array(y_true), np.float32(y_pred), n_bins=n_bins)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_bin_edges_end_at_one() -> None:
    edges = bin_edges(15, np.dtype(np.float32))
    assert edges[0] == 0 and edges[15] == 1 and edges[16] == np.inf
    assert edges.dtype == np.float32


def test_a_confidence_of_one_forms_its_own_bin() -> None:
    y_true = np.float32([1, 0, 1])
    y_pred = np.float32([1.0, 1.0, 0.95])
    stats = kernels.ece_stats(y_true, y_pred, n_bins=10)
    assert stats["count"].tolist() == [0] * 9 + [1, 2]
    # bin 9: 0.95, right (gap 0.05); bin 10: two 1.0, one right (gap |0.5 - 1| = 0.5)
    # l1 = (1/3) 0.05 + (2/3) 0.5 = 0.35; merged into bin 9 it would be |2/3 - 0.9833| = 0.3167
    value = float(kernels.ece_value(stats))
    assert value == pytest.approx(0.05 / 3 + 2 * 0.5 / 3, rel=1e-6)
    assert float(kernels.ece_value(stats, norm="max")) == pytest.approx(0.5)
    # l2 = sqrt((1/3) 0.05² + (2/3) 0.5²)
    expected_l2 = np.sqrt(0.05**2 / 3 + 2 * 0.5**2 / 3)
    assert float(kernels.ece_value(stats, norm="l2")) == pytest.approx(expected_l2, rel=1e-6)


# ---- expected calibration error -----------------------------------------------------------


def test_ece_hand_values() -> None:
    y_pred = np.float32([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8]])
    labels = np.array([0, 1, 1])
    # bins: 0.9 → 13 (right), 0.7 → 10 (wrong), 0.8 → 12 (right)
    # l1 = (|1 - 0.9| + |0 - 0.7| + |1 - 0.8|) / 3 = (0.1 + 0.7 + 0.2) / 3
    value = float(kernels.expected_calibration_error(labels, y_pred))
    assert value == pytest.approx(1.0 / 3, rel=1e-6)
    # weighted 1, 0, 1: only the right ones weigh, (0.1 + 0.2) / 2
    weighted = kernels.expected_calibration_error(labels, y_pred, np.float32([1, 0, 1]))
    assert float(weighted) == pytest.approx(0.15, rel=1e-6)


def test_ece_binary_uses_the_probability_not_its_maximum_with_one_minus_it() -> None:
    # p = 0.2 with label 0: confidence 0.2 (bin 3), accuracy 0 → gap 0.2 (not |1 - 0.8| = 0.2
    # by luck: take 0.1 → gap 0.1, while max(p, 1 - p) would give |1 - 0.9| = 0.1 too).
    # 0.3 with label 1: gap |1 - 0.3| = 0.7, where max(p, 1 - p) = 0.7 would be wrong (|0 - 0.7|).
    value = kernels.expected_calibration_error(np.float32([0, 1]), np.float32([0.1, 0.3]))
    assert float(value) == pytest.approx((0.1 + 0.7) / 2, rel=1e-6)


@PROPERTY
@given(st.data())
def test_ece_bins_match_torchmetrics_binning(data: st.DataObject) -> None:
    family = data.draw(st.sampled_from(["labels", "binary", "multi_label"]))
    batch = data.draw(batches(family))
    n_bins = data.draw(st.sampled_from([1, 5, 10, 15]))
    got = kernels.ece_stats(batch["y_true"], batch["y_pred"], batch["sample_weight"], n_bins=n_bins)
    confidence, accuracy, weight = reference_ece_inputs(batch)
    expected = reference_bins(confidence.astype(np.float32), accuracy, weight, n_bins)
    for key in ("count", "confidence", "accuracy"):
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-12, atol=1e-12, err_msg=key)


def test_ece_from_logits_is_softmax_or_sigmoid_first() -> None:
    rng = np.random.default_rng(3)
    logits = (rng.normal(size=(50, 4)) * 3).astype(np.float32)
    labels = rng.integers(0, 4, 50)
    e = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
    softmax = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    np.testing.assert_allclose(
        kernels.expected_calibration_error(labels, logits, from_logits=True),
        kernels.expected_calibration_error(labels, softmax),
        rtol=1e-5,
    )
    targets = (rng.random((50, 4)) < 0.3).astype(np.float32)
    sigmoid = (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
    np.testing.assert_allclose(
        kernels.expected_calibration_error(targets, logits, from_logits=True),
        kernels.expected_calibration_error(targets, sigmoid),
        rtol=1e-5,
    )


@pytest.mark.parametrize("shape", ["sparse", "uniform"])
def test_big_multi_label_batches_match_the_reference(shape: str) -> None:
    rng = np.random.default_rng(11)
    n, c = 1200, 250  # 300k elements: several blocks, on several threads
    y_pred = rng.random((n, c), dtype=np.float32)
    if shape == "sparse":  # most elements in bin 0: the blocks that bin only the others
        y_pred = y_pred**8
    targets = (rng.random((n, c)) < 0.1).astype(np.float32)
    for weight in (None, rng.random(n).astype(np.float32)):
        batch = {"y_true": targets, "y_pred": y_pred, "sample_weight": weight}
        got = kernels.ece_stats(targets, y_pred, weight)
        confidence, accuracy, w = reference_ece_inputs(batch)
        expected = reference_bins(confidence, accuracy, w, 15)
        for key in got:
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-6, err_msg=key)


# ---- Brier score --------------------------------------------------------------------------


def test_brier_hand_values() -> None:
    # binary: ((0 - 0.25)² + (1 - 0.5)²) / 2 = (0.0625 + 0.25) / 2
    assert float(kernels.brier_score(np.array([0, 1]), np.float32([0.25, 0.5]))) == 0.15625
    # three classes, label 1: 0.1² + (1 - 0.7)² + 0.2² = 0.01 + 0.09 + 0.04, not halved
    value = kernels.brier_score(np.array([1]), np.float32([[0.1, 0.7, 0.2]]))
    assert float(value) == pytest.approx(0.14, rel=1e-6)
    # two columns, label 0: (1 - 0.75)² + 0.25² halved = the binary score of column 1
    two = kernels.brier_score(np.array([0]), np.float32([[0.75, 0.25]]))
    assert float(two) == pytest.approx(0.0625)
    # multi-label: the mean over all four elements, 0.1² + 0.2² + (1 - 0.6)² + 0 over 4
    multi = kernels.brier_score(np.float32([[0, 0, 1, 1]]), np.float32([[0.1, 0.2, 0.6, 1.0]]))
    assert float(multi) == pytest.approx((0.01 + 0.04 + 0.16) / 4, rel=1e-6)


def test_brier_of_a_confident_right_row_is_not_lost_to_cancellation() -> None:
    # Σ p² - 2 p_t + 1 would cancel to float32 noise here; the score is 1e-6 + 1e-6 (exact: 2e-6)
    value = kernels.brier_score(np.array([0]), np.float32([[0.999, 0.001, 0.0]]))
    assert float(value) == pytest.approx(2e-6, rel=1e-4)


@PROPERTY
@given(st.data())
def test_brier_matches_scikit_learn_formula(data: st.DataObject) -> None:
    family = data.draw(st.sampled_from(["labels", "binary", "multi_label"]))
    batch = data.draw(batches(family))
    got = kernels.brier_score(batch["y_true"], batch["y_pred"], batch["sample_weight"])
    assert float(got) == pytest.approx(reference_brier(batch), rel=1e-6, abs=1e-7)


def test_brier_from_logits() -> None:
    logits = np.float32([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]])
    labels = np.array([0, 2])
    e = np.exp(logits.astype(np.float64))
    softmax = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    np.testing.assert_allclose(
        kernels.brier_score(labels, logits, from_logits=True),
        kernels.brier_score(labels, softmax),
        rtol=1e-6,
    )


# ---- the calibration report ----------------------------------------------------------------


def test_calibration_report_shape() -> None:
    labels = np.array([0, 1, 1, 0])
    y_pred = np.float32([[1.0, 0.0], [0.3, 0.7], [0.55, 0.45], [0.9, 0.1]])
    report = kernels.calibration_report(kernels.calibration_stats(labels, y_pred, n_bins=4))
    assert report["n_bins"] == 4
    # four bins of [k/4, (k+1)/4), then the bin of confidences equal to 1 (row 0)
    assert [(b["lower"], b["upper"]) for b in report["bins"]] == [
        (0.0, 0.25),
        (0.25, 0.5),
        (0.5, 0.75),
        (0.75, 1.0),
        (1.0, 1.0),
    ]
    assert [b["count"] for b in report["bins"]] == [0, 0, 2, 1, 1]
    assert report["bins"][0]["confidence"] is None and report["bins"][0]["accuracy"] is None
    # bin 2: 0.7 (right) and 0.55 (wrong): confidence 0.625, accuracy 0.5
    assert report["bins"][2]["confidence"] == pytest.approx(0.625)
    assert report["bins"][2]["accuracy"] == 0.5
    # ece = (2/4) 0.125 + (1/4) |1 - 0.9| + (1/4) 0; mce = 0.125
    assert report["ece"] == pytest.approx(0.125 / 2 + 0.1 / 4, rel=1e-6)
    assert report["mce"] == pytest.approx(0.125, rel=1e-6)
    # brier: two columns, halved: (0 + 0.09 + 0.3025 + 0.01)
    assert report["brier"] == pytest.approx((0 + 0.09 + 0.3025 + 0.01) / 4, rel=1e-6)


def test_calibration_report_leaves_out_an_empty_bin_of_ones() -> None:
    report = kernels.calibration_report(
        kernels.calibration_stats(np.float32([0, 1]), np.float32([0.2, 0.8]))
    )
    assert len(report["bins"]) == 15
    assert sum(b["count"] for b in report["bins"]) == 2


# ---- merging, weights ---------------------------------------------------------------------

PARAMS: dict[str, list[dict[str, Any]]] = {
    "expected_calibration_error": [{}, {"norm": "max", "n_bins": 10}, {"norm": "l2", "n_bins": 4}],
    "brier_score": [{}],
    "calibration": [{}, {"n_bins": 6}],
}


def _split(name: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = MERGEABLE[name]
    return (
        {k: v for k, v in params.items() if k in spec.stats_params},
        {k: v for k, v in params.items() if k in spec.finalize_params},
    )


def _values(result: Any) -> np.ndarray:
    """A metric's value, or a report's numbers flattened, for comparisons."""
    if isinstance(result, dict):
        numbers = [result["ece"], result["mce"], result["brier"]]
        numbers += [b[k] or 0 for b in result["bins"] for k in ("count", "confidence", "accuracy")]
        return np.asarray(numbers, dtype=np.float64)
    return np.asarray(result, dtype=np.float64)


@PROPERTY
@given(st.data())
def test_any_split_merged_in_any_order_gives_the_one_shot_value(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(PARAMS)))
    params = data.draw(st.sampled_from(PARAMS[name]))
    batch = data.draw(batches(data.draw(st.sampled_from(["labels", "binary", "multi_label"]))))
    n = len(batch["y_pred"])
    cuts = (
        sorted(data.draw(st.lists(st.integers(1, n - 1), max_size=4, unique=True))) if n > 1 else []
    )
    order = data.draw(st.permutations(list(range(len(cuts) + 1))))
    stats_params, finalize_params = _split(name, params)
    spec = MERGEABLE[name]
    w = batch["sample_weight"]
    parts = [
        spec.stats(
            batch["y_true"][a:b],
            batch["y_pred"][a:b],
            None if w is None else w[a:b],
            **stats_params,
        )
        for a, b in pairwise([0, *cuts, n])
    ]
    merged = parts[order[0]]
    for i in order[1:]:
        merged = merge_stats(merged, parts[i])
    whole = spec.stats(batch["y_true"], batch["y_pred"], w, **stats_params)
    assert set(merged) == set(whole) == set(spec.keys)
    for key in whole:
        np.testing.assert_allclose(merged[key], whole[key], rtol=1e-12, atol=1e-12, err_msg=key)
    np.testing.assert_allclose(
        _values(spec.finalize(merged, **finalize_params)),
        _values(spec.finalize(whole, **finalize_params)),
        rtol=1e-6,
        atol=1e-12,
    )


@PROPERTY
@given(st.data())
def test_weights_of_ones_equal_no_weights(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(PARAMS)))
    params = data.draw(st.sampled_from(PARAMS[name]))
    batch = data.draw(
        batches(data.draw(st.sampled_from(["labels", "binary", "multi_label"])), weighted=False)
    )
    spec = MERGEABLE[name]
    ones = np.ones(len(batch["y_pred"]), dtype=np.float32)
    np.testing.assert_allclose(
        _values(spec.compute(batch["y_true"], batch["y_pred"], None, **params)),
        _values(spec.compute(batch["y_true"], batch["y_pred"], ones, **params)),
        rtol=1e-12,
    )


@PROPERTY
@given(st.data())
def test_integer_labels_equal_a_one_hot_computation(data: st.DataObject) -> None:
    """Single-label statistics from indices equal the ones written out with a one-hot matrix."""
    batch = data.draw(batches("labels"))
    labels, y_pred = batch["y_true"], batch["y_pred"]
    c = y_pred.shape[1]
    onehot = np.eye(c)[labels]
    w = row_weights(batch)
    per_row = ((onehot - y_pred.astype(np.float64)) ** 2).sum(axis=1) / (2 if c == 2 else 1)
    stats = kernels.brier_stats(labels, y_pred, batch["sample_weight"])
    assert float(stats["brier_sum"]) == pytest.approx(float(np.dot(w, per_row)), rel=1e-6, abs=1e-7)
    # correct = the one-hot row's entry at the first argmax
    correct = onehot[np.arange(len(labels)), y_pred.argmax(axis=1)]
    accuracy = kernels.ece_stats(labels, y_pred, batch["sample_weight"])["accuracy"]
    assert float(np.sum(accuracy)) == pytest.approx(float(np.dot(w, correct)))
