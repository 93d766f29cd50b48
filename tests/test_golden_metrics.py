"""Golden values of the mergeable metrics and reports: every case in
``tests/golden/metrics_cases.json``, one test each, through the kernels.

The file holds numbers computed by Keras 3 (float32), torchmetrics (float32)
and scikit-learn (float64), as each case's ``reference`` says. A ``metric``
case compares the metric's value; a ``report`` case compares each dotted path
of its ``expected`` inside the report (a step applied to a list maps over its
elements: ``bins.count`` is every bin's count).

Labels reach the kernels as the service's encodings hand them over: one-hot
rows as their class indices, integer labels as they are, multi-hot and binary
targets dense. Every case is also computed in two parts whose statistics are
merged, which must give the same numbers.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.kernels import MERGEABLE, merge_stats

GOLDEN = json.loads((Path(__file__).parent / "golden" / "metrics_cases.json").read_text())
CASES: list[dict[str, Any]] = GOLDEN["cases"]
RTOL = float(GOLDEN["tolerance"]["rtol"])
ATOL = float(GOLDEN["tolerance"]["atol"])


def test_golden_file_is_complete() -> None:
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(CASES) == 79
    assert {case["name"] for case in CASES} == set(MERGEABLE)


def _labels(y_true: Any, y_pred: np.ndarray) -> np.ndarray:
    """The case's labels as the kernels take them: one-hot rows become class indices."""
    y = np.asarray(y_true)
    one_hot = (
        y.shape == y_pred.shape
        and y.ndim == 2
        and y.shape[1] > 1
        and bool(np.isin(y, (0, 1)).all())
        and bool((y.sum(axis=1) == 1).all())
    )
    return y.argmax(axis=1) if one_hot else y


def _inputs(case: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    y_pred = np.asarray(case["y_pred"], dtype=np.float32)
    weight = case.get("sample_weight")
    sample_weight = None if weight is None else np.asarray(weight, dtype=np.float32)
    return _labels(case["y_true"], y_pred), y_pred, sample_weight


def _split_params(name: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = MERGEABLE[name]
    unknown = set(params) - set(spec.stats_params) - set(spec.finalize_params)
    assert not unknown, f"{name} does not take {unknown}"
    return (
        {k: v for k, v in params.items() if k in spec.stats_params},
        {k: v for k, v in params.items() if k in spec.finalize_params},
    )


def _result(case: dict[str, Any], *, parts: int) -> Any:
    """The case's value or report, its rows cut into ``parts`` batches whose stats are merged."""
    spec = MERGEABLE[case["name"]]
    y_true, y_pred, sample_weight = _inputs(case)
    stats_params, finalize_params = _split_params(case["name"], dict(case["params"]))
    cuts = np.linspace(0, len(y_pred), parts + 1).astype(int)
    merged = None
    for start, stop in pairwise(cuts):
        weight = None if sample_weight is None else sample_weight[start:stop]
        stats = spec.stats(y_true[start:stop], y_pred[start:stop], weight, **stats_params)
        assert set(stats) == set(spec.keys)
        merged = stats if merged is None else merge_stats(merged, stats)
    assert merged is not None
    return spec.finalize(merged, **finalize_params)


def _at(report: Any, path: str) -> Any:
    """``report`` at a dotted ``path``; a step applied to a list maps over its elements."""
    value = report
    for step in path.split("."):
        value = [item[step] for item in value] if isinstance(value, list) else value[step]
    return value


def _compare(got: Any, expected: Any, where: str) -> None:
    np.testing.assert_allclose(
        np.asarray(got, dtype=np.float64),
        np.asarray(expected, dtype=np.float64),
        rtol=RTOL,
        atol=ATOL,
        err_msg=where,
    )


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_golden(case: dict[str, Any]) -> None:
    for parts in (1, 2):
        result = _result(case, parts=parts)
        if case["kind"] == "metric":
            _compare(result, case["expected"], f"{case['id']} in {parts} part(s)")
            continue
        for path, expected in case["expected"].items():
            _compare(_at(result, path), expected, f"{case['id']}: {path} in {parts} part(s)")
