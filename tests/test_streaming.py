"""Streaming evaluations without HTTP: any split of a batch, in any order, gives the
one-shot evaluate numbers, and the same bits whatever the order."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import evaluation, streaming
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
    assert metadata == {"a": "b"} and config == {"outputs": {"": {}}, "loss_weights": {}}


@pytest.mark.parametrize("heads", [1, 3])
def test_the_hash_is_the_same_whether_heads_are_hashed_in_place_or_on_the_hashing_thread(
    heads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Large heads are hashed on a thread while they are evaluated; the digest must not
    # depend on which heads went there (stored hashes decide replays and conflicts).
    if heads == 1:
        config, _ = streaming.parse_settings({})
        batch: dict[str, Any] = _data(3, 50, 4, multi=False)
    else:
        config, _ = streaming.parse_settings({"outputs": {f"h{i}": {} for i in range(heads)}})
        # h0 is small (10 rows, under 1 KiB), the others larger (200 rows, over 4 KiB).
        sizes = [10, 200, 200]
        batch = {"outputs": {f"h{i}": _data(i, sizes[i], 4, multi=False) for i in range(heads)}}

    def content_hash(threshold: int) -> bytes:
        monkeypatch.setattr(streaming, "BACKGROUND_HASH_BYTES", threshold)
        return streaming.evaluate_batch(config, copy.deepcopy(batch), None, LIMIT).content_hash

    in_place = content_hash(1 << 60)
    assert content_hash(0) == in_place
    if heads > 1:
        # h0 hashed in place, then h1 handed over, and h2 after it on the thread.
        assert content_hash(4096) == in_place
    other = copy.deepcopy(batch)
    target = other if heads == 1 else other["outputs"]["h1"]
    target["y_pred"] = target["y_pred"][::-1].copy()
    monkeypatch.setattr(streaming, "BACKGROUND_HASH_BYTES", 0)
    assert streaming.evaluate_batch(config, other, None, LIMIT).content_hash != in_place
