"""The registry: names, parameters, and how ``accuracy`` resolves."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service import encodings, registry
from service.errors import InvalidInput, NotFound, PayloadTooLarge

LOSS_NAMES = [
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_crossentropy",
    "categorical_focal_crossentropy",
    "binary_focal_crossentropy",
]
METRIC_NAMES = [
    "binary_accuracy",
    "categorical_accuracy",
    "sparse_categorical_accuracy",
    "top_k_categorical_accuracy",
    "sparse_top_k_categorical_accuracy",
    "subset_accuracy",
    "accuracy",
    "precision",
    "recall",
    "f1_score",
    "fbeta_score",
    "auc",
    "expected_calibration_error",
    "brier_score",
]


def parse(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    spec: registry.LossSpec | registry.MetricSpec
    spec = registry.get_loss(name) if name in registry.LOSSES else registry.get_metric(name)
    return registry.parse_params(name, spec.params, raw)


def rejects(name: str, raw: dict[str, Any], *fragments: str) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse(name, raw)
    error = info.value
    assert error.status == 422
    for fragment in fragments:
        assert fragment in error.detail, f"{fragment!r} not in {error.detail!r}"
    return error


def metric(name: str, y_true: Any, y_pred: Any, **raw: Any) -> tuple[float, str]:
    params = parse(name, raw)
    batch = encodings.prepare(np.asarray(y_true), np.asarray(y_pred))
    return registry.compute_metric(name, batch, params)


# ---- the catalogue ----------------------------------------------------------------------


def test_the_contract_names() -> None:
    assert sorted(registry.LOSSES) == sorted(LOSS_NAMES)
    assert sorted(registry.METRICS) == sorted(METRIC_NAMES)
    for name in LOSS_NAMES:
        assert registry.get_loss(name).name == name
    for name in METRIC_NAMES:
        assert registry.get_metric(name).name == name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "categorical_crossentropy",
            {
                "from_logits": False,
                "label_smoothing": 0.0,
                "axis": -1,
                "reduction": "sum_over_batch_size",
            },
        ),
        (
            "sparse_categorical_crossentropy",
            {
                "from_logits": False,
                "ignore_class": None,
                "axis": -1,
                "reduction": "sum_over_batch_size",
            },
        ),
        (
            "binary_crossentropy",
            {
                "from_logits": False,
                "label_smoothing": 0.0,
                "axis": -1,
                "reduction": "sum_over_batch_size",
            },
        ),
        (
            "categorical_focal_crossentropy",
            {
                "alpha": 0.25,
                "gamma": 2.0,
                "from_logits": False,
                "label_smoothing": 0.0,
                "axis": -1,
                "reduction": "sum_over_batch_size",
            },
        ),
        (
            "binary_focal_crossentropy",
            {
                "apply_class_balancing": False,
                "alpha": 0.25,
                "gamma": 2.0,
                "from_logits": False,
                "label_smoothing": 0.0,
                "axis": -1,
                "reduction": "sum_over_batch_size",
            },
        ),
        ("binary_accuracy", {"threshold": 0.5, "from_logits": False}),
        ("top_k_categorical_accuracy", {"k": 5}),
        ("sparse_top_k_categorical_accuracy", {"k": 5}),
        ("categorical_accuracy", {}),
    ],
)
def test_keras_defaults(name: str, expected: dict[str, Any]) -> None:
    assert parse(name, {}) == expected


def test_unknown_loss_lists_the_known_ones() -> None:
    with pytest.raises(NotFound) as info:
        registry.get_loss("categorical_hinge")
    assert info.value.status == 404
    assert "'categorical_hinge'" in info.value.detail
    for name in LOSS_NAMES:
        assert name in info.value.detail
    assert info.value.errors[0].loc == ("path", "name")


def test_unknown_metric_lists_the_known_ones() -> None:
    with pytest.raises(NotFound) as info:
        registry.get_metric("roc_auc")
    assert "'roc_auc'" in info.value.detail
    for name in METRIC_NAMES:
        assert name in info.value.detail


def test_a_loss_is_not_a_metric() -> None:
    with pytest.raises(NotFound):
        registry.get_metric("categorical_crossentropy")
    with pytest.raises(NotFound):
        registry.get_loss("accuracy")


# ---- parameters -------------------------------------------------------------------------


def test_unknown_parameter_names_what_the_loss_takes() -> None:
    error = rejects(
        "sparse_categorical_crossentropy",
        {"label_smoothing": 0.1},
        "sparse_categorical_crossentropy does not take `label_smoothing`",
        "`from_logits`",
        "`ignore_class`",
        "`axis`",
        "`reduction`",
    )
    assert error.errors[0].loc == ("label_smoothing",)
    rejects("categorical_crossentropy", {"ignore_class": 0}, "does not take `ignore_class`")
    rejects("binary_crossentropy", {"gamma": 2}, "does not take `gamma`")
    rejects("categorical_accuracy", {"k": 2}, "does not take `k`", "no parameters")
    rejects("categorical_crossentropy", {"dtype": "float64"}, "does not take `dtype`")


def test_unknown_parameter_location_is_prefixed() -> None:
    spec = registry.get_loss("binary_crossentropy")
    with pytest.raises(InvalidInput) as info:
        registry.parse_params(spec.name, spec.params, {"beta": 1}, ("losses", 0))
    assert info.value.errors[0].loc == ("losses", 0, "beta")


@pytest.mark.parametrize(
    ("name", "raw", "fragments"),
    [
        ("categorical_crossentropy", {"label_smoothing": True}, ["wrong type", "a number"]),
        ("categorical_crossentropy", {"label_smoothing": "0.1"}, ["wrong type", "'0.1'"]),
        ("categorical_crossentropy", {"from_logits": "true"}, ["wrong type", "true or false"]),
        ("categorical_crossentropy", {"from_logits": 1}, ["wrong type", "received 1"]),
        ("top_k_categorical_accuracy", {"k": 1.5}, ["wrong type", "an integer", "1.5"]),
        ("top_k_categorical_accuracy", {"k": True}, ["wrong type", "an integer"]),
        ("categorical_crossentropy", {"axis": "last"}, ["wrong type"]),
        ("categorical_crossentropy", {"reduction": 1}, ["wrong type", "one of"]),
        ("categorical_focal_crossentropy", {"alpha": None}, ["must not be null"]),
        ("binary_accuracy", {"threshold": float("nan")}, ["must be finite"]),
    ],
)
def test_wrong_types(name: str, raw: dict[str, Any], fragments: list[str]) -> None:
    rejects(name, raw, *fragments)


@pytest.mark.parametrize(
    ("name", "raw", "fragments"),
    [
        ("categorical_crossentropy", {"label_smoothing": 1.5}, ["out of range", "[0, 1]", "1.5"]),
        ("categorical_crossentropy", {"label_smoothing": -0.1}, ["out of range", "-0.1"]),
        ("top_k_categorical_accuracy", {"k": 0}, ["out of range", "received 0"]),
        ("sparse_top_k_categorical_accuracy", {"k": -2}, ["out of range"]),
        ("categorical_focal_crossentropy", {"alpha": 1.25}, ["out of range"]),
        ("categorical_focal_crossentropy", {"gamma": -1}, ["out of range"]),
        # Keras' F1Score/FBetaScore: a threshold in (0, 1], a beta above 0.
        ("f1_score", {"threshold": 0.0}, ["out of range", "in (0, 1]", "received 0.0"]),
        ("fbeta_score", {"threshold": -0.5}, ["out of range", "in (0, 1]"]),
        ("fbeta_score", {"threshold": 1.5}, ["out of range", "in (0, 1]"]),
        ("fbeta_score", {"beta": 0}, ["out of range", "in (0, 1e+154]", "received 0.0"]),
        # β² is taken in float64: past 1e154 the score would not be a number.
        ("fbeta_score", {"beta": 1e160}, ["out of range", "in (0, 1e+154]", "received 1e+160"]),
        ("categorical_crossentropy", {"reduction": "auto"}, ["'sum_over_batch_size'", "'auto'"]),
    ],
)
def test_out_of_range(name: str, raw: dict[str, Any], fragments: list[str]) -> None:
    rejects(name, raw, *fragments)


def test_the_bounds_themselves() -> None:
    assert parse("f1_score", {"threshold": 1.0})["threshold"] == 1.0
    assert parse("fbeta_score", {"threshold": 1e-9, "beta": 1e-9})["beta"] == 1e-9
    assert parse("fbeta_score", {"beta": 1e154})["beta"] == 1e154
    info = {p.name: p.describe() for p in registry.METRICS["fbeta_score"].params}
    assert info["threshold"]["exclusive_minimum"] == 0.0 and "minimum" not in info["threshold"]


def test_json_like_numbers_are_accepted() -> None:
    params = parse("categorical_focal_crossentropy", {"alpha": 1, "gamma": 0, "label_smoothing": 0})
    assert params["alpha"] == 1.0 and isinstance(params["alpha"], float)
    assert params["gamma"] == 0.0 and isinstance(params["gamma"], float)
    params = parse("top_k_categorical_accuracy", {"k": 3.0})
    assert params["k"] == 3 and isinstance(params["k"], int)
    params = parse("sparse_categorical_crossentropy", {"ignore_class": None, "axis": 1})
    assert params["ignore_class"] is None and params["axis"] == 1
    assert parse("sparse_categorical_crossentropy", {"ignore_class": -1})["ignore_class"] == -1


@pytest.mark.parametrize(
    "reduction", ["sum_over_batch_size", "mean", "sum", "mean_with_sample_weight", "none"]
)
def test_every_reduction_is_accepted(reduction: str) -> None:
    assert parse("binary_crossentropy", {"reduction": reduction})["reduction"] == reduction


def test_common_parameters() -> None:
    common = registry.parse_params("The request", registry.COMMON, {})
    assert common == {"label_encoding": None, "dtype": "float32"}
    common = registry.parse_params(
        "The request", registry.COMMON, {"label_encoding": "soft", "dtype": "float64"}
    )
    assert common == {"label_encoding": "soft", "dtype": "float64"}
    with pytest.raises(InvalidInput, match="float16"):
        registry.parse_params("The request", registry.COMMON, {"dtype": "float16"})
    with pytest.raises(InvalidInput, match="'dense'"):
        registry.parse_params("The request", registry.COMMON, {"label_encoding": "dense"})


# ---- accuracy -----------------------------------------------------------------------------

P3 = np.float32([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])


@pytest.mark.parametrize(
    ("y_true", "y_pred", "resolved", "value"),
    [
        ([1, 2, 2], P3, "sparse_categorical_accuracy", 2 / 3),
        ([[1], [2], [2]], P3, "sparse_categorical_accuracy", 2 / 3),
        ([[0, 1, 0], [0, 0, 1], [0, 0, 1]], P3, "categorical_accuracy", 2 / 3),
        ([[0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0, 0, 1]], P3, "categorical_accuracy", 2 / 3),
        ([[1], [0], [1]], [[0.9], [0.6], [0.4]], "binary_accuracy", 1 / 3),
        ([1, 0, 1], [0.9, 0.6, 0.4], "binary_accuracy", 1 / 3),
        # P3 > 0.5 is [[0, 0, 0], [1, 0, 0], [0, 0, 1]] (0.5 is not above 0.5)
        ([[0, 1, 1], [1, 0, 0], [0, 0, 1]], P3, "subset_accuracy", 2 / 3),
        ([[0, 0, 0], [1, 0, 0], [1, 1, 0]], P3, "subset_accuracy", 2 / 3),
        ([[0, 0, 0], [1, 1, 0], [1, 1, 0]], P3, "subset_accuracy", 1 / 3),
    ],
)
def test_accuracy_resolves_from_the_labels(
    y_true: Any, y_pred: Any, resolved: str, value: float
) -> None:
    got, name = metric("accuracy", y_true, y_pred)
    assert name == resolved
    assert got == pytest.approx(value)
    # and it is the same number as the metric it resolved to
    direct, same = metric(resolved, y_true, y_pred)
    assert same == resolved
    assert got == direct


def test_accuracy_resolution_table() -> None:
    assert registry.ACCURACY_FOR == {
        "sparse": "sparse_categorical_accuracy",
        "one_hot": "categorical_accuracy",
        "soft": "categorical_accuracy",
        "binary": "binary_accuracy",
        "multi_hot": "subset_accuracy",
    }
    assert set(registry.ACCURACY_FOR) == set(encodings.ENCODINGS)


def test_accuracy_follows_a_stated_encoding() -> None:
    y_true = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    batch = encodings.prepare(y_true, P3, label_encoding="multi_hot")
    assert registry.resolve_metric("accuracy", batch) == "subset_accuracy"
    value, name = registry.compute_metric("accuracy", batch, parse("accuracy", {}))
    # P3 > 0.5 is [[0, 0, 0], [1, 0, 0], [0, 0, 1]]: rows 1 and 2 match exactly
    assert (name, value) == ("subset_accuracy", pytest.approx(2 / 3))
    # detected, the same labels are one-hot: argmax of P3 is [1, 0, 2], all right
    batch = encodings.prepare(y_true, P3)
    assert registry.compute_metric("accuracy", batch, parse("accuracy", {})) == (
        1.0,
        "categorical_accuracy",
    )


@pytest.mark.parametrize(
    "y_true", [[[0.1, 0.8, 0.1], [0, 1, 0], [0, 0, 1]], [[1, 1, 0], [1, 0, 0], [0, 0, 1]]]
)
@pytest.mark.parametrize(
    "name", ["sparse_categorical_accuracy", "sparse_top_k_categorical_accuracy"]
)
def test_soft_or_multi_hot_labels_for_a_sparse_metric(y_true: Any, name: str) -> None:
    with pytest.raises(InvalidInput, match="integer labels or one-hot rows") as info:
        metric(name, y_true, P3)
    assert "use " in info.value.detail


def test_sparse_metric_accepts_one_hot_rows() -> None:
    assert metric("sparse_categorical_accuracy", np.eye(3)[[1, 2, 2]], P3) == (
        pytest.approx(2 / 3),
        "sparse_categorical_accuracy",
    )


def test_threshold_metrics_need_targets_of_y_pred_shape() -> None:
    for name in ("binary_accuracy", "subset_accuracy"):
        with pytest.raises(InvalidInput, match="targets of `y_pred`'s shape"):
            metric(name, [1, 0, 2], P3)
    with pytest.raises(InvalidInput, match="0/1 targets"):
        metric("subset_accuracy", [[0.1, 0.8, 0.1], [0, 1, 0], [0, 0, 1]], P3)


def test_argmax_metrics_need_two_classes() -> None:
    with pytest.raises(InvalidInput, match="at least 2 classes"):
        metric("categorical_accuracy", [[1], [0]], [[0.9], [0.1]])


# ---- does the batch fit: one check, from the spec's properties ---------------------------

#: What each loss, metric and report accepts: a change here changes which requests are 422.
ACCEPTS: dict[str, set[str]] = {
    "categorical_crossentropy": {"sparse", "one_hot", "soft", "multi_hot"},
    "sparse_categorical_crossentropy": {"sparse", "one_hot"},
    "binary_crossentropy": {"binary", "one_hot", "soft", "multi_hot"},
    "categorical_focal_crossentropy": {"sparse", "one_hot", "soft", "multi_hot"},
    "binary_focal_crossentropy": {"binary", "one_hot", "soft", "multi_hot"},
    "binary_accuracy": {"binary", "one_hot", "soft", "multi_hot"},
    "categorical_accuracy": {"sparse", "one_hot", "soft", "multi_hot"},
    "sparse_categorical_accuracy": {"sparse", "one_hot"},
    "top_k_categorical_accuracy": {"sparse", "one_hot", "soft", "multi_hot"},
    "sparse_top_k_categorical_accuracy": {"sparse", "one_hot"},
    "subset_accuracy": {"binary", "one_hot", "multi_hot"},
    # The rest (precision to brier_score, accuracy, every report) take any encoding.
    **{
        name: set(encodings.ENCODINGS)
        for name in (*registry.METRICS, *registry.REPORTS)
        if not name.endswith("_accuracy")
    },
}
SPECS: dict[str, registry.Spec] = {**registry.LOSSES, **registry.METRICS, **registry.REPORTS}
#: One batch of each encoding, three classes (one output for binary).
BATCHES: dict[str, tuple[Any, Any]] = {
    "sparse": ([1, 0, 2], P3),
    "one_hot": ([[0, 1, 0], [1, 0, 0], [0, 0, 1]], P3),
    "soft": ([[0.1, 0.8, 0.1], [0.6, 0.4, 0.0], [0.0, 0.2, 0.8]], P3),
    "multi_hot": ([[0, 1, 1], [1, 0, 0], [0, 0, 0]], P3),
    "binary": ([[1], [0], [1]], [[0.8], [0.3], [0.6]]),
}
REFUSED = [(n, e) for n in SPECS for e in encodings.ENCODINGS if e not in ACCEPTS[n]]


def fit_batch(encoding: str) -> encodings.Batch:
    y_true, y_pred = BATCHES[encoding]
    b = encodings.prepare(np.asarray(y_true), np.asarray(y_pred))
    assert b.encoding == encoding
    return b


def spec_params(spec: registry.Spec, **raw: Any) -> dict[str, Any]:
    return registry.parse_params(spec.name, spec.params, raw)


def test_every_spec_declares_the_encodings_it_accepts() -> None:
    assert {name: set(spec.accepts) for name, spec in SPECS.items()} == ACCEPTS
    for spec in SPECS.values():
        # what a refusal tells the client it needed
        assert spec.needs and (spec.accepts == registry.ANY_LABELS) == (
            spec.needs == "labels of any encoding"
        )


@pytest.mark.parametrize("encoding", encodings.ENCODINGS)
def test_the_loss_and_accuracy_a_refusal_suggests_accept_the_labels(encoding: str) -> None:
    assert encoding in registry.LOSSES[registry.FITTING_LOSS[encoding]].accepts
    assert encoding in registry.METRICS[registry.ACCURACY_FOR[encoding]].accepts


@pytest.mark.parametrize(("name", "encoding"), REFUSED)
def test_a_refusal_says_what_is_wrong_what_was_expected_received_and_what_fits(
    name: str, encoding: str
) -> None:
    spec = SPECS[name]
    with pytest.raises(InvalidInput) as info:
        registry.check_fits(spec, fit_batch(encoding), spec_params(spec))
    detail = info.value.detail
    assert detail.startswith(f"{name} needs {spec.needs}, but ")
    assert encoding in detail
    assert f": use {spec.fitting[encoding]}" in detail
    # a loss over classes is refused a single output at `y_pred`; the rest at `y_true`
    at_pred = encoding == "binary" and name in registry.LOSSES
    assert info.value.errors[0].loc == (("y_pred",) if at_pred else ("y_true",))


@pytest.mark.parametrize("name", list(SPECS))
def test_every_accepted_encoding_fits(name: str) -> None:
    spec = SPECS[name]
    for encoding in ACCEPTS[name]:
        registry.check_fits(spec, fit_batch(encoding), spec_params(spec))


@pytest.mark.parametrize("name", ["precision", "recall"])
def test_class_id_and_top_k_are_bounded_by_the_batch_columns(name: str) -> None:
    spec = registry.METRICS[name]
    for encoding, columns in (("one_hot", 3), ("binary", 1)):
        b = fit_batch(encoding)
        registry.check_fits(spec, b, spec_params(spec, class_id=columns - 1, top_k=columns))
        with pytest.raises(InvalidInput, match=f"the batch has {columns} class column") as info:
            registry.check_fits(spec, b, spec_params(spec, class_id=columns))
        assert info.value.errors[0].loc == ("class_id",)
        with pytest.raises(InvalidInput, match=f"expected at most {columns}") as info:
            registry.check_fits(spec, b, spec_params(spec, top_k=columns + 1))
        assert info.value.errors[0].loc == ("top_k",)


def test_auc_statistics_are_bounded_by_the_cell_limit() -> None:
    spec = registry.METRICS["auc"]
    b = encodings.prepare(np.eye(12)[[0, 1]], np.full((2, 12), 1 / 12))
    # 100_000 thresholds × 12 columns × 4 counts is past 2^22; pooled, 400_000 is not
    registry.check_fits(spec, b, spec_params(spec, num_thresholds=100_000))
    with pytest.raises(PayloadTooLarge, match="over the limit of 4194304") as info:
        registry.check_fits(spec, b, spec_params(spec, num_thresholds=100_000, multi_label=True))
    assert "`multi_label: false`" in info.value.detail
    assert info.value.errors[0].loc == ("num_thresholds",)


def test_a_report_with_class_pairs_is_bounded_by_the_class_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "MAX_CONFUSION_CLASSES", [2])
    three = fit_batch("sparse")
    with pytest.raises(InvalidInput, match="LOSS_SERVICE_MAX_CONFUSION_CLASSES") as info:
        registry.check_fits(registry.REPORTS["confusion_matrix"], three, {})
    assert "3 classes" in info.value.detail and info.value.errors[0].loc == ("reports",)
    # a binary batch is a 2 × 2 matrix; the per-class report has no class pairs
    registry.check_fits(registry.REPORTS["confusion_matrix"], fit_batch("binary"), {})
    registry.check_fits(registry.REPORTS["per_class"], three, {})


def test_integer_labels_are_checked_against_the_classes_with_ignore_class() -> None:
    b = encodings.prepare(np.array([1, 3, 2]), P3)
    for name in ("sparse_categorical_accuracy", "auc", "per_class"):
        spec = SPECS[name]
        with pytest.raises(InvalidInput, match="received 3 at index") as info:
            registry.check_fits(spec, b, spec_params(spec))
        assert info.value.errors[0].loc == ("y_true", 1)
        # Which of the request's losses, metrics and reports refused them: a loss's
        # ignore_class does not reach the others.
        assert f"as {name} reads them" in info.value.errors[0].msg
    loss = registry.LOSSES["sparse_categorical_crossentropy"]
    registry.check_fits(loss, b, spec_params(loss, ignore_class=3))


def test_only_losses_need_predictions_that_can_be_probabilities() -> None:
    b = encodings.prepare(np.array([1, 0, 2]), -P3)
    for name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        loss = registry.LOSSES[name]
        with pytest.raises(InvalidInput, match=f"cannot be probabilities for {name}"):
            registry.check_fits(loss, b, spec_params(loss))
        registry.check_fits(loss, b, spec_params(loss, from_logits=True))
    for name in ("categorical_accuracy", "auc", "brier_score", "per_class"):
        registry.check_fits(SPECS[name], b, spec_params(SPECS[name]))


@pytest.mark.parametrize("name", ["binary_accuracy", "accuracy"])
def test_binary_accuracy_from_logits_thresholds_the_sigmoid(name: str) -> None:
    y_true = [[1], [0], [1], [0]]
    logits = [[2.0], [-2.0], [0.4], [0.3]]
    # σ(2) = 0.88, σ(-2) = 0.12, σ(0.4) = 0.599, σ(0.3) = 0.574: [1, 0, 1, 1] against the labels
    value, resolved = metric(name, y_true, logits, from_logits=True)
    assert resolved == "binary_accuracy"
    assert value == 0.75
    # compared as given: [1, 0, 0, 0], so rows 0, 1 and 3 are right
    assert metric(name, y_true, logits)[0] == 0.75
    # a threshold of 0.35 tells them apart: logits 0.4 and 0.3 → [1, 0, 1, 0], σ → [1, 0, 1, 1]
    assert metric(name, y_true, logits, threshold=0.35)[0] == 1.0
    assert metric(name, y_true, logits, threshold=0.35, from_logits=True)[0] == 0.75
    # a threshold of 0.58 on σ: σ(0.4) = 0.599 passes, σ(0.3) = 0.574 does not
    sigma = 1 / (1 + np.exp(-np.array([2.0, -2.0, 0.4, 0.3])))
    expected = np.mean((sigma > 0.58) == np.array([1, 0, 1, 0]))
    assert metric(name, y_true, logits, from_logits=True, threshold=0.58)[0] == expected == 1.0


def test_subset_accuracy_from_logits() -> None:
    y_true = [[1, 0, 1], [0, 1, 0]]
    logits = [[3.0, -1.0, 0.1], [-0.1, 2.0, -0.2]]
    # σ > 0.5 where the logit is > 0: [1, 0, 1] and [0, 1, 0], both exact
    assert metric("subset_accuracy", y_true, logits, from_logits=True)[0] == 1.0
    # as given, 0.1 is not above 0.5: row 0 misses
    assert metric("subset_accuracy", y_true, logits)[0] == 0.5


def test_argmax_metrics_ignore_from_logits() -> None:
    logits = np.float32([[-1.0, 2.0, 0.5], [3.0, 0.0, -2.0], [0.0, 0.1, -0.1]])
    a = metric("accuracy", [1, 0, 2], logits, from_logits=True)
    b = metric("accuracy", [1, 0, 2], logits)
    assert a == b == (pytest.approx(2 / 3), "sparse_categorical_accuracy")
