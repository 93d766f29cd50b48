"""The new metrics and the report page, measured against what they build on.

    python -m bench.pictures [--quick]

- Each metric of "More metrics" on a 4096×1000 float32 batch with integer labels, as
  the ratio of its time (statistics and value, in process) to the sparse categorical
  cross-entropy kernel's on the same batch (target: within 2×).
- The report page of an evaluation of 1000 classes (8000 samples): the page and its
  five charts drawn as SVG, against computing the numbers it shows (evaluate with the
  per-class, confusion and calibration reports and auc) — the time, and the ratio
  (target: under a second).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from service import charts, encodings, kernels, registry, report_page, streaming

METRICS: list[tuple[str, dict[str, Any]]] = [
    ("precision", {}),
    ("recall", {}),
    ("precision", {"top_k": 5}),
    ("f1_score", {"average": "macro"}),
    ("fbeta_score", {"average": "weighted", "beta": 2.0}),
    ("auc", {}),
    ("auc", {"curve": "PR"}),
    ("expected_calibration_error", {}),
    ("brier_score", {}),
]


def best_ms(work: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def metrics_table(rounds: int) -> str:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4096, 1000)).astype(np.float32)
    pred = np.exp(logits - logits.max(axis=1, keepdims=True))
    pred /= pred.sum(axis=1, keepdims=True)
    labels = rng.integers(0, 1000, 4096)
    batch = encodings.prepare(labels, pred)
    base = best_ms(lambda: kernels.sparse_categorical_crossentropy(labels, pred), rounds)
    lines = [
        f"sparse categorical cross-entropy kernel, 4096×1000: {base:.1f} ms",
        "",
        "| metric | parameters | ms | ratio |",
        "|---|---|---:|---:|",
    ]
    for name, given in METRICS:
        spec = registry.METRICS[name]
        params = registry.parse_params(name, spec.params, given)
        ms = best_ms(lambda: registry.compute_metric(name, batch, params), rounds)  # noqa: B023
        shown = ", ".join(f"{k}={v}" for k, v in given.items()) or "defaults"
        lines.append(f"| {name} | {shown} | {ms:.1f} | {ms / base:.2f}× |")
    return "\n".join(lines)


def page_table(rounds: int) -> str:
    rng = np.random.default_rng(1)
    n, c = 8000, 1000
    labels = rng.integers(0, c, n)
    pred = rng.dirichlet(np.full(c, 0.3), n).astype(np.float32)
    pred[np.arange(n), labels] += 0.5
    pred /= pred.sum(axis=1, keepdims=True)
    config, _ = streaming.parse_settings(
        {
            "metrics": ["accuracy", "auc"],
            "reports": ["per_class", "confusion_matrix", "calibration"],
        }
    )
    body = {"y_true": labels, "y_pred": pred}

    def numbers() -> dict[str, Any]:
        outcome = streaming.evaluate_batch(config, dict(body), None, 1 << 30)
        evaluation = streaming.results(config, outcome.facts, outcome.stats, {})
        return streaming.with_curves(
            evaluation, streaming.curves(config, outcome.facts, outcome.stats)
        )

    compute = best_ms(numbers, rounds)
    evaluation = numbers()
    history = [{"batch_id": f"b{i}", "losses": {"x": float(i % 7)}} for i in range(100)]

    def page() -> None:
        refs = report_page.chart_refs(evaluation, lambda name, fmt: f"/c/{name}.{fmt}", history)
        report_page.render_report(evaluation, refs)
        for ref in refs:
            charts.render(charts.build_chart(evaluation, ref.name, history), "svg")

    drawn = best_ms(page, rounds)
    return (
        "| report page, 1000 classes | ms | ratio to its numbers |\n|---|---:|---:|\n"
        f"| computing the numbers (evaluate, reports, auc) | {compute:.0f} | 1.00× |\n"
        f"| the page and its five charts (SVG) | {drawn:.0f} | {drawn / compute:.2f}× |"
    )


def run(quick: bool = False) -> str:
    rounds = 3 if quick else 7
    return metrics_table(rounds) + "\n\n" + page_table(max(2, rounds // 2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
