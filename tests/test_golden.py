"""Golden values: every reference case in ``tests/golden/cases.json``, one test each.

The file holds numbers computed by the reference libraries named in its header
(Keras 3, PyTorch, scikit-learn); this test runs each case through the same
path a request takes (registry → encodings → kernels) and compares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service import encodings, registry

GOLDEN = json.loads((Path(__file__).parent / "golden" / "cases.json").read_text())
CASES: list[dict[str, Any]] = GOLDEN["cases"]
RTOL = float(GOLDEN["tolerance"]["rtol"])
ATOL = float(GOLDEN["tolerance"]["atol"])
COMMON_NAMES = {p.name for p in registry.COMMON}


def test_golden_file_is_complete() -> None:
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(CASES) >= 104
    kinds = {(case["kind"], case["name"]) for case in CASES}
    assert {name for kind, name in kinds if kind == "loss"} == set(registry.LOSSES)


def _compute(case: dict[str, Any]) -> np.ndarray:
    raw = dict(case["params"])
    common = {name: raw.pop(name) for name in COMMON_NAMES if name in raw}
    if case["kind"] == "loss":
        spec: registry.LossSpec | registry.MetricSpec = registry.get_loss(case["name"])
    else:
        spec = registry.get_metric(case["name"])
    params = registry.parse_params(case["name"], spec.params, raw)
    weight = case.get("sample_weight")
    batch = encodings.prepare(
        np.asarray(case["y_true"]),
        np.asarray(case["y_pred"]),
        sample_weight=None if weight is None else np.asarray(weight),
        axis=params.get("axis", -1),
        label_encoding=common.get("label_encoding"),
        dtype=common.get("dtype") or "float32",
    )
    if case["kind"] == "loss":
        assert isinstance(spec, registry.LossSpec)
        return np.asarray(registry.compute_loss(spec, batch, params))
    value, _ = registry.compute_metric(case["name"], batch, params)
    return np.asarray(value)


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_golden(case: dict[str, Any]) -> None:
    expected = np.asarray(case["expected"], dtype=np.float64)
    value = _compute(case).astype(np.float64)
    assert value.shape == expected.shape
    assert np.all(np.isfinite(value))
    np.testing.assert_allclose(value, expected, rtol=RTOL, atol=ATOL, err_msg=case.get("note", ""))
