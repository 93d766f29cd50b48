"""Streaming evaluations without HTTP: any split of a batch, in any order, gives the
one-shot evaluate numbers, and the same bits whatever the order."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from service import evaluation, streaming
from service.errors import Conflict, InvalidInput
from service.storage.exact import ExactTotals

LIMIT = 1 << 26

SETTINGS: list[dict[str, Any]] = [
    {
        "losses": ["sparse_categorical_crossentropy", "categorical_focal_crossentropy"],
        "metrics": [
            "accuracy",
            "top_k_categorical_accuracy",
            {"name": "f1_score", "average": "weighted"},
            {"name": "precision", "top_k": 2},
            "auc",
            "expected_calibration_error",
            "brier_score",
        ],
        "reports": ["per_class", "confusion_matrix", {"name": "calibration", "n_bins": 7}],
    },
    {
        "losses": [{"name": "sparse_categorical_crossentropy", "reduction": "sum"}],
        "metrics": [{"name": "fbeta_score", "beta": 2.0, "average": "micro"}],
        "from_logits": True,
    },
    {
        "losses": [
            {"name": "categorical_crossentropy", "reduction": "mean_with_sample_weight"},
            {"name": "sparse_categorical_crossentropy", "ignore_class": 1, "as": "ignoring_1"},
        ],
        "metrics": [
            "recall",
            {"name": "precision", "class_id": 2, "thresholds": 0.3},
            "f1_score",
            {"name": "auc", "curve": "PR", "summation_method": "majoring"},
            {"name": "auc", "multi_label": True, "as": "auc_per_label"},
            {"name": "expected_calibration_error", "norm": "max", "n_bins": 4},
            {"name": "expected_calibration_error", "norm": "l2", "as": "ece_l2"},
            "sparse_top_k_categorical_accuracy",
        ],
        "reports": [{"name": "confusion_matrix", "as": "cm"}],
    },
    {},  # the defaults that fit the labels
]


def _data(seed: int, n: int, c: int, multi: bool) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    pred = rng.dirichlet(np.ones(c), n).astype(np.float32)
    truth = (rng.random((n, c)) < 0.3).astype(np.float32) if multi else rng.integers(0, c, n)
    return {"y_true": truth, "y_pred": pred, "sample_weight": rng.uniform(0.1, 3, n)}


def _rows(data: dict[str, Any], rows: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {k: v[rows] for k, v in data.items()}


def _stream(
    config: dict[str, Any], data: dict[str, Any], parts: list[np.ndarray[Any, Any]]
) -> dict[str, Any]:
    facts = None
    totals: ExactTotals | None = None
    for rows in parts:
        outcome = streaming.evaluate_batch(config, _rows(data, rows), facts, LIMIT)
        facts = facts or outcome.facts
        batch = ExactTotals.from_stats(outcome.stats)
        if totals is None:
            totals = batch
        else:
            totals.add(batch)
    assert totals is not None
    return streaming.results(config, facts, totals.values(), {})


def _close(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and a and isinstance(a[0], dict | list | str):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]")
    elif a is None or isinstance(a, str):
        assert a == b, where
    else:
        np.testing.assert_allclose(
            np.asarray(a, float), np.asarray(b, float), rtol=1e-6, atol=1e-9, err_msg=where
        )


@settings(max_examples=25, deadline=None)
@given(
    which=st.integers(0, len(SETTINGS) - 1),
    seed=st.integers(0, 10_000),
    n=st.integers(6, 60),
    cuts=st.lists(st.floats(0.05, 0.95), min_size=1, max_size=4),
    order=st.randoms(use_true_random=False),
)
def test_any_split_in_any_order_gives_the_one_shot_numbers(
    which: int, seed: int, n: int, cuts: list[float], order: Any
) -> None:
    settings_document = SETTINGS[which]
    data = _data(seed, n, 4, multi=False)
    config, _ = streaming.parse_settings(copy.deepcopy(settings_document))
    positions = sorted({int(c * n) for c in cuts} - {0, n})
    parts = np.split(np.arange(n), positions)
    got = _stream(config, data, parts)
    shuffled = list(parts)
    order.shuffle(shuffled)
    again = _stream(config, data, shuffled)
    assert again == got  # bit for bit: exact totals, whatever the order
    once = evaluation.evaluate(
        {**copy.deepcopy(settings_document), **{k: v.tolist() for k, v in data.items()}}, LIMIT
    )
    for key in ("losses", "metrics", "resolved", "label_encoding", "n_classes"):
        _close(got[key], once[key], key)
    if "reports" in once:
        _close(got["reports"], once["reports"], "reports")


def test_multi_label_reports_stream_too() -> None:
    settings_document = {
        "losses": ["binary_crossentropy"],
        "metrics": ["accuracy", {"name": "auc", "multi_label": True}],
        "reports": ["per_class", "confusion_matrix", "calibration"],
        "label_encoding": "multi_hot",
    }
    data = _data(5, 40, 3, multi=True)
    config, _ = streaming.parse_settings(copy.deepcopy(settings_document))
    got = _stream(config, data, np.split(np.arange(40), [9, 10, 31]))
    once = evaluation.evaluate(
        {**settings_document, **{k: v.tolist() for k, v in data.items()}}, LIMIT
    )
    for key in ("losses", "metrics", "reports"):
        _close(got[key], once[key], key)


def test_settings_are_checked_at_creation() -> None:
    with pytest.raises(Exception, match="nope"):
        streaming.parse_settings({"metrics": ["nope"]})
    with pytest.raises(Exception, match="without arrays"):
        streaming.parse_settings({"y_pred": [1]})
    config, metadata = streaming.parse_settings({"metadata": {"a": "b"}})
    assert metadata == {"a": "b"}
    assert config == {
        "outputs": {"": {}},
        "loss_weights": {},
        "content_hash": "xxh3-128",
        "label_hash": "compute-dtype",
    }


def _as_computed(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A batch's arrays as computed and hashed: predictions float32, labels int64
    indices, weights float64."""
    return {
        "y_pred": np.asarray(batch["y_pred"]).astype(np.float32),
        "y_true": np.asarray(batch["y_true"]).astype(np.int64),
        "sample_weight": np.asarray(batch["sample_weight"]).astype(np.float64),
    }


def _framed(kind: Any, heads: list[tuple[str, dict[str, Any]]]) -> bytes:
    """The content hash as stored: each head's name, then each array's name, dtype,
    shape and bytes (predictions as float32, labels as int64 indices, weights float64)."""
    digest = kind()
    for head, arrays in heads:
        digest.update(f"head:{head};".encode())
        for name, array in arrays.items():
            digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
            digest.update(array.tobytes())
    return bytes(digest.digest())


def test_the_content_hash_of_a_batch_never_changes() -> None:
    # Stored hashes decide replays and conflicts: the bytes hashed and the hash of each
    # kind are fixed, whatever the version. New evaluations use XXH3-128; evaluations
    # created before their settings named it keep SHA-256.
    config, _ = streaming.parse_settings({})
    assert config["content_hash"] == "xxh3-128"
    batch = _data(5, 300, 4, multi=False)
    arrays = _as_computed(batch)
    new = streaming.evaluate_batch(config, batch, None, LIMIT).content_hash
    assert new == _framed(xxhash.xxh3_128, [("", arrays)])
    legacy = {k: v for k, v in config.items() if k != "content_hash"}
    old = streaming.evaluate_batch(legacy, batch, None, LIMIT).content_hash
    assert old == _framed(hashlib.sha256, [("", arrays)])
    # Any encoding of the same arrays is the same batch; other content is another.
    as_lists = {k: v.tolist() for k, v in batch.items()}
    assert streaming.evaluate_batch(config, as_lists, None, LIMIT).content_hash == new
    as_float64 = {**batch, "y_pred": batch["y_pred"].astype(np.float64)}
    assert streaming.evaluate_batch(config, as_float64, None, LIMIT).content_hash == new
    other = {**batch, "y_pred": batch["y_pred"][::-1].copy()}
    assert streaming.evaluate_batch(config, other, None, LIMIT).content_hash != new


@pytest.mark.parametrize(
    "y_true",
    [
        [[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]],  # soft targets, read from JSON as float64
        np.float16([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]]),
        [[0, 1, 1], [1, 0, 0]],  # multi-hot, read from JSON as int64
    ],
)
def test_an_evaluation_created_before_label_hash_hashes_targets_as_they_came(y_true: Any) -> None:
    # Its stored hashes were made of the targets in the dtype they arrived in: a retry of a
    # batch it accepted must hash to the same bytes (else a 409 for the same content).
    config, _ = streaming.parse_settings({})
    legacy = {k: v for k, v in config.items() if k != "label_hash"}
    y_pred = np.float32([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    got = streaming.evaluate_batch(legacy, {"y_true": y_true, "y_pred": y_pred}, None, LIMIT)
    arrived = np.asarray(y_true)
    expected = _framed(xxhash.xxh3_128, [("", {"y_pred": y_pred, "y_true": arrived})])
    assert got.content_hash == expected


def test_dense_labels_are_hashed_in_the_compute_dtype() -> None:
    # Binary, multi-hot and soft targets are hashed as the kernels take them (float32
    # here): JSON 1 and 1.0, and integer, boolean or float arrays of the same targets are
    # the same batch; other targets are another.
    config, _ = streaming.parse_settings({})
    multi, _ = streaming.parse_settings({"label_encoding": "multi_hot"})
    pred = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]], np.float32)
    cases = [
        (config, [0.2, 0.8, 0.6], [[0, 1, 1]], np.float32),  # binary, one column
        (config, pred, [[0, 1, 1], [1, 0, 0]], np.float32),  # multi-hot, detected
        (multi, pred, [[0, 1, 0], [1, 0, 0]], np.float32),  # multi-hot, stated
    ]
    for evaluation_settings, y_pred, y_true, dtype in cases:
        y_pred = np.asarray(y_pred, np.float32)
        y_true = np.asarray(y_true).reshape(y_pred.shape)
        hashes = {
            streaming.evaluate_batch(
                evaluation_settings, {"y_true": labels, "y_pred": y_pred}, None, LIMIT
            ).content_hash
            for labels in (
                y_true.tolist(),
                y_true.astype(np.float64).tolist(),
                y_true.astype(bool),
                y_true.astype(np.uint8),
                y_true.astype(np.float32),
            )
        }
        assert len(hashes) == 1, (evaluation_settings, y_true)
        # The bytes hashed are those of float32 targets, which an evaluation created
        # before the setting hashes as they come.
        before = {k: v for k, v in evaluation_settings.items() if k != "label_hash"}
        as_float32 = {"y_true": y_true.astype(dtype), "y_pred": y_pred}
        assert hashes == {streaming.evaluate_batch(before, as_float32, None, LIMIT).content_hash}
        flipped = {"y_true": 1 - y_true, "y_pred": y_pred}
        other = streaming.evaluate_batch(evaluation_settings, flipped, None, LIMIT)
        assert other.content_hash not in hashes
    # An evaluation created before the setting keeps hashing its targets as they came: the
    # hashes it stored still tell its retries from other content.
    legacy = {k: v for k, v in config.items() if k != "label_hash"}
    y_pred = np.array([0.2, 0.8, 0.6], np.float32)
    ints = streaming.evaluate_batch(legacy, {"y_true": [0, 1, 1], "y_pred": y_pred}, None, LIMIT)
    floats = {"y_true": [0.0, 1.0, 1.0], "y_pred": y_pred}
    assert ints.content_hash != streaming.evaluate_batch(legacy, floats, None, LIMIT).content_hash
    now = streaming.evaluate_batch(config, floats, None, LIMIT).content_hash
    assert ints.content_hash != now


def test_the_content_hash_covers_every_head_in_order() -> None:
    config, _ = streaming.parse_settings({"outputs": {"b": {}, "a": {}}})
    data = {head: _data(seed, 20, 3, multi=False) for seed, head in enumerate("ab")}
    batch = {"outputs": {"b": data["b"], "a": data["a"]}}
    expected = _framed(
        xxhash.xxh3_128,
        [(head, _as_computed(data[head])) for head in "ab"],
    )
    assert streaming.evaluate_batch(config, batch, None, LIMIT).content_hash == expected


def test_a_new_evaluation_takes_the_content_hash_it_is_given() -> None:
    config, _ = streaming.parse_settings({}, "sha256")
    assert config["content_hash"] == "sha256"
    config, _ = streaming.parse_settings({"outputs": {"a": {}}}, "sha256")
    assert config["content_hash"] == "sha256"
    batch = _data(2, 30, 3, multi=False)
    arrays = _as_computed(batch)
    got = streaming.evaluate_batch(config, {"outputs": {"a": batch}}, None, LIMIT)
    assert got.content_hash == _framed(hashlib.sha256, [("a", arrays)])
    with pytest.raises(ValueError, match="unknown content hash 'md5'"):
        streaming.parse_settings({}, "md5")


def test_a_content_hash_this_version_does_not_know_is_a_conflict() -> None:
    config, _ = streaming.parse_settings({})
    with pytest.raises(Conflict, match=r"'xxh4', which this version of the service does not know"):
        streaming.evaluate_batch(
            {**config, "content_hash": "xxh4"}, _data(1, 10, 3, multi=False), None, LIMIT
        )


@pytest.mark.parametrize("head", ["", "a/b", "h/loss"])
def test_head_names_are_non_empty_and_hold_no_slash(head: str) -> None:
    """A head's name leads the names of its running totals: ``h`` with an entry
    ``loss/cce`` and ``h/loss`` with ``cce`` would share one total; ``""`` is the single
    head's place."""
    with pytest.raises(Exception, match="1–128 characters with no `/`") as refused:
        streaming.parse_settings({"outputs": {"h": {}, head: {}}})
    assert refused.value.errors[0].loc == ("outputs", head)  # type: ignore[attr-defined]


HEAD_A = {"y_true": [0, 1], "y_pred": [[0.6, 0.4], [0.3, 0.7]]}


@pytest.mark.parametrize(
    ("batch", "loc", "words"),
    [
        (
            {"outputs": {"a": HEAD_A, "b": HEAD_A}, "sample_weight": [1, 0]},
            ("sample_weight",),
            "holds `outputs` only, received also ['sample_weight']: put each head's arrays "
            "(its `sample_weight` too) inside its entry",
        ),
        (
            {"outputs": {"a": HEAD_A, "b": HEAD_A}, "y_true": [0, 1], "metrics": []},
            ("metrics",),
            "received also ['metrics', 'y_true']",
        ),
        (
            HEAD_A,
            ("outputs",),
            "This evaluation has heads ['a', 'b']: a batch is {\"outputs\": {<head>: "
            '{"y_true", "y_pred", "sample_weight"?}}}; received a batch of fields '
            "['y_pred', 'y_true'].",
        ),
        (
            {"outputs": [HEAD_A, HEAD_A]},
            ("outputs",),
            "`outputs` must be an object of heads ['a', 'b'], received a JSON array",
        ),
    ],
)
def test_a_batch_of_several_heads_that_is_shaped_otherwise_is_told_what_is_wrong(
    batch: dict[str, Any], loc: tuple[str, ...], words: str
) -> None:
    config, _ = streaming.parse_settings({"outputs": {"a": {}, "b": {}}})
    with pytest.raises(InvalidInput) as refused:
        streaming.evaluate_batch(config, batch, None, LIMIT)
    assert words in refused.value.detail
    assert refused.value.errors[0].loc == loc


def test_the_heads_of_a_batch_hold_as_many_samples_each() -> None:
    config, _ = streaming.parse_settings({"outputs": {"a": {}, "b": {}}})
    batch = {
        "outputs": {
            "a": {"y_true": [1], "y_pred": [[0.3, 0.7]]},
            "b": {"y_true": [0, 1, 1], "y_pred": [[0.6, 0.4], [0.2, 0.8], [0.1, 0.9]]},
        }
    }
    with pytest.raises(Exception, match=r"as many samples each; received \{'a': 1, 'b': 3\}"):
        streaming.evaluate_batch(config, batch, None, LIMIT)


@pytest.mark.parametrize(
    ("first", "later", "encoding"),
    [
        ([[1, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1]], "multi_hot"),
        ([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7]], [[1, 0, 0], [0, 0, 1]], "soft"),
        ([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7]], [[1, 1, 0], [0, 0, 1]], "soft"),
    ],
)
def test_later_batches_are_read_as_the_first_fixed_multi_hot_or_soft_labels(
    first: list[list[float]], later: list[list[float]], encoding: str
) -> None:
    """A multi-label evaluation's batch whose rows hold one positive each is multi-hot
    still, as one evaluate over every batch reads it; so are one-hot or multi-hot rows in
    a soft evaluation."""
    config, _ = streaming.parse_settings({})
    pred = [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]
    one = streaming.evaluate_batch(config, {"y_true": first, "y_pred": pred}, None, LIMIT)
    assert one.facts["heads"][""]["label_encoding"] == encoding
    two = streaming.evaluate_batch(config, {"y_true": later, "y_pred": pred}, one.facts, LIMIT)
    totals = ExactTotals.from_stats(one.stats)
    totals.add(ExactTotals.from_stats(two.stats))
    streamed = streaming.results(config, one.facts, totals.values(), {})
    whole = evaluation.evaluate({"y_true": first + later, "y_pred": pred + pred}, LIMIT)
    assert whole["label_encoding"] == encoding
    _close(streamed["losses"], whole["losses"])
    _close(streamed["metrics"], whole["metrics"])


@pytest.mark.parametrize(
    ("first", "later", "message"),
    [
        ([0, 2], [[1, 1, 0], [0, 0, 1]], r"multi_hot \(multi_label\), but the evaluation's are"),
        ([[1, 1, 0], [0, 0, 1]], [0, 2], r"sparse \(single_label\), but the evaluation's are"),
        ([[0.5, 0.5, 0], [0, 0, 1]], [0, 2], r"sparse \(single_label\), but the evaluation's are"),
    ],
)
def test_batches_of_another_label_family_are_refused_saying_what_differs(
    first: list[Any], later: list[Any], message: str
) -> None:
    """Only what the first batch's labels hold is read as they are: a single-label
    evaluation refuses multi-hot rows, a multi-hot or soft one integer labels."""
    config, _ = streaming.parse_settings({})
    pred = [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]
    one = streaming.evaluate_batch(config, {"y_true": first, "y_pred": pred}, None, LIMIT)
    with pytest.raises(Exception, match=message):
        streaming.evaluate_batch(config, {"y_true": later, "y_pred": pred}, one.facts, LIMIT)


def test_settings_stored_under_earlier_rules_are_read_as_they_were_accepted() -> None:
    """An evaluation created when `accuracy` took a `k` (and ignored it), or class names
    could hold control characters, goes on taking batches and answering results."""
    config, _ = streaming.parse_settings({})
    config["outputs"][""] = {
        "metrics": [{"name": "accuracy", "k": 3}, "auc"],
        "class_names": ["a\x00", "b"],
    }
    batch = {"y_true": [0, 1, 1], "y_pred": [[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]}
    outcome = streaming.evaluate_batch(config, batch, None, LIMIT)
    got = streaming.results(config, outcome.facts, outcome.stats, {})
    once = evaluation.evaluate({**batch, "metrics": ["accuracy", "auc"]}, LIMIT)
    _close(got["metrics"], once["metrics"])


def test_facts_kept_before_the_sample_axes_were_take_batches_of_either_kind() -> None:
    found = {"family": "single_label", "n_classes": 3, "label_encoding": "sparse"}
    assert streaming._differs("", found, {**found, "sample_axes": 2}) is None
    assert streaming._differs("", {**found, "sample_axes": 1}, {**found, "sample_axes": 1}) is None
    differs = streaming._differs("h", {**found, "sample_axes": 1}, {**found, "sample_axes": 3})
    assert differs is not None and differs.startswith("head 'h': ")
    assert "shape (samples, steps, steps, classes)" in differs
