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


METRICS_GOLDEN = json.loads((Path(__file__).parent / "golden" / "metrics_cases.json").read_text())


def _at(document: Any, path: str) -> Any:
    """A dotted path into a report; a step applied to a list maps over its elements."""
    node = document
    for step in path.split("."):
        node = [item[step] for item in node] if isinstance(node, list) else node[step]
    return node


@pytest.mark.parametrize(
    "case", METRICS_GOLDEN["cases"], ids=[c["id"] for c in METRICS_GOLDEN["cases"]]
)
def test_metrics_golden_case_through_http(client: Any, case: dict[str, Any]) -> None:
    body = {"y_true": case["y_true"], "y_pred": case["y_pred"], **case["params"]}
    if "sample_weight" in case:
        body["sample_weight"] = case["sample_weight"]
    tolerance = METRICS_GOLDEN["tolerance"]
    if case["kind"] == "metric":
        r = client.post(f"/v1/metrics/{case['name']}", json=body)
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["value"], dtype=float)
        np.testing.assert_allclose(got, np.asarray(case["expected"], dtype=float), **tolerance)
        return
    r = client.post("/v1/evaluate", json={**body, "reports": [case["name"]]})
    assert r.status_code == 200, r.text
    report = r.json()["reports"][case["name"]]
    for path, expected in case["expected"].items():
        got = _at(report, path)
        if isinstance(expected, list) and expected and isinstance(expected[0], str):
            assert got == expected, path
            continue
        np.testing.assert_allclose(
            np.asarray(got, dtype=float),
            np.asarray(expected, dtype=float),
            **tolerance,
            err_msg=path,
        )
