"""Charts: each renders as valid SVG and PNG, draws the numbers it is given, stays
readable at 1000 classes, and renders to the same bytes every time and in any thread.

The evaluations are the samples of ``report_samples`` (random data, NumPy arithmetic).
"""

from __future__ import annotations

import io
import math
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from matplotlib.collections import PolyCollection
from PIL import Image
from report_samples import multi_head, single_label

from service import charts
from service.charts import Chart, ChartNotAvailable

SVG = "{http://www.w3.org/2000/svg}"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SAMPLES = {
    "37 classes": lambda: single_label(),
    "1000 classes": lambda: single_label(n_classes=1000, n_samples=8000),
    "two heads": lambda: multi_head(),
}


def _all_charts() -> list[tuple[str, str]]:
    cases = []
    for sample, make in SAMPLES.items():
        evaluation, history = make()
        cases += [(sample, name) for name in charts.available_charts(evaluation, history)]
    return cases


def _build(sample: str, name: str) -> Chart:
    evaluation, history = SAMPLES[sample]()
    return charts.build_chart(evaluation, name, history)


def _svg_root(data: bytes) -> ET.Element:
    root = ET.fromstring(data)
    assert root.tag == f"{SVG}svg"
    return root


def _svg_texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


# --- every chart, both formats ------------------------------------------------------------------


@pytest.mark.parametrize(("sample", "name"), _all_charts())
def test_chart_renders_as_valid_svg_with_title_and_description(sample: str, name: str) -> None:
    chart = _build(sample, name)
    assert chart.name == name
    root = _svg_root(charts.render(chart, "svg"))
    children = list(root)
    assert children[0].tag == f"{SVG}title"
    assert children[0].text == chart.title
    assert children[1].tag == f"{SVG}desc"
    assert children[1].text == chart.description
    assert root.get("role") == "img"
    assert len(chart.description) > 40
    # The title is also drawn, as text (svg.fonttype "none").
    texts = _svg_texts(root)
    assert chart.title in texts, texts[:10]
    assert float(root.get("width", "0").removesuffix("pt")) > 200


@pytest.mark.parametrize(("sample", "name"), _all_charts())
def test_chart_renders_as_valid_png(sample: str, name: str) -> None:
    chart = _build(sample, name)
    data = charts.render(chart, "png")
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        width, height = image.size
        assert image.text["Title"] == chart.title
        assert image.text["Description"] == chart.description
    expected = chart.figure.get_size_inches() * charts.PNG_DPI
    assert abs(width - expected[0]) <= 1 and abs(height - expected[1]) <= 1
    assert 500 <= width <= 2000
    assert 300 <= height <= 2200


def test_unknown_format_is_refused() -> None:
    chart = _build("37 classes", "roc")
    with pytest.raises(ValueError, match="expected 'svg' or 'png'"):
        charts.render(chart, "gif")  # type: ignore[arg-type]


# --- which charts apply --------------------------------------------------------------------------


def test_available_charts_follow_the_reports_and_the_history() -> None:
    evaluation, history = single_label()
    assert charts.available_charts(evaluation, history) == [
        "loss_history",
        "confusion_matrix",
        "reliability",
        "roc",
        "per_class_f1",
    ]
    assert charts.available_charts(evaluation) == [
        "confusion_matrix",
        "reliability",
        "roc",
        "per_class_f1",
    ]
    without = {**evaluation, "reports": {"calibration": evaluation["reports"]["calibration"]}}
    without.pop("curves")
    assert charts.available_charts(without, []) == ["reliability"]
    assert charts.available_charts({"losses": {}, "metrics": {}}) == []


def test_available_charts_of_heads_are_named_by_head() -> None:
    evaluation, history = multi_head()
    names = charts.available_charts(evaluation, history)
    assert names == [
        "loss_history",
        "species.confusion_matrix",
        "species.reliability",
        "species.pr",
        "species.per_class_f1",
        "attributes.confusion_matrix",
        "attributes.reliability",
        "attributes.roc",
        "attributes.per_class_f1",
    ]
    assert charts.split_chart_name("species.pr") == ("species", "pr")
    assert charts.split_chart_name("head.with.dots.roc") == ("head.with.dots", "roc")
    assert charts.split_chart_name("loss_history") == (None, "loss_history")


def test_a_chart_that_does_not_apply_is_not_available() -> None:
    evaluation, history = single_label()
    for name in ("pr", "loss_history", "species.roc", "pie"):
        with pytest.raises(ChartNotAvailable, match="its charts are: "):
            charts.build_chart(evaluation, name, None if name == "loss_history" else history)
    with pytest.raises(ChartNotAvailable):
        charts.chart_text(evaluation, "pr", history)


def test_chart_text_matches_the_drawn_chart() -> None:
    for sample, name in _all_charts():
        evaluation, history = SAMPLES[sample]()
        chart = charts.build_chart(evaluation, name, history)
        assert charts.chart_text(evaluation, name, history) == (chart.title, chart.description)


# --- what each chart draws -----------------------------------------------------------------------


def test_loss_history_draws_each_batch_value_in_arrival_order() -> None:
    evaluation, history = single_label()
    chart = charts.build_chart(evaluation, "loss_history", history)
    ax = chart.figure.axes[0]
    line = ax.get_lines()[0]
    expected = [batch["losses"]["sparse_categorical_crossentropy"] for batch in history]
    np.testing.assert_array_equal(line.get_xdata(), np.arange(1, len(history) + 1))
    np.testing.assert_array_equal(line.get_ydata(), expected)
    overall = evaluation["losses"]["sparse_categorical_crossentropy"]
    assert any(list(other.get_ydata()) == [overall, overall] for other in ax.get_lines()[1:])
    assert ax.get_xlabel() == "batch number (arrival order)"
    assert "loss" in ax.get_ylabel()


def test_loss_history_of_heads_has_a_line_per_head_loss_and_the_total() -> None:
    evaluation, history = multi_head()
    series = charts.loss_series(history)
    assert list(series) == [
        "species: sparse_categorical_crossentropy",
        "attributes: binary_crossentropy",
        "total_loss",
    ]
    np.testing.assert_array_equal(series["total_loss"], [b["total_loss"] for b in history])
    chart = charts.build_chart(evaluation, "loss_history", history)
    legend = chart.figure.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [*series, "over all batches"]


def test_loss_history_without_values_is_refused() -> None:
    with pytest.raises(ValueError, match="no loss value"):
        charts.loss_history([{"batch_id": "a", "n_samples": 3}])
    assert charts.available_charts({}, [{"batch_id": "a", "losses": {}}]) == []


def _matrix_report(n: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    matrix = rng.poisson(0.3, size=(n, n)) + np.diag(rng.integers(5, 50, size=n))
    return {"labels": [f"c{i}" for i in range(n)], "matrix": matrix.tolist()}


def test_confusion_matrix_is_a_heatmap_of_row_shares_up_to_50_classes() -> None:
    report = _matrix_report(charts.HEATMAP_MAX_CLASSES)
    chart = charts.confusion_matrix(report)
    ax = chart.figure.axes[0]
    [image] = ax.get_images()
    matrix = np.asarray(report["matrix"], dtype=np.float64)
    np.testing.assert_allclose(image.get_array(), matrix / matrix.sum(axis=1, keepdims=True))
    assert image.get_cmap().name == "viridis"
    assert [t.get_text() for t in ax.get_yticklabels()] == report["labels"]
    assert [t.get_text() for t in ax.get_xticklabels()] == report["labels"]
    assert chart.title == "Confusion matrix (50 classes)"


def test_confusion_matrix_of_sample_weights_says_so() -> None:
    chart = charts.confusion_matrix({"labels": [0, 1], "matrix": [[812.5, 40], [63, 285]]})
    assert "91.4% of a total sample weight of 1200.5 on the diagonal" in chart.description
    assert "most confused: 1 → 0 (63)" in chart.description
    cells = [t.get_text() for t in chart.figure.axes[0].texts]
    assert cells == ["812.5", "40", "63", "285"]


def test_confusion_matrix_past_50_classes_shows_the_most_confused_pairs() -> None:
    report = _matrix_report(charts.HEATMAP_MAX_CLASSES + 1, seed=3)
    chart = charts.confusion_matrix(report)
    ax = chart.figure.axes[0]
    assert not ax.get_images()
    assert chart.title == "Most confused pairs (51 classes)"
    # The bars are the largest off-diagonal cells, largest first, ties in row-major order.
    matrix = np.asarray(report["matrix"])
    cells = sorted(
        ((-matrix[i, j], i, j) for i in range(51) for j in range(51) if i != j and matrix[i, j]),
    )[: charts.MOST_CONFUSED]
    expected_names = [f"c{i} → c{j}" for _, i, j in cells]
    assert [t.get_text() for t in ax.get_yticklabels()] == expected_names
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == [-count for count, _, _ in cells]


def test_confusion_matrix_of_1000_classes_is_readable() -> None:
    chart = _build("1000 classes", "confusion_matrix")
    [ax] = chart.figure.axes
    assert len(ax.get_yticklabels()) == charts.MOST_CONFUSED
    assert all("→" in t.get_text() for t in ax.get_yticklabels())
    assert len(_svg_texts(_svg_root(charts.render(chart, "svg")))) < 200
    assert chart.figure.get_size_inches()[1] < 10


def test_multi_label_confusion_is_a_heatmap_of_outcomes_per_label() -> None:
    evaluation, _ = multi_head()
    report = evaluation["outputs"]["attributes"]["reports"]["confusion_matrix"]
    chart = charts.confusion_matrix(report)
    [image] = chart.figure.axes[0].get_images()
    counts = np.asarray(report["matrices"], dtype=np.float64).reshape(-1, 4)
    np.testing.assert_allclose(image.get_array(), counts / counts.sum(axis=1, keepdims=True))
    assert "aquatic" in chart.description
    many = {
        "labels": [f"tag{i}" for i in range(60)],
        "matrices": [[[90, i % 7], [i % 5, 10]] for i in range(60)],
    }
    wide = charts.confusion_matrix(many)
    assert not wide.figure.axes[0].get_images()
    assert len(wide.figure.axes[0].get_yticklabels()) == charts.MOST_CONFUSED


def test_confusion_matrix_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"expected \(3, 3\) for 3 labels"):
        charts.confusion_matrix({"labels": [0, 1, 2], "matrix": [[1, 0], [0, 1]]})


def test_reliability_bars_are_as_wide_as_their_bins() -> None:
    evaluation, _ = single_label()
    report = evaluation["reports"]["calibration"]
    chart = charts.reliability(report)
    low, top = chart.figure.axes
    filled = [b for b in report["bins"] if b["count"] > 0]
    accuracy_bars = top.patches[: len(filled)]
    for bar, b in zip(accuracy_bars, filled, strict=True):
        assert bar.get_x() == pytest.approx(b["lower"])
        assert bar.get_width() == pytest.approx(b["upper"] - b["lower"])
        assert bar.get_height() == pytest.approx(b["accuracy"])
    counts = [bar.get_height() for bar in low.patches]
    assert counts == [b["count"] for b in filled]  # an empty bin has no bar
    assert f"ECE {report['ece']:.3g}" in top.get_title()
    diagonal = top.get_lines()[0]
    assert list(diagonal.get_xdata()) == [0, 1] and list(diagonal.get_ydata()) == [0, 1]


def test_reliability_of_many_bins_draws_each_panel_as_one_collection() -> None:
    """10,000 bins drawn as 10,000 rectangles each took seconds (and held every chart's
    lock): over a few hundred, each panel's bars are one collection of the same
    rectangles."""
    n = 5000
    edges = np.linspace(0.0, 1.0, n + 1)
    bins = [
        {
            "lower": float(edges[i]),
            "upper": float(edges[i + 1]),
            "count": i % 3,
            "confidence": float(edges[i]),
            "accuracy": 0.5 if i % 3 else 0.0,
        }
        for i in range(n)
    ]
    report = {"n_bins": n, "bins": bins, "ece": 0.1, "mce": 0.4}
    chart = charts.reliability(report)
    low, top = chart.figure.axes
    filled = [b for b in bins if b["count"]]
    assert not low.patches and len(low.collections) == 1
    bars = low.collections[0].get_paths()
    assert len(bars) == len(filled)
    for path, b in zip(bars[:50], filled, strict=False):
        (x0, y0), (x1, y1) = path.vertices.min(axis=0), path.vertices.max(axis=0)
        assert (x0, x1, y0, y1) == pytest.approx((b["lower"], b["upper"], 0.0, b["count"]))
    accuracy, gap = (c for c in top.collections if isinstance(c, PolyCollection))
    assert len(accuracy.get_paths()) == len(gap.get_paths()) == len(filled)
    assert not top.patches
    assert f"{len(filled)} non-empty bins" in chart.description


def test_reliability_draws_the_bin_of_confidence_one_past_the_axis_end() -> None:
    report = {
        "n_bins": 2,
        "bins": [
            {"lower": 0.0, "upper": 0.5, "count": 4, "confidence": 0.3, "accuracy": 0.25},
            {"lower": 0.5, "upper": 1.0, "count": 0, "confidence": 0.0, "accuracy": 0.0},
            {"lower": 1.0, "upper": 1.0, "count": 2, "confidence": 1.0, "accuracy": 1.0},
        ],
        "ece": 0.1,
        "mce": 0.05,
        "brier": 0.2,
    }
    chart = charts.reliability(report)
    top = chart.figure.axes[1]
    assert top.get_xlim()[1] > 1.0
    assert [round(bar.get_width(), 3) for bar in top.patches[:2]] == [0.5, 0.02]
    assert "2 non-empty bins of 6 samples" in chart.description


def _counts(entry: dict[str, Any]) -> list[np.ndarray]:
    keys = ("true_positives", "false_positives", "true_negatives", "false_negatives")
    return [np.asarray(entry[k], dtype=np.float64) for k in keys]


def test_roc_draws_rates_from_the_counts_and_the_auc_in_the_title() -> None:
    evaluation, _ = single_label()
    tp, fp, tn, fn = _counts(evaluation["curves"]["auc"])
    chart = charts.roc(tp, fp, tn, fn, auc=evaluation["metrics"]["auc"])
    ax = chart.figure.axes[0]
    curve = ax.get_lines()[-1]
    np.testing.assert_allclose(curve.get_xdata(), fp / (fp + tn))
    np.testing.assert_allclose(curve.get_ydata(), tp / (tp + fn))
    assert chart.title == f"ROC curve — AUC {evaluation['metrics']['auc']:.4g}"
    assert ax.get_xlabel().startswith("false positive rate")
    assert ax.get_ylabel().startswith("true positive rate")


def test_pr_leaves_out_thresholds_with_no_predicted_positive() -> None:
    tp = np.array([50.0, 30.0, 10.0, 0.0])
    fp = np.array([50.0, 10.0, 2.0, 0.0])
    tn = 100.0 - fp
    fn = 50.0 - tp
    chart = charts.pr(tp, fp, tn, fn, auc=0.61)
    ax = chart.figure.axes[0]
    curve = ax.get_lines()[-1]
    np.testing.assert_allclose(curve.get_xdata(), [1.0, 0.6, 0.2])
    np.testing.assert_allclose(curve.get_ydata(), [0.5, 0.75, 10 / 12])
    chance = ax.get_lines()[0]
    assert list(chance.get_ydata()) == [1 / 3, 1 / 3]
    assert chart.title == "Precision–recall curve — AUC 0.61"
    assert "a share of 0.333 positives" in chart.description


def test_multi_label_curves_pool_the_labels_and_draw_each() -> None:
    evaluation, history = multi_head()
    head = evaluation["outputs"]["attributes"]
    chart = charts.build_chart(evaluation, "attributes.roc", history)
    ax = chart.figure.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["chance", *head["reports"]["per_class"]["labels"], "all labels pooled"]
    tp, _, _, fn = (a.sum(axis=1) for a in _counts(head["curves"]["auc"]))
    np.testing.assert_allclose(ax.get_lines()[-1].get_ydata(), tp / (tp + fn))
    assert "counts summed over 6 labels" in chart.description
    # The title's AUC is Keras' multi-label one, the mean of the labels' AUCs: not the
    # area under the pooled curve drawn, which the title and description say.
    assert chart.title.endswith("(mean over labels)")
    assert "not the area under the pooled curve" in chart.description


def test_curves_need_four_arrays_of_one_shape() -> None:
    with pytest.raises(ValueError, match="four arrays of one shape"):
        charts.roc([1, 2], [1, 2], [1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="T ≥ 2"):
        charts.pr([1], [1], [1], [1])


def test_f1_bars_are_sorted_highest_first_up_to_60_classes() -> None:
    evaluation, _ = single_label()
    report = evaluation["reports"]["per_class"]
    chart = charts.per_class_f1(report)
    ax = chart.figure.axes[0]
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == sorted(report["f1"], reverse=True)
    assert len(ax.get_yticklabels()) == 37
    assert ax.get_xlabel().startswith("F1 score")


def test_f1_chart_of_1000_classes_shows_extremes_and_the_distribution() -> None:
    evaluation, _ = single_label(n_classes=1000, n_samples=8000)
    report = evaluation["reports"]["per_class"]
    chart = charts.per_class_f1(report)
    lowest, highest, histogram = chart.figure.axes
    k = charts.F1_EXTREMES
    assert len(lowest.get_yticklabels()) == len(highest.get_yticklabels()) == k
    f1 = np.asarray(report["f1"])
    support = np.asarray(report["support"])
    assert [bar.get_width() for bar in highest.patches] == sorted(f1, reverse=True)[:k]
    # The lowest panel holds classes in the data: the absent ones all score 0 anyway.
    assert [bar.get_width() for bar in lowest.patches] == sorted(f1[support > 0])[:k]
    assert sum(bar.get_height() for bar in histogram.patches) == 1000
    absent = int((support == 0).sum())
    assert absent > 0 and f"{absent} classes absent" in chart.description
    svg = _svg_root(charts.render(chart, "svg"))
    assert len(_svg_texts(svg)) < 200
    assert chart.figure.get_size_inches()[1] < 12


def test_class_names_are_text_in_the_svg_even_markup_and_scripts() -> None:
    names = ["<script>", "a & b</g>", "猫", "Straße 🐱"]
    report = {
        "labels": names,
        "support": [3, 2, 1, 0],
        "f1": [0.5, 0.25, 1.0, 0.0],
    }
    data = charts.render(charts.per_class_f1(report), "svg")
    root = _svg_root(data)
    assert not list(root.iter(f"{SVG}script"))
    texts = _svg_texts(root)
    for name in names:
        assert name in texts
    assert b"<script>" not in data
    png = charts.render(charts.per_class_f1(report), "png")
    assert png.startswith(PNG_SIGNATURE)


def test_dollar_signs_in_names_are_text_not_formulas() -> None:
    """Matplotlib reads text between `$` signs as a formula: "$$" failed to parse (a 500),
    "$5 and $6" was drawn as an italic formula."""
    names = ["$$", "price $5 and $6", "\\"]
    report = {"labels": names, "support": [3, 2, 1], "f1": [0.5, 0.25, 1.0]}
    texts = _svg_texts(_svg_root(charts.render(charts.per_class_f1(report), "svg")))
    for name in names:
        assert name in texts
    assert charts.render(charts.per_class_f1(report), "png").startswith(PNG_SIGNATURE)


# --- determinism and threads ---------------------------------------------------------------------


def test_svg_is_deterministic() -> None:
    first = charts.render(_build("37 classes", "confusion_matrix"), "svg")
    second = charts.render(_build("37 classes", "confusion_matrix"), "svg")
    assert first == second
    assert b"<dc:date>" not in first


def _render_all(sample: str) -> dict[tuple[str, str], bytes]:
    evaluation, history = SAMPLES[sample]()
    out = {}
    for name in charts.available_charts(evaluation, history):
        chart = charts.build_chart(evaluation, name, history)
        for fmt in ("svg", "png"):
            out[name, fmt] = charts.render(chart, fmt)  # type: ignore[arg-type]
    return out


def test_renders_from_several_threads_give_identical_bytes() -> None:
    serial = _render_all("37 classes")
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(_render_all, ["37 classes"] * 6))
    for result in results:
        assert result.keys() == serial.keys()
        for key, data in result.items():
            assert data == serial[key], key


# --- huge finite values ---------------------------------------------------------------------------

#: A finite count or loss whose sums (and twice it) are past float64's range.
HUGE = 1.5e308


def _renders(chart: Chart) -> None:
    """Both formats render (a warning, such as an overflow, fails the test)."""
    _svg_root(charts.render(chart, "svg"))
    assert charts.render(chart, "png").startswith(PNG_SIGNATURE)


def _huge_charts() -> dict[str, Chart]:
    bins = [
        {"lower": k / 4, "upper": (k + 1) / 4, "count": HUGE, "confidence": k / 4 + 0.1,
         "accuracy": 0.5}
        for k in range(4)
    ]  # fmt: skip
    n = charts.HEATMAP_MAX_CLASSES + 10
    pairs = np.full((n, n), HUGE / 3)
    np.fill_diagonal(pairs, HUGE)
    counts = np.array([HUGE, HUGE / 2, HUGE / 8, 0.0])
    per_label = np.full((4, 3), HUGE)
    f1 = {"labels": [0, 1, 2], "support": [HUGE, HUGE, 0.0], "f1": [0.5, 0.25, 0.0]}
    return {
        "reliability": charts.reliability({"n_bins": 4, "bins": bins, "ece": 0.3, "mce": 0.4}),
        "loss_history": charts.loss_history(
            [{"losses": {"l": HUGE}}, {"losses": {"l": -HUGE}}, {"losses": {"l": 1.0}}],
            overall={"l": HUGE},
        ),
        "heatmap": charts.confusion_matrix({"labels": [0, 1], "matrix": [[HUGE, HUGE]] * 2}),
        "pairs": charts.confusion_matrix({"labels": list(range(n)), "matrix": pairs.tolist()}),
        "labels": charts.confusion_matrix(
            {"labels": [0, 1], "matrices": [[[HUGE, HUGE], [HUGE, HUGE]]] * 2}
        ),
        "label_bars": charts.confusion_matrix(
            {"labels": list(range(n)), "matrices": np.full((n, 2, 2), HUGE).tolist()}
        ),
        "roc": charts.roc(counts, counts[::-1], counts, counts, auc=0.5),
        "pr": charts.pr(per_label, per_label, per_label, per_label, auc=0.5),
        "per_class_f1": charts.per_class_f1(f1),
    }


def test_charts_of_huge_finite_values_render_without_overflowing() -> None:
    # Counts near float64's largest (sums of huge sample weights) and losses of either
    # sign: every chart draws them, its sums and axis limits finite.
    for name, chart in _huge_charts().items():
        assert "inf" not in chart.description and "nan" not in chart.description, name
        _renders(chart)


def test_charts_of_huge_values_draw_them_scaled_and_say_by_how_much() -> None:
    made = _huge_charts()
    # Sums past float64's range are written with their exponent, not as infinity.
    reliability = made["reliability"]
    assert "4 non-empty bins of 6e+308 summed sample weight" in reliability.description
    low = reliability.figure.axes[0]
    assert [bar.get_height() for bar in low.patches] == pytest.approx([1.5] * 4)
    assert low.get_ylabel().endswith("(× 1e+308)")
    assert all(math.isfinite(limit) for limit in low.get_ylim())
    loss = made["loss_history"].figure.axes[0]
    np.testing.assert_allclose(loss.get_lines()[0].get_ydata(), [1.5, -1.5, 1e-308])
    assert loss.get_ylabel() == "loss (value over the batch) (× 1e+308)"
    assert "between -1.5e+308 and 1.5e+308" in made["loss_history"].description
    assert "total sample weight of 6e+308" in made["heatmap"].description
    assert "3e+308 positives and 1.5e+308 negatives" in made["roc"].description
    # Rates are ratios of the counts: the same as for counts of ordinary size.
    counts = np.array([8.0, 4.0, 1.0, 0.0])
    small = charts.roc(counts, counts[::-1], counts, counts).figure.axes[0].get_lines()[-1]
    roc = made["roc"].figure.axes[0].get_lines()[-1]
    np.testing.assert_allclose(roc.get_xdata(), small.get_xdata())
    np.testing.assert_allclose(roc.get_ydata(), small.get_ydata())
    pairs = made["pairs"].figure.axes[0]
    assert pairs.get_xlabel() == "misclassified summed sample weight (× 1e+308)"
    assert all(math.isfinite(limit) for limit in pairs.get_xlim())
    # Values of ordinary size are drawn as they are, with no note on the axis.
    ordinary = charts.loss_history([{"losses": {"l": 0.5}}, {"losses": {"l": 1e100}}])
    assert ordinary.figure.axes[0].get_ylabel() == "loss (value over the batch)"
    np.testing.assert_array_equal(ordinary.figure.axes[0].get_lines()[0].get_ydata(), [0.5, 1e100])
