"""Label encodings: detection, stated encodings, and every invalid input."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from service import encodings, registry
from service.encodings import prepare
from service.errors import InvalidInput

P3 = np.float32([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])  # two rows, three classes


def fails(fn: Callable[[], Any], *fragments: str) -> InvalidInput:
    """``fn()`` raises a 422 whose detail holds every fragment; returns the error."""
    with pytest.raises(InvalidInput) as info:
        fn()
    error = info.value
    assert error.status == 422
    for fragment in fragments:
        assert fragment in error.detail, f"{fragment!r} not in {error.detail!r}"
    assert error.errors and error.errors[0].msg == error.detail
    return error


def batch(y_true: Any, y_pred: Any, **kw: Any) -> encodings.Batch:
    return prepare(np.asarray(y_true), np.asarray(y_pred), **kw)


def compute(name: str, y_true: Any, y_pred: Any, **raw: Any) -> Any:
    spec = registry.get_loss(name)
    params = registry.parse_params(name, spec.params, raw)
    b = batch(y_true, y_pred, axis=params["axis"])
    return registry.compute_loss(spec, b, params)


# ---- detection --------------------------------------------------------------------------


def test_sparse_labels() -> None:
    b = batch([1, 0], P3)
    assert b.encoding == "sparse"
    assert b.dense is None
    np.testing.assert_array_equal(b.labels, [1, 0])
    assert b.labels is not None and b.labels.dtype == np.int64
    assert (b.n_classes, b.sample_shape, b.n_samples, b.n_rows) == (3, (2,), 2, 2)
    assert b.y_pred.dtype == np.float32 and b.y_pred.shape == (2, 3)


def test_sparse_labels_of_shape_n_by_one() -> None:
    b = batch([[1], [0]], P3)
    assert b.encoding == "sparse"
    np.testing.assert_array_equal(b.labels, [1, 0])
    assert b.sample_shape == (2,)


def test_sparse_labels_as_json_floats() -> None:
    b = batch([1.0, 2.0], P3)
    assert b.encoding == "sparse"
    np.testing.assert_array_equal(b.labels, [1, 2])


def test_sparse_labels_on_a_sequence_batch() -> None:
    y_pred = np.full((2, 4, 3), 1 / 3)
    labels = np.array([[0, 1, 2, 0], [2, 2, 1, 0]])
    b = batch(labels, y_pred)
    assert b.encoding == "sparse"
    assert (b.sample_shape, b.n_rows, b.n_classes) == ((2, 4), 8, 3)
    np.testing.assert_array_equal(b.labels, labels.ravel())
    b1 = batch(labels[..., None], y_pred)
    assert b1.encoding == "sparse"
    np.testing.assert_array_equal(b1.labels, labels.ravel())


def test_sparse_labels_with_classes_on_axis_1() -> None:
    y_pred = np.random.default_rng(0).random((2, 3, 4))  # classes on axis 1: (n, C, t)
    labels = np.array([[0, 1, 2, 0], [2, 2, 1, 0]])
    b = batch(labels, y_pred, axis=1)
    assert (b.encoding, b.n_classes, b.sample_shape) == ("sparse", 3, (2, 4))
    # row (i, t) holds y_pred[i, :, t]
    np.testing.assert_allclose(b.y_pred[5], y_pred[1, :, 1].astype(np.float32))


def test_binary_column() -> None:
    b = batch([[1], [0], [1]], [[0.9], [0.2], [0.4]])
    assert b.encoding == "binary"
    assert (b.n_classes, b.sample_shape) == (1, (3,))
    assert b.labels is None
    np.testing.assert_array_equal(b.dense, [[1], [0], [1]])


def test_binary_one_d() -> None:
    b = batch([1, 0, 1], [0.9, 0.2, 0.4])
    assert b.encoding == "binary"
    # one sample per element, as if shaped (n, 1)
    assert (b.n_classes, b.sample_shape, b.n_samples) == (1, (3,), 3)
    np.testing.assert_array_equal(b.dense, [[1], [0], [1]])


@pytest.mark.parametrize(
    ("true_shape", "pred_shape"), [((3,), (3, 1)), ((3, 1), (3,)), ((3, 1), (3, 1)), ((3,), (3,))]
)
def test_binary_shapes_mix(true_shape: tuple[int, ...], pred_shape: tuple[int, ...]) -> None:
    b = batch(np.reshape([1, 0, 1], true_shape), np.reshape([0.9, 0.2, 0.4], pred_shape))
    assert b.encoding == "binary"
    assert b.sample_shape == (3,)
    np.testing.assert_array_equal(b.dense, [[1], [0], [1]])


def test_binary_bool_targets() -> None:
    b = batch(np.array([[True], [False]]), [[0.9], [0.2]])
    assert b.encoding == "binary"


def test_one_hot() -> None:
    b = batch([[0, 1, 0], [1, 0, 0]], P3)
    assert b.encoding == "one_hot"
    np.testing.assert_array_equal(b.labels, [1, 0])  # one-hot rows also give their indices
    assert b.dense is not None


def test_multi_hot() -> None:
    assert batch([[1, 1, 0], [1, 0, 0]], P3).encoding == "multi_hot"


def test_multi_hot_with_all_zero_rows() -> None:
    b = batch([[0, 0, 0], [1, 0, 0]], P3)
    assert b.encoding == "multi_hot"
    assert b.labels is None
    assert batch([[0, 0, 0], [0, 0, 0]], P3).encoding == "multi_hot"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("arrived", [np.float16, np.float32, np.float64])
def test_float_targets_are_kept_in_the_compute_dtype(dtype: Any, arrived: Any) -> None:
    # Every kernel reads the targets as the losses take them and as a streaming batch is
    # hashed: the same values sent as JSON (float64) or float32 give the same numbers.
    b = batch(np.asarray([[0.25, 0.5, 0.25], [0, 1, 0]], arrived), P3, dtype=dtype)
    assert b.dense is not None and b.dense.dtype == np.dtype(dtype)
    assert b.encoding == "soft"


def test_integer_and_bool_targets_keep_their_dtype() -> None:
    assert batch(np.uint8([[0, 1, 0], [1, 0, 0]]), P3).dense.dtype == np.uint8  # type: ignore[union-attr]
    assert batch(np.bool_([[0, 1, 1], [1, 0, 0]]), P3).dense.dtype == np.bool_  # type: ignore[union-attr]


def test_soft() -> None:
    b = batch([[0.1, 0.8, 0.1], [0, 1, 0]], P3)
    assert b.encoding == "soft"
    assert b.labels is None
    # soft rows need not sum to 1
    assert batch([[0.5, 0.5, 0.5], [0, 1, 0]], P3).encoding == "soft"


# ---- stated encodings -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("y_true", "y_pred", "stated"),
    [
        ([1, 0], P3, "sparse"),
        ([[0, 1, 0], [1, 0, 0]], P3, "one_hot"),
        ([[1, 1, 0], [0, 0, 0]], P3, "multi_hot"),
        ([[0.1, 0.8, 0.1], [0, 1, 0]], P3, "soft"),
        ([[1], [0]], [[0.3], [0.4]], "binary"),
        ([1, 0], [0.3, 0.4], "binary"),
    ],
)
def test_stated_encoding_that_matches(y_true: Any, y_pred: Any, stated: Any) -> None:
    b = batch(y_true, y_pred, label_encoding=stated)
    assert b.encoding == stated
    assert b.stated


def test_stated_multi_hot_on_one_hot_looking_rows_is_accepted() -> None:
    b = batch([[0, 1, 0], [1, 0, 0]], P3, label_encoding="multi_hot")
    assert b.encoding == "multi_hot"
    assert b.labels is None  # multi-label rows are not class indices


def test_stated_soft_on_one_hot_rows_is_accepted() -> None:
    b = batch([[0, 1, 0], [1, 0, 0]], P3, label_encoding="soft")
    assert b.encoding == "soft"
    assert b.labels is None


def test_stated_one_hot_on_multi_hot_rows_is_rejected() -> None:
    fails(
        lambda: batch([[0, 1, 0], [1, 1, 0]], P3, label_encoding="one_hot"),
        "'one_hot'",
        "row 1",
        "sum to 2",
        "multi_hot",
    )


def test_stated_one_hot_on_soft_rows_is_rejected() -> None:
    fails(
        lambda: batch([[0, 1, 0], [0.5, 0.5, 0]], P3, label_encoding="one_hot"),
        "'one_hot'",
        "row 1",
        "soft",
    )


@pytest.mark.parametrize(
    ("y_true", "y_pred", "stated", "detected"),
    [
        ([[0, 1, 0], [1, 0, 0]], P3, "sparse", "one_hot"),
        ([1, 0], P3, "one_hot", "sparse"),
        ([1, 0], P3, "binary", "sparse"),
        ([[1, 1, 0], [0, 0, 0]], P3, "binary", "multi_hot"),
        ([[1], [0]], [[0.3], [0.4]], "multi_hot", "binary"),
        ([[1], [0]], [[0.3], [0.4]], "sparse", "binary"),
        ([[0.1, 0.8, 0.1], [0, 1, 0]], P3, "multi_hot", "soft"),
    ],
)
def test_stated_encoding_that_contradicts_the_labels(
    y_true: Any, y_pred: Any, stated: Any, detected: str
) -> None:
    fails(
        lambda: batch(y_true, y_pred, label_encoding=stated),
        f"'{stated}'",
        f"is {detected}",
        "Leave `label_encoding` out",
    )


@pytest.mark.parametrize(
    ("y_true", "y_pred", "stated", "words", "not_words"),
    [
        (
            [[0.3, 0.7], [0.5, 0.5]],
            [[0.6, 0.4], [0.2, 0.8]],
            "multi_hot",
            ["expects `y_true` to hold 0 and 1 only", "sample [0] holds 0.3 for class 0", "soft"],
            ["have `y_pred`'s shape"],
        ),
        (
            # A sequence batch: the sample is named by its place, not a flattened row.
            [[[0, 1], [1, 0]], [[0, 1], [0.3, 0.7]]],
            [[[0.5, 0.5]] * 2] * 2,
            "multi_hot",
            ["sample [1, 1] holds 0.3 for class 0"],
            ["row"],
        ),
        (
            [0, 1, 1],
            [0.2, 0.7, 0.9],
            "soft",
            ["binary", "class axis of size 1", "more than one column"],
            ["have `y_pred`'s shape"],
        ),
        (
            [[1], [0]],
            [[0.3], [0.4]],
            "one_hot",
            ["binary", "class axis of size 1"],
            ["have `y_pred`'s shape"],
        ),
    ],
)
def test_a_stated_dense_encoding_is_told_what_differs_not_the_shape(
    y_true: Any, y_pred: Any, stated: Any, words: list[str], not_words: list[str]
) -> None:
    # The labels do have y_pred's shape: the refusal names what is wrong with them.
    error = fails(lambda: batch(y_true, y_pred, label_encoding=stated), f"'{stated}'", *words)
    for fragment in not_words:
        assert fragment not in error.detail


# ---- invalid inputs ---------------------------------------------------------------------


def test_empty_arrays() -> None:
    fails(lambda: batch(np.zeros(0), P3), "`y_true` is empty", "expected", "received shape (0,)")
    fails(lambda: batch([0], np.zeros((0, 3))), "`y_pred` is empty", "received shape (0, 3)")
    fails(
        lambda: batch([1, 0], P3, sample_weight=np.zeros(0)),
        "`sample_weight` is empty",
        "received shape (0,)",
    )


def test_a_single_number_is_not_a_batch() -> None:
    fails(lambda: batch(np.array(1), P3), "`y_true` is a single number", "expected a batch")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(bad: float) -> None:
    y_pred = P3.copy()
    y_pred[1, 2] = bad
    error = fails(
        lambda: batch([1, 0], y_pred), "`y_pred`", "non-finite", "index [1, 2]", "expected finite"
    )
    assert error.errors[0].loc == ("y_pred", 1, 2)
    fails(
        lambda: batch(np.array([[0, 1, 0], [bad, 0, 1]]), P3),
        "`y_true`",
        "non-finite",
        "index [1, 0]",
    )
    fails(
        lambda: batch([1, 0], P3, sample_weight=np.array([1.0, bad])),
        "`sample_weight`",
        "non-finite",
        "index [1]",
    )


@pytest.mark.parametrize(
    ("y_true_shape", "y_pred_shape"),
    [((3,), (2, 3)), ((2, 4), (2, 3)), ((2, 3, 1), (2, 3)), ((4,), (3,)), ((2, 2), (2, 1))],
)
def test_shape_mismatch(y_true_shape: tuple[int, ...], y_pred_shape: tuple[int, ...]) -> None:
    def shape(s: tuple[int, ...]) -> str:
        return "(" + ", ".join(map(str, s)) + ("," if len(s) == 1 else "") + ")"

    fails(
        lambda: batch(np.zeros(y_true_shape), np.full(y_pred_shape, 0.5)),
        "does not match `y_pred`",
        "expected shape",
        f"received {shape(y_true_shape)}",
    )


def test_a_1d_prediction_is_one_binary_prediction_a_sample_in_a_shape_mismatch() -> None:
    """Not one sample's class scores: no 'integer class indices' of shape ()."""
    error = fails(
        lambda: batch(np.zeros(3), np.full(2, 0.5)),
        "a 1-D `y_pred` holds one binary prediction a sample",
        "expected shape (2,)",
        "received (3,)",
    )
    assert "integer class indices" not in str(error)


@pytest.mark.parametrize("axis", [2, -3, 7])
def test_axis_out_of_range(axis: int) -> None:
    fails(
        lambda: batch([1, 0], P3, axis=axis),
        "`axis` is out of range",
        "[-2, 1]",
        f"received axis={axis}",
    )


def test_non_integer_sparse_labels() -> None:
    error = fails(lambda: batch([1, 0.5], P3), "integer class indices", "received 0.5", "index [1]")
    assert error.errors[0].loc == ("y_true", 1)


@pytest.mark.parametrize("label", [3, -1, 1e20, -1e20])
def test_labels_out_of_range(label: float) -> None:
    def run() -> None:
        b = batch(np.array([0, label]), P3)
        encodings.check_label_range(b)

    fails(run, "outside the classes", "[0, 2]", "index [1]")


def test_label_range_as_loss_and_metric_check_it() -> None:
    fails(lambda: compute("sparse_categorical_crossentropy", [0, 3], P3), "[0, 2]", "received 3")
    fails(lambda: compute("categorical_crossentropy", [0, 3], P3), "[0, 2]", "received 3")
    spec = registry.get_metric("accuracy")
    b = batch([0, 3], P3)
    fails(
        lambda: registry.compute_metric("accuracy", b, registry.parse_params("a", spec.params, {})),
        "received 3",
    )


def test_label_range_with_ignore_class() -> None:
    b = batch([0, -1, 2], np.full((3, 3), 1 / 3))
    encodings.check_label_range(b, ignore_class=-1)  # accepted
    fails(lambda: encodings.check_label_range(b), "received -1")
    fails(
        lambda: encodings.check_label_range(b, ignore_class=9),
        "or ignore_class=9",
        "received -1",
        "index [1]",
    )
    # a label equal to C is accepted only as the ignored class
    b = batch([0, 3, 2], np.full((3, 3), 1 / 3))
    encodings.check_label_range(b, ignore_class=3)
    fails(lambda: encodings.check_label_range(b, ignore_class=-1), "received 3")


def test_label_range_names_the_position_in_a_sequence_batch() -> None:
    b = batch(np.array([[0, 1], [1, 5]]), np.full((2, 2, 3), 1 / 3))
    error = fails(lambda: encodings.check_label_range(b), "received 5", "index [1, 1]")
    assert error.errors[0].loc == ("y_true", 1, 1)


@pytest.mark.parametrize(
    ("y_true", "y_pred", "fragment"),
    [
        ([[0, 2, 0], [1, 0, 0]], P3, "received 2"),
        ([[0, -0.5, 0], [1, 0, 0]], P3, "received -0.5"),
        ([[2], [0]], [[0.3], [0.4]], "binary targets"),
        ([1.5, 0], [0.3, 0.4], "received 1.5"),
    ],
)
def test_targets_outside_the_unit_interval(y_true: Any, y_pred: Any, fragment: str) -> None:
    fails(lambda: batch(y_true, y_pred), "must lie in [0, 1]", fragment)


def test_integer_targets_outside_the_unit_interval_suggest_sparse_labels() -> None:
    fails(
        lambda: batch([[0, 2, 0], [1, 0, 0]], P3),
        "Integer class indices go in `y_true` with one dimension less",
    )


@pytest.mark.parametrize(
    ("y_true", "fitting"),
    [
        ([[0.1, 0.8, 0.1], [0, 1, 0]], "categorical_crossentropy"),
        ([[1, 1, 0], [1, 0, 0]], "binary_crossentropy"),
        ([[0, 0, 0], [1, 0, 0]], "binary_crossentropy"),
    ],
)
def test_labels_that_do_not_fit_the_sparse_loss(y_true: Any, fitting: str) -> None:
    name = "sparse_categorical_crossentropy"
    fails(
        lambda: compute(name, y_true, P3), name, "integer labels or one-hot rows", f"use {fitting}"
    )
    b = batch(y_true, P3)
    spec = registry.LOSSES[name]
    params = registry.parse_params(name, spec.params, {})
    error = fails(
        lambda: registry.check_fits(spec, b, params), f"is {b.encoding}", f"use {fitting}"
    )
    assert error.errors[0].loc == ("y_true",)


def test_sparse_labels_do_not_fit_a_binary_loss() -> None:
    error = fails(
        lambda: compute("binary_crossentropy", [1, 0], P3),
        "needs targets of `y_pred`'s shape",
        "integer class indices",
        "use sparse_categorical_crossentropy",
    )
    assert error.errors[0].loc == ("y_true",)


def test_binary_outputs_do_not_fit_a_categorical_loss() -> None:
    for name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        error = fails(
            lambda n=name: compute(n, [[1], [0]], [[0.3], [0.4]]),
            "at least 2 classes",
            "single output per sample",
            "use binary_crossentropy",
        )
        # a loss over classes is refused a single output: `y_pred`'s class axis is wrong
        assert error.errors[0].loc == ("y_pred",)


def test_probabilities_for_a_binary_loss() -> None:
    for bad, shown in ((1.5, "1.5"), (-0.25, "-0.25")):
        fails(
            lambda v=bad: compute("binary_crossentropy", [[1], [0]], [[0.3], [v]]),
            "cannot be probabilities for binary_crossentropy",
            "in [0, 1]",
            f"received {shown}",
            "from_logits: true",
        )
    # the same values are fine as logits
    assert np.isfinite(compute("binary_crossentropy", [[1], [0]], [[0.3], [1.5]], from_logits=True))


def test_probabilities_for_a_categorical_loss() -> None:
    negative = np.float32([[0.2, -0.5, 0.3], [0.6, 0.3, 0.1]])
    for name in ("categorical_crossentropy", "sparse_categorical_crossentropy"):
        fails(
            lambda n=name: compute(n, [1, 0], negative),
            f"cannot be probabilities for {name}",
            "non-negative",
            "received -0.5",
            "row 0, class 1",
            "from_logits: true",
        )
    # values above 1 are renormalized, not rejected: [2, 6] is [0.25, 0.75]
    got = compute("categorical_crossentropy", [1], [[2.0, 6.0]])
    assert float(got) == pytest.approx(-np.log(0.75), rel=1e-6)


def test_rows_summing_to_zero() -> None:
    y_pred = np.float32([[0.2, 0.5, 0.3], [0, 0, 0]])
    fails(
        lambda: compute("categorical_crossentropy", [1, 0], y_pred),
        "row 1 sums to 0",
        "cannot be renormalized",
        "expected",
    )
    b = batch([1, 0], y_pred)
    fails(lambda: encodings.check_probabilities(b, binary=False, loss="x"), "row 1 sums to 0")
    # a binary loss has nothing to renormalize
    encodings.check_probabilities(batch([[1], [0]], [[0.0], [0.0]]), binary=True, loss="x")


@pytest.mark.parametrize(
    ("weights", "received"),
    [(np.ones(3), "(3,)"), (np.ones((2, 3)), "(2, 3)"), (np.ones((1, 2)), "(1, 2)")],
)
def test_sample_weight_shapes(weights: np.ndarray, received: str) -> None:
    fails(
        lambda: batch([1, 0], P3, sample_weight=weights),
        "`sample_weight` does not fit the batch",
        "expected shape (2,)",
        f"received {received}",
    )


def test_sample_weight_shapes_name_every_shape_taken() -> None:
    # (n, t) losses take (n,), (n, t), and either with a trailing axis of 1.
    sequences = np.full((2, 4, 3), 1 / 3, np.float32)
    fails(
        lambda: batch(np.zeros((2, 4)), sequences, sample_weight=np.ones((2, 4, 2))),
        "expected shape (2,) (one weight per sample) or (2, 4) (one per loss value), or "
        "either with a trailing axis of 1 ((2, 1), (2, 4, 1))",
        "received (2, 4, 2)",
    )
    fails(
        lambda: batch([1, 0], P3, sample_weight=np.ones((2, 2))),
        "expected shape (2,) (one weight per sample), or (2, 1)",
    )


def test_sample_weight_shapes_accepted() -> None:
    for weights in (np.ones(2), np.ones((2, 1)), np.array(2.0)):
        b = batch([1, 0], P3, sample_weight=weights)
        assert b.sample_weight is not None
        assert np.broadcast_to(b.sample_weight, b.sample_shape).shape == (2,)
    # a sequence batch: per sample (n,) or per step (n, t)
    y_pred = np.full((2, 4, 3), 1 / 3)
    labels = np.zeros((2, 4), dtype=int)
    assert batch(labels, y_pred, sample_weight=np.ones(2)).sample_weight.shape == (2, 1)
    assert batch(labels, y_pred, sample_weight=np.ones((2, 4))).sample_weight.shape == (2, 4)
    fails(lambda: batch(labels, y_pred, sample_weight=np.ones((2, 3))), "expected shape (2,)")


def test_negative_sample_weight() -> None:
    error = fails(
        lambda: batch([1, 0], P3, sample_weight=np.array([1.0, -0.5])),
        "must be non-negative",
        "received -0.5",
        "index [1]",
    )
    assert error.errors[0].loc == ("sample_weight", 1)


def test_checks_run_in_order_empty_before_finite() -> None:
    fails(lambda: batch(np.zeros(0), np.array([[np.nan, 1.0]])), "`y_true` is empty")


# ---- the sparse path never builds a one-hot matrix -------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"label_smoothing": 0.1},
        {"from_logits": True},
        {"from_logits": True, "label_smoothing": 0.1},
    ],
)
def test_integer_labels_with_100k_classes_build_no_one_hot(raw: dict[str, Any]) -> None:
    # 32 rows of 100,000 classes: several row blocks, so blocked work is told apart from
    # a whole-batch temporary
    n, c = 32, 100_000
    y_pred = np.full((n, c), 1.0 / c, dtype=np.float32)
    labels = np.arange(n) * 3001 % c
    b = prepare(labels, y_pred)
    assert b.dense is None
    assert b.labels is not None and b.labels.shape == (n,)
    spec = registry.get_loss("categorical_crossentropy")
    params = registry.parse_params(spec.name, spec.params, raw)
    tracemalloc.start()
    try:
        value = registry.compute_loss(spec, b, params)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert float(value) == pytest.approx(np.log(c), rel=1e-4)
    float64_matrix = n * c * np.dtype(np.float64).itemsize  # 25.6 MB
    assert peak < float64_matrix, f"peak {peak} bytes: an n × C float64 matrix was built"
    # the kernels work a row block at a time: not even a float32 one-hot (y_pred's size) fits
    assert peak < y_pred.nbytes, f"peak {peak} bytes: an n × C float32 matrix was built"


def test_predictions_that_overflow_float32_are_refused_with_their_index() -> None:
    y_pred = np.array([[0.5, 0.5], [1e308, 0.0], [0.2, 0.8]])
    with pytest.raises(InvalidInput) as refused:
        prepare(np.array([0, 1, 1]), y_pred)
    assert refused.value.errors[0].loc == ("y_pred", 1, 0)
    assert "1e+308" in refused.value.detail and "float64" in refused.value.detail
    # The same values fit in float64.
    assert prepare(np.array([0, 1, 1]), y_pred, dtype="float64").n_classes == 2


def test_the_overflow_index_is_in_the_callers_axis_order() -> None:
    y_pred = np.zeros((2, 3, 4))
    y_pred[1, 2, 0] = -1e300
    with pytest.raises(InvalidInput) as refused:
        prepare(np.zeros((2, 4)), y_pred, axis=1)
    assert refused.value.errors[0].loc == ("y_pred", 1, 2, 0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_finite_values_whose_sum_overflows_are_accepted_without_a_warning(dtype: str) -> None:
    # The finiteness checks sum the predictions first (a NaN or an infinity makes the sum
    # non-finite); a sum that overflows on finite values must neither warn nor refuse.
    big = float(np.finfo(dtype).max) / 2
    y_pred = np.array([[big, big, big], [big, big, big]])
    batch = prepare(np.array([0, 2]), y_pred, dtype=dtype)
    assert batch.y_pred.dtype == np.dtype(dtype)
    assert np.isfinite(batch.y_pred).all()
