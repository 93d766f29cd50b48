"""Every golden case through the HTTP API, as a caller sends it (one test id per case)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

GOLDEN = json.loads((Path(__file__).parent / "golden" / "cases.json").read_text())
TOLERANCE = GOLDEN["tolerance"]


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=[c["id"] for c in GOLDEN["cases"]])
def test_golden_case_through_http(client: Any, case: dict[str, Any]) -> None:
    body = {"y_true": case["y_true"], "y_pred": case["y_pred"], **case["params"]}
    if "sample_weight" in case:
        body["sample_weight"] = case["sample_weight"]
    route = "losses" if case["kind"] == "loss" else "metrics"
    r = client.post(f"/v1/{route}/{case['name']}", json=body)
    assert r.status_code == 200, r.text
    got = np.asarray(r.json()["loss" if case["kind"] == "loss" else "value"], dtype=float)
    expected = np.asarray(case["expected"], dtype=float)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **TOLERANCE)
