"""Hypothesis batches of one label family for the mergeable kernels' tests."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp


@st.composite
def batches(
    draw: st.DrawFn, family: str, grid: st.SearchStrategy[float], *, weighted: bool | None = None
) -> dict[str, Any]:
    """A batch of one label family: ``labels`` (single-label), ``binary`` or
    ``multi_label``; predictions drawn from ``grid``; weights when ``weighted`` (drawn when
    None)."""
    n = draw(st.integers(1, 24))
    c = 1 if family == "binary" else draw(st.integers(2, 6))
    y_pred = draw(hnp.arrays(np.float32, (n, c), elements=grid))
    if family == "labels":
        y_true: np.ndarray = draw(hnp.arrays(np.int64, n, elements=st.integers(0, c - 1)))
    else:
        y_true = draw(hnp.arrays(np.float32, (n, c), elements=st.sampled_from([0.0, 1.0])))
    if weighted is None:
        weighted = draw(st.booleans())
    weight = None
    if weighted:
        weight = draw(hnp.arrays(np.float32, n, elements=st.sampled_from([0.0, 0.5, 1.0, 2.5])))
    return {"y_true": y_true, "y_pred": y_pred, "sample_weight": weight}


def row_weights(batch: dict[str, Any]) -> np.ndarray:
    w = batch["sample_weight"]
    return np.ones(len(batch["y_pred"])) if w is None else w.astype(np.float64)
