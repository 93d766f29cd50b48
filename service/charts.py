"""Charts of an evaluation: pure functions from report data to Matplotlib figures.

Every chart function takes plain data in the shapes of the API's reports (dicts,
lists or NumPy arrays) and returns a :class:`Chart`: a ``matplotlib.figure.Figure``
built with the object-oriented API, a title, and a one-sentence description that
serves as its text alternative (``<img alt>``, and the SVG's ``<title>``/``<desc>``).
:func:`render` turns a chart into SVG or PNG bytes.

Charts, and what they take:

- :func:`loss_history`: the batch history in arrival order, each batch
  ``{"batch_id", "n_samples", "losses": {key: value}}``, or with
  ``"outputs": {head: {"losses": {...}}}`` and ``"total_loss"`` for several heads.
- :func:`confusion_matrix`: the ``confusion_matrix`` report, ``{"labels",
  "matrix"}`` (rows true, columns predicted) or ``{"labels", "matrices"}`` (one
  ``[[tn, fp], [fn, tp]]`` per label). A heatmap up to :data:`HEATMAP_MAX_CLASSES`
  classes; past that, the most confused pairs "true → predicted" as bars.
- :func:`reliability`: the ``calibration`` report, ``{"n_bins", "bins": [{"lower",
  "upper", "count", "confidence", "accuracy"}], "ece", "mce", "brier"}``.
- :func:`roc` and :func:`pr`: an AUC's confusion counts per threshold
  (``true_positives``, ``false_positives``, ``true_negatives``,
  ``false_negatives``, each of shape ``(T,)``, or ``(T, L)`` for a multi-label AUC).
- :func:`per_class_f1`: the ``per_class`` report, ``{"labels", "support", "f1",
  ...}``; past :data:`F1_ALL_MAX_CLASSES` classes, the distribution of F1 and the
  classes of lowest and highest F1.

For a whole evaluation (the ``GET /v1/evaluations/{id}`` or ``POST /v1/evaluate``
response), :func:`available_charts` names the charts that apply, :func:`chart_text`
gives a chart's title and description without drawing it, and :func:`build_chart`
draws one by name. Charts of a head of a multi-output evaluation are named
``"<head>.<chart>"`` (split with :func:`split_chart_name`). An AUC's counts are read
from ``"curves"`` beside ``"reports"`` (per head with ``outputs``)::

    "curves": {"<auc metric key>": {"curve": "ROC" | "PR", "thresholds": [...],
               "true_positives": [...], "false_positives": [...],
               "true_negatives": [...], "false_negatives": [...]}}

its AUC value from ``metrics[<auc metric key>]`` (or the entry's ``"value"``).

Thread safety: Matplotlib's settings (``rcParams``) are process-wide, so every
function here that builds or renders a figure holds one lock while it runs under a
fixed style (Matplotlib's defaults plus :data:`STYLE`). Renders in a thread pool are
therefore serialized; they are identical byte for byte whatever the thread, and a
``matplotlibrc`` of the host changes nothing.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar
from xml.sax.saxutils import escape

import matplotlib.style
import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.collections import PolyCollection
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Patch
from matplotlib.textpath import TextToPath
from matplotlib.ticker import MaxNLocator, PercentFormatter
from numpy.typing import ArrayLike, NDArray

ChartFormat = Literal["svg", "png"]
FloatArray = NDArray[np.float64]

#: Every chart, in the order a report shows them.
CHART_KINDS = ("loss_history", "confusion_matrix", "reliability", "roc", "pr", "per_class_f1")
#: Up to this many classes the confusion matrix is a heatmap; past it, the most confused pairs.
HEATMAP_MAX_CLASSES = 50
#: How many "true → predicted" pairs (or labels, for multi-label) the bar chart shows.
MOST_CONFUSED = 30
#: Up to this many classes the F1 chart has one bar per class.
F1_ALL_MAX_CLASSES = 60
#: Past F1_ALL_MAX_CLASSES, the F1 chart shows this many classes at each end.
F1_EXTREMES = 20
#: Class names longer than this are cut on the axes (the report's table has them whole).
LABEL_CHARS = 24
#: Pixels per inch of PNG renders (SVG is resolution-free).
PNG_DPI = 144

#: Matplotlib settings every chart is built and rendered with, over Matplotlib's defaults.
STYLE: dict[str, Any] = {
    # Deterministic SVG: ids of clip paths and glyphs are hashes salted with this.
    "svg.hashsalt": "loss-service-charts",
    # Text stays text: smaller files, selectable and readable by assistive tools.
    "svg.fonttype": "none",
    # Names are the caller's text: a `$` in a class or head name is a dollar sign, not
    # the start of a formula (mathtext would redraw "$5 and $6", or fail on "$$").
    "text.parse_math": False,
    # DejaVu Sans ships with Matplotlib, so layout is the same on every host.
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 9.0,
    "axes.titlesize": 11.0,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.axisbelow": True,
    "axes.grid": False,
    "grid.color": "#d9d9d9",
    "grid.linewidth": 0.6,
    "legend.fontsize": 8.0,
    "legend.frameon": False,
    "xtick.labelsize": 8.0,
    "ytick.labelsize": 8.0,
    "image.cmap": "viridis",
    "figure.dpi": 100.0,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.dpi": PNG_DPI,
    "path.simplify": True,
    "hatch.linewidth": 0.8,
}

_LOCK = threading.RLock()
_VIRIDIS: Colormap = colormaps["viridis"]
_CIVIDIS: Colormap = colormaps["cividis"]
#: Main colours, from viridis: dark blue for data, green for a second series.
_BLUE = _VIRIDIS(0.28)
_GREEN = _VIRIDIS(0.68)
_GREY = "#6b6b6b"

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True)
class Chart:
    """A drawn chart: its figure and its text alternative."""

    #: The chart's name: one of :data:`CHART_KINDS`, or ``"<head>.<kind>"``.
    name: str
    figure: Figure
    #: A short title (the figure's own title, without numbers that need the picture).
    title: str
    #: One or two sentences saying what the chart shows, for readers who cannot see it.
    description: str


class ChartNotAvailable(LookupError):
    """The chart asked for does not apply to this evaluation (no such report or history)."""


@contextmanager
def _styled() -> Iterator[None]:
    """Matplotlib's defaults plus :data:`STYLE`, for this thread alone (see module docs)."""
    with _LOCK, matplotlib.style.context(["default", STYLE]), warnings.catch_warnings():
        # Class names may hold characters DejaVu Sans lacks (CJK, emoji): PNGs show a box
        # for them and SVGs leave them to the browser's fonts; that is not worth a warning.
        warnings.filterwarnings("ignore", r"Glyph \d+ .* missing from font", UserWarning)
        yield


def _with_style(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``function`` under :func:`_styled`."""

    def styled(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _styled():
            return function(*args, **kwargs)

    styled.__name__ = function.__name__
    styled.__qualname__ = function.__qualname__
    styled.__doc__ = function.__doc__
    return styled


# --- rendering ---------------------------------------------------------------------------------


def render(chart: Chart | Figure, fmt: ChartFormat) -> bytes:
    """The chart as SVG or PNG bytes.

    SVG output starts with ``<title>`` and ``<desc>`` elements holding the chart's
    title and description, and carries no date, so the same chart gives the same bytes.
    PNG output is rendered by Agg at :data:`PNG_DPI` with the title and description
    in its text chunks. A bare ``Figure`` has neither title nor description.
    """
    figure = chart.figure if isinstance(chart, Chart) else chart
    title = chart.title if isinstance(chart, Chart) else ""
    description = chart.description if isinstance(chart, Chart) else ""
    buffer = io.BytesIO()
    with _styled():
        if fmt == "svg":
            figure.savefig(buffer, format="svg", metadata={"Date": None})
            return _svg_with_text(buffer.getvalue(), title, description)
        if fmt == "png":
            metadata = {"Title": title, "Description": description} if title else {}
            figure.savefig(buffer, format="png", dpi=PNG_DPI, metadata=metadata)
            return buffer.getvalue()
    raise ValueError(f"Unknown chart format {fmt!r}: expected 'svg' or 'png'.")


def _svg_with_text(svg: bytes, title: str, description: str) -> bytes:
    """``svg`` with ``<title>``/``<desc>`` as the first children of its root element."""
    if not title and not description:
        return svg
    start = svg.index(b"<svg ")
    end = svg.index(b">", start) + 1
    text = f"\n <title>{escape(title)}</title>\n <desc>{escape(description)}</desc>"
    root = svg[start:end].replace(b"<svg ", b'<svg role="img" ', 1)
    return svg[:start] + root + text.encode("utf-8") + svg[end:]


# --- small helpers -----------------------------------------------------------------------------


def _num(value: float, digits: int = 4) -> str:
    """A number with ``digits`` significant digits (integers stay whole)."""
    if math.isfinite(value) and value == round(value) and abs(value) < 1e15:
        return f"{round(value):,}"
    return f"{value:.{digits}g}"


#: Values up to this magnitude are drawn and added up as they are; past it, divided by a
#: power of ten (:func:`_scale`) so that no sum, span or axis limit overflows float64.
LARGE = 1e100


def _scale(*arrays: FloatArray) -> float:
    """1, or when the largest finite magnitude in ``arrays`` exceeds :data:`LARGE`, the
    power of ten at or below it: values are then drawn and added up divided by it (about
    1 at most, so that sums, spans and axis limits stay finite) and written times it."""
    largest = 0.0
    for values in arrays:
        finite = np.abs(values[np.isfinite(values)])
        if finite.size:
            largest = max(largest, float(finite.max()))
    if largest <= LARGE:
        return 1.0
    return 10.0 ** math.floor(math.log10(largest))


def _num_times(value: float, scale: float, digits: int = 4) -> str:
    """``value × scale`` written as :func:`_num` does, also past float64's range (a sum
    of values divided by ``scale``, where the sum itself overflows)."""
    if scale == 1.0 or not math.isfinite(value):
        return _num(value, digits)
    product = value * scale
    if math.isfinite(product):
        return _num(product, digits)
    exponent = math.floor(math.log10(abs(value))) + round(math.log10(scale))
    mantissa = f"{value / 10.0 ** math.floor(math.log10(abs(value))):.{digits}g}"
    return f"{mantissa}e+{exponent}"


def _times(scale: float) -> str:
    """The note an axis label gets when its values are drawn divided by ``scale``."""
    return "" if scale == 1.0 else f" (× {scale:.0e})"


def _short(label: str, limit: int = LABEL_CHARS) -> str:
    """``label`` cut to ``limit`` characters with an ellipsis."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _floats(values: Any) -> FloatArray:
    """``values`` (list, tuple or array; ``None`` entries become NaN) as float64."""
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False)
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    """``n`` colours from viridis, stopping before its pale yellow end."""
    if n == 1:
        return [_BLUE]
    return [_VIRIDIS(0.9 * i / (n - 1)) for i in range(n)]


def _weighted(values: FloatArray) -> bool:
    """Whether counts are sums of sample weights (not all whole numbers, or beyond any
    count of samples: 2**63)."""
    finite = values[np.isfinite(values)]
    return bool(np.any(finite != np.round(finite)) or np.any(np.abs(finite) >= 2.0**63))


def _count_unit(values: FloatArray) -> str:
    return "summed sample weight" if _weighted(values) else "samples"


def _empty_note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color=_GREY)


# --- layout ------------------------------------------------------------------------------------
# Charts are laid out by hand, in inches from the figure's lower left corner: Matplotlib's
# layout engines measure every artist once or twice per render, which took more than half
# of each render's time. Sizes below are for STYLE's fonts.

#: Blank border around a figure.
_EDGE = 0.12
#: Tick marks and the gap to their labels.
_TICKS = 0.1
#: An axis label (9 pt) and its padding.
_LABEL = 0.25
#: A line of tick labels (8 pt).
_TICK_TEXT = 0.16
#: A one-line axes title (11 pt bold) and its padding; each further line adds _TITLE_LINE.
_TITLE = 0.42
_TITLE_LINE = 0.2
#: Below an x axis: its tick labels and its label.
_X_AXIS = _TICKS + _TICK_TEXT + _LABEL
#: The height of one bar row in horizontal bar charts.
_ROW = 0.22

_MEASURE = TextToPath()


def _width(texts: Iterable[str], size: float) -> float:
    """The width in inches of the widest of ``texts`` at ``size`` points in STYLE's font."""
    font = FontProperties(family=STYLE["font.sans-serif"], size=size)
    widest = max(
        (_MEASURE.get_text_width_height_descent(t, font, ismath=False)[0] for t in texts),
        default=0.0,
    )
    return float(widest) / 72.0


def _tick_width(axis: Axis, size: float = 8.0) -> float:
    """The width in inches of the widest major tick label ``axis`` will draw."""
    low, high = sorted(axis.get_view_interval())
    slack = 1e-9 * max(abs(low), abs(high), 1.0)
    ticks = [t for t in axis.get_majorticklocs() if low - slack <= t <= high + slack]
    return _width(axis.get_major_formatter().format_ticks(ticks), size)


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height))


def _place(
    figure: Figure, ax: Axes, left: float, bottom: float, width: float, height: float
) -> None:
    """Put ``ax`` at a rectangle given in inches."""
    figure_width, figure_height = figure.get_size_inches()
    ax.set_position(
        (left / figure_width, bottom / figure_height, width / figure_width, height / figure_height)
    )


def _axes(figure: Figure, left: float, bottom: float, width: float, height: float) -> Axes:
    """New axes at a rectangle given in inches."""
    figure_width, figure_height = figure.get_size_inches()
    return figure.add_axes(
        (left / figure_width, bottom / figure_height, width / figure_width, height / figure_height)
    )


def _colorbar(
    figure: Figure, image: Any, left: float, bottom: float, height: float, label: str
) -> None:
    """A colour bar of shares (0–100 %) at ``left`` (inches), ``height`` tall."""
    cax = _axes(figure, left, bottom, 0.16, height)
    colorbar = figure.colorbar(image, cax=cax, format=PercentFormatter(1.0))
    colorbar.set_label(label)


#: Width right of a heatmap for its colour bar, tick labels and label.
_COLORBAR = 0.25 + 0.16 + _TICKS + 0.4 + _LABEL + _EDGE


def _hbars(
    names: Sequence[str], size: float, *, width: float = 7.5, below: float = 0.0
) -> tuple[Figure, Axes]:
    """A figure for horizontal bars, one row per name (at least 4), names as y tick labels
    at ``size`` points; ``below`` leaves room under the x axis for a note."""
    rows = max(len(names), 4)
    left = _EDGE + _LABEL + _width(names, size) + _TICKS
    bottom = _EDGE + below + _X_AXIS
    height = bottom + rows * _ROW + 0.1 + _TITLE
    figure = _figure(width, height)
    ax = _axes(figure, left, bottom, width - left - _EDGE - 0.1, rows * _ROW + 0.1)
    ax.grid(True, axis="x")
    ax.tick_params(axis="y", length=0)
    return figure, ax


# --- loss per batch ----------------------------------------------------------------------------


def loss_series(history: Sequence[Mapping[str, Any]]) -> dict[str, FloatArray]:
    """Each loss's value per batch of ``history`` (arrival order), NaN where a batch has none.

    Keys are the loss keys of the batches; with several heads ``"<head>: <key>"``, and
    ``"total_loss"`` when batches carry one.
    """
    names: dict[str, None] = {}
    rows: list[dict[str, Any]] = []
    for batch in history:
        row: dict[str, Any] = {}
        for key, value in (batch.get("losses") or {}).items():
            row[str(key)] = value
        for head, output in (batch.get("outputs") or {}).items():
            for key, value in (output.get("losses") or {}).items():
                row[f"{head}: {key}"] = value
        if batch.get("total_loss") is not None:
            row["total_loss"] = batch["total_loss"]
        names.update(dict.fromkeys(row))
        rows.append(row)
    return {
        name: np.array(
            [
                float(row[name]) if isinstance(row.get(name), int | float) else math.nan
                for row in rows
            ],
            dtype=np.float64,
        )
        for name in names
    }


def _loss_history_text(series: Mapping[str, FloatArray], n_batches: int) -> tuple[str, str]:
    parts = []
    for name, values in list(series.items())[:4]:
        finite = np.flatnonzero(np.isfinite(values))
        if finite.size == 0:
            continue
        first, last = int(finite[0]), int(finite[-1])
        parts.append(
            f"{name} from {_num(values[first])} (batch {first + 1}) to {_num(values[last])} "
            f"(batch {last + 1}), between {_num(values[finite].min())} and "
            f"{_num(values[finite].max())}"
        )
    more = f"; and {len(series) - 4} more losses" if len(series) > 4 else ""
    batches = "1 batch" if n_batches == 1 else f"{n_batches:,} batches"
    return "Loss per batch", (
        f"Line chart of each loss over {batches} in arrival order: {'; '.join(parts)}{more}."
    )


@_with_style
def loss_history(
    history: Sequence[Mapping[str, Any]], *, overall: Mapping[str, float] | None = None
) -> Chart:
    """Each loss's value per batch, against the batch number in arrival order.

    Args:
        history: the batches in arrival order (``GET /v1/evaluations/{id}/batches``
            items), each with ``"losses": {key: value}`` or, for several heads,
            ``"outputs": {head: {"losses": {...}}}`` and ``"total_loss"``.
        overall: the evaluation's value of each loss over all batches, drawn as a
            dashed line of the same colour (keys as in :func:`loss_series`).

    Raises:
        ValueError: no batch holds a loss value.
    """
    series = loss_series(history)
    if not any(np.isfinite(values).any() for values in series.values()):
        raise ValueError("The batch history holds no loss value to draw.")
    title, description = _loss_history_text(series, len(history))
    entries = list(series)
    if overall:
        entries.append("over all batches")
    width = 7.5
    # Legend entries: the line sample and gaps take about 0.45 in beside the text.
    columns = max(1, min(len(entries), int((width - 2 * _EDGE) // (_width(entries, 8.0) + 0.45))))
    legend_height = math.ceil(len(entries) / columns) * 0.19 + 0.1
    bottom = _EDGE + legend_height + _X_AXIS
    height = bottom + 2.9 + _TITLE
    figure = _figure(width, height)
    ax = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    ax.grid(True, axis="y")
    x = np.arange(1, len(history) + 1)
    marker = "o" if len(history) <= 60 else None
    drawn = {
        name: float(value)
        for name, value in (overall or {}).items()
        if name in series and isinstance(value, int | float)
    }
    scale = _scale(*series.values(), _floats(list(drawn.values())))
    for (name, values), colour in zip(series.items(), _palette(len(series)), strict=True):
        ax.plot(
            x, values / scale, color=colour, linewidth=1.4, marker=marker, markersize=3, label=name
        )
        if name in drawn:
            ax.axhline(drawn[name] / scale, color=colour, linewidth=0.9, linestyle="--")
    handles, labels = ax.get_legend_handles_labels()
    if overall:
        handles.append(ax.plot([], [], color=_GREY, linewidth=0.9, linestyle="--")[0])
        labels.append("over all batches")
    ax.set_xlim(0.5, max(len(history), 1) + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("batch number (arrival order)")
    ax.set_ylabel(f"loss (value over the batch){_times(scale)}")
    ax.set_title(title)
    left = _EDGE + _LABEL + _tick_width(ax.yaxis) + _TICKS
    _place(figure, ax, left, bottom, width - left - 0.25, 2.9)
    figure.legend(
        handles, labels, loc="lower center", bbox_to_anchor=(0.5, _EDGE / height), ncols=columns
    )
    return Chart("loss_history", figure, title, description)


# --- confusion matrix --------------------------------------------------------------------------


def _most_confused(matrix: FloatArray, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` largest off-diagonal cells as (true, predicted, count), largest first,
    ties in row-major order; cells of zero are left out."""
    off = matrix.copy()
    np.fill_diagonal(off, 0.0)
    flat = off.ravel()
    k = min(k, int(np.count_nonzero(flat > 0)))
    if k == 0:
        return []
    # A partition finds the k-th largest count without sorting every cell; all cells at
    # least that large are then sorted by count and index, so ties are settled by index.
    threshold = -np.partition(-flat, k - 1)[k - 1]
    candidates = np.flatnonzero(flat >= threshold)
    order = np.lexsort((candidates, -flat[candidates]))[:k]
    n = matrix.shape[1]
    return [(int(c // n), int(c % n), float(flat[c])) for c in candidates[order]]


def _matrix(report: Mapping[str, Any]) -> tuple[list[str], FloatArray]:
    """The labels of a ``confusion_matrix`` report and its matrix, (n, n), or for a
    multi-label report its (n, 4) counts of tn, fp, fn, tp per label."""
    labels = [str(label) for label in report["labels"]]
    n = len(labels)
    if "matrices" in report:
        counts = np.asarray(report["matrices"], dtype=np.float64)
        if counts.shape != (n, 2, 2):
            raise ValueError(
                f"The multi-label confusion matrices have shape {counts.shape}, expected "
                f"({n}, 2, 2) for {n} labels."
            )
        return labels, counts.reshape(n, 4)
    matrix = np.asarray(report["matrix"], dtype=np.float64)
    if matrix.shape != (n, n):
        raise ValueError(
            f"The confusion matrix has shape {matrix.shape}, expected ({n}, {n}) for {n} labels."
        )
    return labels, matrix


def _confusion_text(labels: list[str], matrix: FloatArray, multi: bool) -> tuple[str, str]:
    n = len(labels)
    scale = _scale(matrix)
    scaled = matrix / scale
    if multi:
        errors = scaled[:, 1] + scaled[:, 2]
        worst = int(np.argmax(errors)) if n else 0
        how = "heatmap of" if n <= HEATMAP_MAX_CLASSES else "bars of the labels with most errors:"
        return f"Confusion per label ({n:,} labels)", (
            f"Multi-label confusion, {how} true negatives, false positives, false negatives "
            f"and true positives per label; most errors: {labels[worst]} with "
            f"{_num(matrix[worst, 1])} false positives and {_num(matrix[worst, 2])} false "
            "negatives."
        )
    total = float(scaled.sum())
    share = float(np.trace(scaled)) / total if total else 0.0
    pairs = _most_confused(scaled, MOST_CONFUSED if n > HEATMAP_MAX_CLASSES else 1)
    most = (
        f"most confused: {labels[pairs[0][0]]} → {labels[pairs[0][1]]} "
        f"({_num_times(pairs[0][2], scale)})"
        if pairs
        else "no sample misclassified"
    )
    if n <= HEATMAP_MAX_CLASSES:
        title = f"Confusion matrix ({n} classes)"
        what = "Heatmap of true class (rows) against predicted class (columns)"
    else:
        title = f"Most confused pairs ({n:,} classes)"
        what = f"Bars of the {len(pairs)} most frequent true → predicted confusions"
    of = (
        f"of a total sample weight of {_num_times(total, scale, 6)}"
        if _weighted(matrix)
        else f"of {_num_times(total, scale)} samples"
    )
    return title, f"{what}; {share:.1%} {of} on the diagonal; {most}."


@_with_style
def confusion_matrix(report: Mapping[str, Any]) -> Chart:
    """The ``confusion_matrix`` report as a heatmap, or as the most confused pairs.

    Args:
        report: ``{"labels": [...], "matrix": [[...]]}`` with rows the true classes and
            columns the predicted ones, or ``{"labels": [...], "matrices": [[[tn, fp],
            [fn, tp]], ...]}`` for multi-label batches.

    Up to :data:`HEATMAP_MAX_CLASSES` classes, a heatmap whose colour is the share of
    each true class's samples (so rare classes read as well as common ones). Past it,
    a bar chart of the :data:`MOST_CONFUSED` largest off-diagonal cells, labelled
    "true → predicted"; for multi-label reports, the labels with most false positives
    and false negatives.

    Raises:
        ValueError: the matrix's shape does not fit the labels.
    """
    multi = "matrices" in report
    labels, matrix = _matrix(report)
    title, description = _confusion_text(labels, matrix, multi)
    small = len(labels) <= HEATMAP_MAX_CLASSES
    if multi:
        figure = _label_heatmap(labels, matrix) if small else _label_error_bars(labels, matrix)
    else:
        figure = _heatmap(labels, matrix) if small else _pair_bars(labels, matrix)
    figure.axes[0].set_title(title)
    return Chart("confusion_matrix", figure, title, description)


def _tick_size(n: int) -> float:
    return 8.0 if n <= 20 else 7.0 if n <= 35 else 6.0


def _cell_text(ax: Axes, values: FloatArray, rates: FloatArray, size: float) -> None:
    """Each cell's count, white on dark cells and black on light ones."""
    for (i, j), value in np.ndenumerate(values):
        colour = "white" if rates[i, j] < 0.6 else "black"
        ax.text(j, i, _num(float(value)), ha="center", va="center", fontsize=size, color=colour)


def _shares(counts: FloatArray) -> FloatArray:
    """Each row of ``counts`` divided by its sum (rows of zeros stay zero)."""
    counts = counts / _scale(counts)
    totals = counts.sum(axis=1, keepdims=True)
    shares: FloatArray = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    return shares


def _heatmap(labels: list[str], matrix: FloatArray) -> Figure:
    n = len(labels)
    size = _tick_size(n)
    names = [_short(label) for label in labels]
    side = min(8.0, max(2.4, 0.16 * n))
    margin = _EDGE + _LABEL + _width(names, size) + _TICKS
    figure = _figure(margin + side + _COLORBAR, margin + side + _TITLE)
    ax = _axes(figure, margin, margin, side, side)
    rates = _shares(matrix)
    image = ax.imshow(rates, cmap=_VIRIDIS, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n), names, rotation=90, fontsize=size)
    ax.set_yticks(range(n), names, fontsize=size)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if n <= 12:
        _cell_text(ax, matrix, rates, 8.0 if n <= 8 else 7.0)
    _colorbar(
        figure,
        image,
        margin + side + 0.25,
        margin + 0.1 * side,
        0.8 * side,
        "share of the true class (%)",
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return figure


def _pair_bars(labels: list[str], counted: FloatArray) -> Figure:
    scale = _scale(counted)
    matrix = counted / scale
    pairs = _most_confused(matrix, MOST_CONFUSED)
    size = 7.0 if len(pairs) > 20 else 8.0
    names = [f"{_short(labels[i], 18)} → {_short(labels[j], 18)}" for i, j, _ in pairs]
    figure, ax = _hbars(names, size, below=0.2)
    support = matrix.sum(axis=1)
    errors = float(matrix.sum() - np.trace(matrix))
    if not pairs:
        _empty_note(ax, "No sample misclassified.")
        ax.set_yticks([])
    else:
        counts = np.array([count for _, _, count in pairs])
        y = np.arange(len(pairs))
        ax.barh(y, counts, color=_BLUE, height=0.7)
        ax.set_yticks(y, names, fontsize=size)
        ax.set_ylim(len(pairs) - 0.5, -0.5)
        for row, (i, _, count) in enumerate(pairs):
            share = count / support[i] if support[i] else 0.0
            ax.text(
                count,
                row,
                f" {_num_times(count, scale, 3)} ({share:.0%} of true)",
                va="center",
                fontsize=7.0,
            )
        ax.set_xlim(0, counts.max() * 1.3)
        width, height = figure.get_size_inches()
        figure.text(
            1.0 - (_EDGE + 0.1) / width,
            _EDGE / height,
            f"{len(pairs)} of the {len(labels):,} × {len(labels) - 1:,} off-diagonal cells, "
            f"holding {counts.sum() / errors:.1%} of all misclassifications",
            ha="right",
            va="bottom",
            fontsize=7.0,
            color=_GREY,
        )
    ax.set_xlabel(f"misclassified {_count_unit(counted)}{_times(scale)}")
    ax.set_ylabel("true class → predicted class")
    return figure


def _label_heatmap(labels: list[str], counts: FloatArray) -> Figure:
    n = len(labels)
    size = _tick_size(n)
    names = [_short(label) for label in labels]
    row = min(0.3, 8.0 / n)
    left = _EDGE + _LABEL + _width(names, size) + _TICKS
    bottom = _EDGE + _X_AXIS
    figure = _figure(left + 3.8 + _COLORBAR, bottom + n * row + _TITLE)
    ax = _axes(figure, left, bottom, 3.8, n * row)
    rates = _shares(counts)
    image = ax.imshow(rates, cmap=_VIRIDIS, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(4), ["true neg.", "false pos.", "false neg.", "true pos."])
    ax.set_yticks(range(n), names, fontsize=size)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if n <= 30:
        _cell_text(ax, counts, rates, 7.0)
    height = n * row
    _colorbar(
        figure,
        image,
        left + 3.8 + 0.25,
        bottom + 0.1 * height,
        0.8 * height,
        "share of the label's samples (%)",
    )
    ax.set_xlabel("outcome")
    ax.set_ylabel("label")
    return figure


def _label_error_bars(labels: list[str], counted: FloatArray) -> Figure:
    scale = _scale(counted)
    counts = counted / scale
    errors = counts[:, 1] + counts[:, 2]
    order = np.lexsort((np.arange(len(labels)), -errors))[:MOST_CONFUSED]
    order = order[errors[order] > 0]
    names = [_short(labels[i]) for i in order]
    figure, ax = _hbars(names, 7.0)
    y = np.arange(order.size)
    ax.barh(y, counts[order, 1], color=_BLUE, height=0.7, label="false positives")
    ax.barh(
        y,
        counts[order, 2],
        left=counts[order, 1],
        color=_GREEN,
        height=0.7,
        label="false negatives",
    )
    ax.set_yticks(y, names, fontsize=7.0)
    ax.set_ylim(max(order.size, 4) - 0.5, -0.5)
    if order.size:
        ax.legend(loc="lower right")
    else:
        _empty_note(ax, "No label has a false positive or a false negative.")
    ax.set_xlabel(f"errors ({_count_unit(counted)}){_times(scale)}")
    ax.set_ylabel("label")
    return figure


# --- reliability diagram -----------------------------------------------------------------------

_BIN_KEYS = ("lower", "upper", "count", "confidence", "accuracy")


def _bins(report: Mapping[str, Any]) -> dict[str, FloatArray]:
    bins = report["bins"]
    return {key: _floats([b.get(key) for b in bins]) for key in _BIN_KEYS}


def _reliability_text(report: Mapping[str, Any]) -> tuple[str, str]:
    bins = _bins(report)
    filled = bins["count"] > 0
    scale = _scale(bins["count"])
    title = f"Reliability diagram ({int(report.get('n_bins', filled.size))} bins)"
    gaps = np.where(filled, np.abs(bins["accuracy"] - bins["confidence"]), -1.0)
    worst_text = ""
    if filled.any():
        worst = int(np.nanargmax(gaps))
        worst_text = (
            f"; largest gap in the bin {_num(bins['lower'][worst], 3)}–"
            f"{_num(bins['upper'][worst], 3)}: accuracy {_num(bins['accuracy'][worst], 3)} at "
            f"confidence {_num(bins['confidence'][worst], 3)}"
        )
    return title, (
        f"Accuracy against confidence for {int(filled.sum())} non-empty bins of "
        f"{_num_times(float((bins['count'] / scale).sum()), scale, 6)} "
        f"{_count_unit(bins['count'])}, with the diagonal of "
        f"perfect calibration; ECE {_num(float(report['ece']), 3)}, MCE "
        f"{_num(float(report['mce']), 3)}{worst_text}."
    )


#: Bars drawn one rectangle each up to this many; more are one collection (a rectangle is
#: an artist of its own: 10,000 of them took seconds to draw).
_BARS_ONE_BY_ONE = 200


def _bars(
    axes: Axes,
    left: NDArray[np.floating],
    height: NDArray[np.floating],
    width: NDArray[np.floating],
    bottom: NDArray[np.floating] | float = 0.0,
    **style: Any,
) -> None:
    """Bars from ``left`` (as ``Axes.bar`` with ``align="edge"``), as one collection of
    rectangles when there are many."""
    if left.size <= _BARS_ONE_BY_ONE:
        axes.bar(left, height, width=width, bottom=bottom, align="edge", **style)
        return
    base = np.broadcast_to(np.asarray(bottom, dtype=np.float64), left.shape)
    right, top = left + width, base + height
    pairs = ((left, base), (left, top), (right, top), (right, base))
    corners = np.stack([np.stack(pair, axis=-1) for pair in pairs], axis=1)
    if "color" in style:
        style.setdefault("facecolor", style.pop("color"))
    if style.pop("hatch", None) is not None:
        # Hatching thousands of narrow bars takes seconds and shows nothing: their edge
        # colour, light, fills them instead.
        style.update(facecolor=style.get("edgecolor"), alpha=0.35)
    # Edges as wide as the bars would hide them.
    style.update(linewidth=0.0, edgecolor="none")
    axes.add_collection(PolyCollection(list(corners), **style))
    axes.autoscale_view()


@_with_style
def reliability(report: Mapping[str, Any]) -> Chart:
    """The ``calibration`` report as a reliability diagram.

    Args:
        report: ``{"n_bins", "bins": [{"lower", "upper", "count", "confidence",
            "accuracy"}], "ece", "mce", "brier"}``; the bin of confidences equal to 1
            (``lower == upper == 1``) is drawn as a narrow bar just right of 1.

    Top: each bin's accuracy as a bar as wide as the bin, its mean confidence as a
    dot, the gap between them hatched, and the diagonal of perfect calibration. Below:
    the samples in each bin. ECE, MCE (and the Brier score when given) in the title.
    """
    title, description = _reliability_text(report)
    bins = _bins(report)
    lower = bins["lower"]
    # The bin of confidences equal to 1 has no width; it is drawn just right of 1.
    edge = bins["upper"] - lower <= 0
    width = np.where(edge, 0.02, bins["upper"] - lower)
    filled = bins["count"] > 0
    accuracy = np.nan_to_num(bins["accuracy"])
    confidence = np.nan_to_num(bins["confidence"])
    scale = _scale(bins["count"])
    counts = bins["count"] / scale

    figure_width, main, below, gap = 6.4, 3.6, 1.1, 0.25
    bottom = _EDGE + _X_AXIS
    figure = _figure(figure_width, bottom + below + gap + main + _TITLE + _TITLE_LINE)
    low = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    top = figure.add_axes((0.0, 0.0, 1.0, 1.0), sharex=low)

    top.plot(
        [0, 1], [0, 1], color=_GREY, linestyle="--", linewidth=1.0, label="perfect calibration"
    )
    _bars(
        top, lower[filled], accuracy[filled], width[filled], color=_BLUE,
        edgecolor="white", linewidth=0.6, label="accuracy",
    )  # fmt: skip
    _bars(
        top, lower[filled], np.abs(accuracy - confidence)[filled], width[filled],
        bottom=np.minimum(accuracy, confidence)[filled], facecolor="none",
        edgecolor=_GREEN, hatch="////", linewidth=0.6, label="gap to confidence",
    )  # fmt: skip
    top.plot(
        (lower + width / 2)[filled], confidence[filled], linestyle="none", marker="o",
        markersize=3.5, color="black", label="mean confidence",
    )  # fmt: skip
    top.set_xlim(0.0, 1.03 if edge[filled].any() else 1.0)
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("accuracy (fraction correct)")
    top.tick_params(labelbottom=False)
    top.legend(loc="upper left")
    top.grid(True)
    brier = report.get("brier")
    top.set_title(
        f"{title}\nECE {_num(float(report['ece']), 3)} · MCE {_num(float(report['mce']), 3)}"
        + (f" · Brier {_num(float(brier), 3)}" if isinstance(brier, int | float) else "")
    )

    # Empty bins have no bar to draw (a bar of height 0 is not seen).
    _bars(low, lower[filled], counts[filled], width[filled], color=_GREEN, edgecolor="white")
    if counts.size <= 20:
        for x, w, count in zip(lower[filled], width[filled], counts[filled], strict=True):
            low.text(
                x + w / 2,
                count,
                _num_times(float(count), scale, 3),
                ha="center",
                va="bottom",
                size=6.5,
            )
    low.set_ylim(0, max(float(counts.max(initial=0.0)), 1.0) * 1.3)
    low.yaxis.set_major_locator(MaxNLocator(3))
    low.set_ylabel(f"{_count_unit(bins['count'])}\nper bin{_times(scale)}")
    low.set_xlabel("confidence (predicted probability)")

    left = _EDGE + 2 * _LABEL + max(_tick_width(top.yaxis), _tick_width(low.yaxis)) + _TICKS
    plot_width = figure_width - left - 0.3
    _place(figure, low, left, bottom, plot_width, below)
    _place(figure, top, left, bottom + below + gap, plot_width, main)
    return Chart("reliability", figure, title, description)


# --- ROC and precision-recall curves -----------------------------------------------------------


def _rates(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
    return np.divide(
        numerator, denominator, out=np.full_like(numerator, np.nan), where=denominator > 0
    )


def _counts(
    true_positives: ArrayLike,
    false_positives: ArrayLike,
    true_negatives: ArrayLike,
    false_negatives: ArrayLike,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, float]:
    """The four arrays as float64, divided by their :func:`_scale` (rates are ratios of
    them, so they do not change), and that scale."""
    tp, fp, tn, fn = (
        np.asarray(a, dtype=np.float64)
        for a in (true_positives, false_positives, true_negatives, false_negatives)
    )
    shapes = [a.shape for a in (tp, fp, tn, fn)]
    if len(set(shapes)) != 1 or tp.ndim not in (1, 2) or tp.shape[0] < 2:
        raise ValueError(
            "The confusion counts per threshold must be four arrays of one shape, (T,) or "
            f"(T, labels) with T ≥ 2; received shapes {shapes}."
        )
    scale = _scale(tp, fp, tn, fn)
    return tp / scale, fp / scale, tn / scale, fn / scale, scale


def _auc_text(auc: float | None, labels: bool = False) -> str:
    """The AUC in a curve's title; a multi-label AUC (``labels``) is the mean of the
    labels' AUCs, not the area under the pooled curve drawn."""
    if auc is None:
        return ""
    return f" — AUC {_num(float(auc), 4)}" + (" (mean over labels)" if labels else "")


def _curve_texts(
    kind: Literal["roc", "pr"],
    tp: FloatArray,
    fp: FloatArray,
    tn: FloatArray,
    fn: FloatArray,
    auc: float | None,
    scale: float = 1.0,
) -> tuple[str, str]:
    """A curve's title and description from its counts per threshold (divided by
    ``scale``, see :func:`_counts`)."""
    positives = float((tp[0] + fn[0]).sum())
    negatives = float((fp[0] + tn[0]).sum())
    labels = f", counts summed over {tp.shape[1]} labels" if tp.ndim == 2 else ""
    if kind == "roc":
        title, what, baseline = "ROC curve", "True positive rate against false positive rate", ""
    else:
        title, what = "Precision–recall curve", "Precision against recall"
        total = positives + negatives
        baseline = f" (a share of {positives / total if total else 0.0:.3g} positives)"
    value = "" if auc is None else f"; AUC {_num(float(auc), 4)}"
    if auc is not None and tp.ndim == 2:
        value += " (the mean of the labels' AUCs, not the area under the pooled curve)"
    return title + _auc_text(auc, tp.ndim == 2), (
        f"{what} over {tp.shape[0]} thresholds{labels}; {_num_times(positives, scale)} "
        f"positives and {_num_times(negatives, scale)} negatives{baseline}{value}."
    )


def _pooled(a: FloatArray) -> FloatArray:
    """Counts per threshold summed over labels (a multi-label AUC's columns)."""
    return a.sum(axis=1) if a.ndim == 2 else a


def _curve_figure() -> tuple[Figure, Axes]:
    side = 4.0
    left = _EDGE + _LABEL + _width(["0.0", "1.0"], 8.0) + _TICKS
    bottom = _EDGE + _X_AXIS
    figure = _figure(left + side + 0.3, bottom + side + _TITLE)
    ax = _axes(figure, left, bottom, side, side)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.grid(True)
    return figure, ax


def _per_label(
    ax: Axes, x: FloatArray, y: FloatArray, labels: Sequence[str] | None, limit: int = 10
) -> None:
    """Thin curves of each label (columns of ``x`` and ``y``), up to ``limit`` labels."""
    if x.ndim != 2 or x.shape[1] > limit:
        return
    for column, colour in zip(range(x.shape[1]), _palette(x.shape[1]), strict=True):
        name = str(labels[column]) if labels is not None and column < len(labels) else str(column)
        keep = np.isfinite(x[:, column]) & np.isfinite(y[:, column])
        ax.plot(
            x[keep, column], y[keep, column], color=colour, linewidth=0.8, alpha=0.6, label=name
        )


@_with_style
def roc(
    true_positives: ArrayLike,
    false_positives: ArrayLike,
    true_negatives: ArrayLike,
    false_negatives: ArrayLike,
    *,
    auc: float | None = None,
    labels: Sequence[str] | None = None,
) -> Chart:
    """The ROC curve of an AUC's confusion counts per threshold.

    Args:
        true_positives, false_positives, true_negatives, false_negatives: counts per
            threshold, shape ``(T,)``; or ``(T, L)`` for a multi-label AUC, drawn as the
            curve of the counts summed over labels (and one thin curve per label when
            there are at most 10).
        auc: the AUC's value, shown in the title.
        labels: names of the L labels of a multi-label AUC.

    Raises:
        ValueError: the four arrays differ in shape, or hold fewer than 2 thresholds.
    """
    tp, fp, tn, fn, scale = _counts(
        true_positives, false_positives, true_negatives, false_negatives
    )
    title, description = _curve_texts("roc", tp, fp, tn, fn, auc, scale)
    ptp, pfp, ptn, pfn = (_pooled(a) for a in (tp, fp, tn, fn))
    x, y = _rates(pfp, pfp + ptn), _rates(ptp, ptp + pfn)
    keep = np.isfinite(x) & np.isfinite(y)
    figure, ax = _curve_figure()
    ax.plot([0, 1], [0, 1], color=_GREY, linestyle="--", linewidth=1.0, label="chance")
    _per_label(ax, _rates(fp, fp + tn), _rates(tp, tp + fn), labels)
    ax.fill_between(x[keep], y[keep], color=_BLUE, alpha=0.12, linewidth=0)
    ax.plot(
        x[keep],
        y[keep],
        color=_BLUE,
        linewidth=1.8,
        label="all labels pooled" if tp.ndim == 2 else "ROC",
    )
    ax.legend(loc="lower right")
    ax.set_xlabel("false positive rate (fraction of negatives)")
    ax.set_ylabel("true positive rate (fraction of positives)")
    ax.set_title(title)
    return Chart("roc", figure, title, description)


@_with_style
def pr(
    true_positives: ArrayLike,
    false_positives: ArrayLike,
    true_negatives: ArrayLike,
    false_negatives: ArrayLike,
    *,
    auc: float | None = None,
    labels: Sequence[str] | None = None,
) -> Chart:
    """The precision-recall curve of an AUC's confusion counts per threshold.

    Takes the same arguments as :func:`roc`. Thresholds with no predicted positive have
    no precision and are left out of the curve. The dashed line is the precision of a
    random guess: the share of positives.

    Raises:
        ValueError: the four arrays differ in shape, or hold fewer than 2 thresholds.
    """
    tp, fp, tn, fn, scale = _counts(
        true_positives, false_positives, true_negatives, false_negatives
    )
    title, description = _curve_texts("pr", tp, fp, tn, fn, auc, scale)
    ptp, pfp, ptn, pfn = (_pooled(a) for a in (tp, fp, tn, fn))
    recall, precision = _rates(ptp, ptp + pfn), _rates(ptp, ptp + pfp)
    total = ptp[0] + pfp[0] + ptn[0] + pfn[0]
    prevalence = float((ptp[0] + pfn[0]) / total) if total else 0.0
    keep = np.isfinite(precision) & np.isfinite(recall)
    figure, ax = _curve_figure()
    ax.axhline(prevalence, color=_GREY, linestyle="--", linewidth=1.0, label="chance (prevalence)")
    _per_label(ax, _rates(tp, tp + fn), _rates(tp, tp + fp), labels)
    ax.fill_between(recall[keep], precision[keep], color=_BLUE, alpha=0.12, linewidth=0)
    ax.plot(
        recall[keep], precision[keep], color=_BLUE, linewidth=1.8,
        label="all labels pooled" if tp.ndim == 2 else "precision–recall",
    )  # fmt: skip
    ax.legend(loc="lower left")
    ax.set_xlabel("recall (fraction of positives found)")
    ax.set_ylabel("precision (fraction of predictions right)")
    ax.set_title(title)
    return Chart("pr", figure, title, description)


# --- F1 per class ------------------------------------------------------------------------------


def _f1_order(f1: FloatArray, support: FloatArray) -> NDArray[np.intp]:
    """Class indices by F1 descending, then support descending, then index."""
    return np.lexsort((np.arange(f1.size), -support, -f1))


def _f1_data(report: Mapping[str, Any]) -> tuple[list[str], FloatArray, FloatArray]:
    labels = [str(label) for label in report["labels"]]
    f1 = _floats(report["f1"])
    support = _floats(report["support"])
    if not (len(labels) == f1.size == support.size) or not labels:
        raise ValueError(
            f"The per-class report has {len(labels)} labels, {f1.size} F1 values and "
            f"{support.size} supports; expected the same non-zero number of each."
        )
    return labels, f1, support


def _lowest_present(order: NDArray[np.intp], support: FloatArray, k: int) -> NDArray[np.intp]:
    """The ``k`` classes of lowest F1 among those in the data (all scoring 0 otherwise),
    lowest first."""
    present = order[support[order] > 0]
    return (present if present.size else order)[-k:][::-1]


def _per_class_f1_text(report: Mapping[str, Any]) -> tuple[str, str]:
    labels, f1, support = _f1_data(report)
    n = len(labels)
    order = _f1_order(f1, support)
    absent = int((support == 0).sum())
    if n <= F1_ALL_MAX_CLASSES:
        layout = "Bars of every class's F1, highest first"
    else:
        layout = (
            f"Distribution of F1 over all classes, and bars of the {F1_EXTREMES} lowest"
            f"{' of the classes in the data' if absent else ''} and the {F1_EXTREMES} highest"
        )
    low = _lowest_present(order, support, 1)[0]
    absent_text = f"; {absent} classes absent from the data score 0" if absent else ""
    return f"F1 per class ({n:,} classes)", (
        f"{layout}; macro F1 {_num(float(f1.mean()), 3)}; highest {labels[order[0]]} "
        f"{_num(float(f1[order[0]]), 3)}, lowest{' in the data' if absent else ''} "
        f"{labels[low]} {_num(float(f1[low]), 3)}{absent_text}."
    )


def _f1_bars(
    ax: Axes,
    names: list[str],
    f1: FloatArray,
    support: FloatArray,
    rows: NDArray[np.intp],
    size: float,
) -> None:
    """Bars of F1 for the classes ``rows``, in that order from the top, each with its value
    and support; classes absent from the data hollow."""
    y = np.arange(rows.size)
    colours = [_BLUE if support[i] > 0 else "white" for i in rows]
    ax.barh(y, f1[rows], color=colours, edgecolor=_BLUE, linewidth=0.6, height=0.72)
    ax.set_yticks(y, [names[i] for i in rows], fontsize=size)
    for row, i in enumerate(rows):
        # A white backing keeps each value readable where the macro F1 line crosses it.
        ax.text(
            f1[i] + 0.01, row, f"{f1[i]:.2f} (n={_num(float(support[i]), 3)})",
            va="center", fontsize=size - 1.0, zorder=3,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.4, "alpha": 0.85},
        )  # fmt: skip
    ax.set_ylim(max(rows.size, 4) - 0.5, -0.5)
    ax.set_xlim(0.0, 1.3)
    ax.set_xticks([0.0, 0.25, 0.5, 0.75, 1.0])
    ax.tick_params(axis="y", length=0)
    ax.grid(True, axis="x")


@_with_style
def per_class_f1(report: Mapping[str, Any]) -> Chart:
    """F1 per class from the ``per_class`` report, highest first.

    Args:
        report: ``{"labels": [...], "support": [...], "f1": [...], ...}`` (other keys
            are ignored).

    Up to :data:`F1_ALL_MAX_CLASSES` classes, one bar per class with its F1 and
    support, the macro F1 as a dashed line. Past it, the histogram of F1 over all
    classes above the :data:`F1_EXTREMES` classes of lowest F1 among those in the data
    and the :data:`F1_EXTREMES` of highest F1. Classes absent from the data (support 0,
    F1 0) are drawn as hollow bars.

    Raises:
        ValueError: labels, F1 values and supports differ in number, or there are none.
    """
    labels, f1, support = _f1_data(report)
    title, description = _per_class_f1_text(report)
    names = [_short(label) for label in labels]
    order = _f1_order(f1, support)
    macro = float(f1.mean())
    absent = int((support == 0).sum())
    if len(labels) <= F1_ALL_MAX_CLASSES:
        size = 7.0 if len(labels) > 30 else 8.0
        figure, ax = _hbars([names[i] for i in order], size)
        _f1_bars(ax, names, f1, support, order, size)
        ax.axvline(macro, color=_GREY, linestyle="--", linewidth=1.0, label=f"macro F1 {macro:.3f}")
        handles = [ax.get_legend_handles_labels()[0][0]]
        if absent:
            handles.append(Patch(facecolor="white", edgecolor=_BLUE, label="absent from the data"))
        ax.legend(handles=handles, loc="lower right")
        ax.set_xlabel("F1 score (0–1; n = support)")
        ax.set_ylabel("class")
        ax.set_title(title)
        return Chart("per_class_f1", figure, title, description)

    k = F1_EXTREMES
    panels = (
        (
            _lowest_present(order, support, k),
            f"The {k} lowest F1"
            + (f"\n(of classes in the data; {absent:,} absent ones score 0)" if absent else ""),
        ),
        (order[:k], f"The {k} highest F1"),
    )
    width, size, rows = 9.0, 7.5, k * _ROW + 0.1
    bottom = _EDGE + _X_AXIS
    histogram_bottom = bottom + rows + _TITLE + _TITLE_LINE + _X_AXIS + 0.1
    histogram_height = 1.2
    figure = _figure(width, histogram_bottom + histogram_height + _TITLE + 0.45)
    half = (width - 2 * _EDGE) / 2
    for column, (rows_shown, name) in enumerate(panels):
        left = _EDGE + column * half + _width([names[i] for i in rows_shown], size) + _TICKS
        ax = _axes(figure, left, bottom, _EDGE + (column + 1) * half - left - 0.2, rows)
        _f1_bars(ax, names, f1, support, rows_shown, size)
        ax.set_xlabel("F1 score (n = support)")
        ax.set_title(name, fontsize=9.0, fontweight="normal")
    histogram = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    histogram.hist(f1, bins=20, range=(0.0, 1.0), color=_BLUE, edgecolor="white")
    histogram.axvline(macro, color=_GREY, linestyle="--", linewidth=1.0)
    histogram.text(
        macro, 1.0, f" macro F1 {macro:.3f}", transform=histogram.get_xaxis_transform(),
        va="top", fontsize=7.5,
    )  # fmt: skip
    histogram.set_xlim(0.0, 1.0)
    histogram.set_xlabel("F1 score (0–1)")
    histogram.set_ylabel("classes")
    histogram.grid(True, axis="y")
    histogram.set_title(f"All {len(labels):,} classes", fontsize=9.0, fontweight="normal")
    left = _EDGE + _LABEL + _tick_width(histogram.yaxis) + _TICKS
    _place(figure, histogram, left, histogram_bottom, width - left - 0.3, histogram_height)
    figure.suptitle(
        title,
        y=1.0 - _EDGE / figure.get_size_inches()[1],
        va="top",
        fontsize=11.0,
        fontweight="bold",
    )
    return Chart("per_class_f1", figure, title, description)


# --- charts of an evaluation -------------------------------------------------------------------


def split_chart_name(name: str) -> tuple[str | None, str]:
    """``"<head>.<kind>"`` as ``(head, kind)``; a plain kind as ``(None, kind)``.

    Chart kinds have no dot, so a head name may hold dots.
    """
    head, _, kind = name.rpartition(".")
    return (head if head else None), kind


def _auc_entries(part: Mapping[str, Any]) -> dict[str, tuple[str, Mapping[str, Any]]]:
    """The first AUC of each curve kind of one evaluation (or head): kind → (key, entry)."""
    found: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for key, entry in (part.get("curves") or {}).items():
        kind = "pr" if str(entry.get("curve", "ROC")).upper() == "PR" else "roc"
        if kind not in found and all(
            entry.get(field) is not None
            for field in ("true_positives", "false_positives", "true_negatives", "false_negatives")
        ):
            found[kind] = (str(key), entry)
    return found


def _kinds_of(part: Mapping[str, Any]) -> list[str]:
    """The report charts of one evaluation, or of one head."""
    reports = part.get("reports") or {}
    aucs = _auc_entries(part)
    present = {
        "confusion_matrix": "confusion_matrix" in reports,
        "reliability": "calibration" in reports,
        "roc": "roc" in aucs,
        "pr": "pr" in aucs,
        "per_class_f1": "per_class" in reports and bool(reports["per_class"].get("labels")),
    }
    return [kind for kind in CHART_KINDS if present.get(kind)]


def _has_losses(history: Sequence[Mapping[str, Any]] | None) -> bool:
    if not history:
        return False
    return any(np.isfinite(values).any() for values in loss_series(history).values())


def available_charts(
    evaluation: Mapping[str, Any], history: Sequence[Mapping[str, Any]] | None = None
) -> list[str]:
    """The names of the charts that apply to ``evaluation``, in report order.

    ``loss_history`` when ``history`` (the batches in arrival order) holds loss
    values; then, for the evaluation or for each head of ``outputs`` (names
    ``"<head>.<kind>"``): ``confusion_matrix``, ``reliability`` (from the
    ``calibration`` report), ``roc``/``pr`` (from ``curves``), ``per_class_f1``.
    """
    names = ["loss_history"] if _has_losses(history) else []
    outputs = evaluation.get("outputs")
    if isinstance(outputs, Mapping):
        for head, part in outputs.items():
            names += [f"{head}.{kind}" for kind in _kinds_of(part)]
    else:
        names += _kinds_of(evaluation)
    return names


def _part(evaluation: Mapping[str, Any], head: str | None, name: str) -> Mapping[str, Any]:
    outputs = evaluation.get("outputs")
    if head is None:
        return evaluation
    if isinstance(outputs, Mapping) and head in outputs:
        return outputs[head]  # type: ignore[no-any-return]
    raise ChartNotAvailable(f"No chart {name!r}: the evaluation has no head {head!r}.")


def _require(
    evaluation: Mapping[str, Any], name: str, history: Sequence[Mapping[str, Any]] | None
) -> tuple[Mapping[str, Any], str]:
    names = available_charts(evaluation, history)
    if name not in names:
        raise ChartNotAvailable(
            f"No chart {name!r} for this evaluation; its charts are: "
            + (", ".join(names) if names else "none")
            + "."
        )
    head, kind = split_chart_name(name)
    return _part(evaluation, head, name), kind


def _curve_args(part: Mapping[str, Any], kind: str) -> tuple[list[Any], float | None]:
    key, entry = _auc_entries(part)[kind]
    value = (part.get("metrics") or {}).get(key, entry.get("value"))
    arrays = [
        entry[f] for f in ("true_positives", "false_positives", "true_negatives", "false_negatives")
    ]
    return arrays, (float(value) if isinstance(value, int | float) else None)


def chart_text(
    evaluation: Mapping[str, Any],
    name: str,
    history: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[str, str]:
    """The title and description of chart ``name`` of ``evaluation``, without drawing it.

    Raises:
        ChartNotAvailable: ``name`` is not among :func:`available_charts`.
    """
    part, kind = _require(evaluation, name, history)
    reports = part.get("reports") or {}
    if kind == "loss_history":
        assert history is not None
        return _loss_history_text(loss_series(history), len(history))
    if kind == "confusion_matrix":
        labels, matrix = _matrix(reports["confusion_matrix"])
        return _confusion_text(labels, matrix, "matrices" in reports["confusion_matrix"])
    if kind == "reliability":
        return _reliability_text(reports["calibration"])
    if kind == "per_class_f1":
        return _per_class_f1_text(reports["per_class"])
    arrays, auc = _curve_args(part, kind)
    tp, fp, tn, fn, scale = _counts(*arrays)
    return _curve_texts("roc" if kind == "roc" else "pr", tp, fp, tn, fn, auc, scale)


def build_chart(
    evaluation: Mapping[str, Any],
    name: str,
    history: Sequence[Mapping[str, Any]] | None = None,
) -> Chart:
    """Draw chart ``name`` (one of :func:`available_charts`) of ``evaluation``.

    ``evaluation`` is a ``GET /v1/evaluations/{id}`` or ``POST /v1/evaluate``
    response; ``history`` the batch history, needed for ``loss_history``.

    Raises:
        ChartNotAvailable: ``name`` is not among :func:`available_charts`.
    """
    part, kind = _require(evaluation, name, history)
    reports = part.get("reports") or {}
    chart: Chart
    if kind == "loss_history":
        assert history is not None
        overall = dict(evaluation.get("losses") or {})
        for head, output in (evaluation.get("outputs") or {}).items():
            overall.update({f"{head}: {k}": v for k, v in (output.get("losses") or {}).items()})
        if evaluation.get("total_loss") is not None:
            overall["total_loss"] = evaluation["total_loss"]
        chart = loss_history(history, overall=overall)
    elif kind == "confusion_matrix":
        chart = confusion_matrix(reports["confusion_matrix"])
    elif kind == "reliability":
        chart = reliability(reports["calibration"])
    elif kind == "per_class_f1":
        chart = per_class_f1(reports["per_class"])
    else:
        arrays, auc = _curve_args(part, kind)
        per_class = reports.get("per_class") or reports.get("confusion_matrix") or {}
        labels = [str(label) for label in per_class.get("labels", [])] or None
        draw = roc if kind == "roc" else pr
        chart = draw(*arrays, auc=auc, labels=labels)
    return Chart(name, chart.figure, chart.title, chart.description)
