"""The HTML report of an evaluation: one self-contained page.

:func:`render_report` turns a ``GET /v1/evaluations/{id}`` response (or a ``POST
/v1/evaluate`` response, for the page of one batch) and a list of :class:`ChartRef`
into a page showing the evaluation's metadata and counts, its losses and metrics, its
warnings, the charts and the per-class table; with ``outputs``, one section per head.

The page loads nothing from another host. Its style sheet and its one script are
inline, and allowed by their hashes in :data:`CONTENT_SECURITY_POLICY`, which the
route must send with the page: it allows nothing else but same-origin resources and
``data:`` images. Charts are ``<img>`` elements whose ``src`` is either a same-origin
URL (:func:`chart_refs`, for a stored evaluation whose charts have their own routes)
or a ``data:`` URI of the SVG (:func:`embedded_chart_refs`, for the page of one batch,
which has no chart routes); any other ``src`` is refused.

The per-class table is sorted by support, largest first, on the server; the script
re-sorts it when a column header is clicked (``aria-sort`` tells which column and
which way). Without scripts the table keeps the server's order.
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jinja2
from markupsafe import Markup

from service import charts as charts_module
from service.charts import ChartFormat

_CSS = """
:root { color-scheme: light; --ink: #1d1d1f; --muted: #5f6368; --rule: #d9d9de;
  --band: #f4f5f7; --accent: #3b528b; --warn: #7a4b00; --warn-bg: #fff4e0; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto,
  "Liberation Sans", "DejaVu Sans", sans-serif; color: var(--ink); background: #fff; }
main { max-width: 1240px; margin: 0 auto; padding: 1.5rem 1.5rem 3rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.25rem; margin: 2.2rem 0 .8rem; padding-bottom: .3rem;
  border-bottom: 2px solid var(--rule); }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .6rem; }
code { font: .9em/1.3 ui-monospace, "DejaVu Sans Mono", "Liberation Mono", monospace; }
.id { color: var(--muted); overflow-wrap: anywhere; }
dl.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr));
  gap: .6rem 1.2rem; margin: 1rem 0 0; }
dl.facts div { background: var(--band); border-radius: 6px; padding: .45rem .7rem; }
dt { font-size: .78rem; color: var(--muted); text-transform: uppercase; letter-spacing: .03em; }
dd { margin: 0; font-weight: 600; overflow-wrap: break-word; }
nav ul { margin: .3rem 0 0; padding-left: 1.2rem; columns: 2 280px; }
nav li { break-inside: avoid; }
.values { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr));
  gap: 0 2rem; align-items: start; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid var(--rule); text-align: left;
  vertical-align: top; }
td.num, th.num { text-align: right; white-space: nowrap; }
td.summary { text-align: right; white-space: nowrap; }
th .note { display: block; font-weight: 400; }
thead th { background: var(--band); font-size: .85rem; position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #fafafb; }
tfoot th, tfoot td { font-weight: 600; border-top: 2px solid var(--rule); }
.note { color: var(--muted); font-size: .88rem; }
ul.warnings { list-style: none; padding: 0; margin: 0; }
ul.warnings li { background: var(--warn-bg); border-left: 4px solid #c98a00;
  padding: .5rem .8rem; margin-bottom: .5rem; border-radius: 0 6px 6px 0; }
ul.warnings code { color: var(--warn); font-weight: 600; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr));
  gap: 1.2rem; }
figure.wide { grid-column: 1 / -1; }
figure { margin: 0; border: 1px solid var(--rule); border-radius: 8px; padding: .6rem;
  background: #fff; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: .88rem; color: var(--muted); margin-top: .4rem; }
.scroll { max-height: 70vh; overflow: auto; border: 1px solid var(--rule); border-radius: 6px; }
th button { font: inherit; font-weight: 600; background: none; border: 0; padding: 0;
  color: var(--accent); cursor: pointer; text-align: inherit; }
th button::after { content: " \\2195"; color: var(--muted); font-weight: 400; }
th[aria-sort="descending"] button::after { content: " \\2193"; color: var(--ink); }
th[aria-sort="ascending"] button::after { content: " \\2191"; color: var(--ink); }
@media (max-width: 640px) { .charts { grid-template-columns: 1fr; } main { padding: 1rem; } }
"""

_SCRIPT = """
(function () {
  "use strict";
  function key(cell) {
    var raw = cell.getAttribute("data-value");
    if (raw === null) { raw = cell.textContent.trim(); }
    var number = Number(raw);
    return raw !== "" && !isNaN(number) ? number : raw.toLowerCase();
  }
  function compare(a, b) {
    if (typeof a === "number" && typeof b === "number") { return a - b; }
    return String(a).localeCompare(String(b));
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (header, column) {
      var button = header.querySelector("button");
      if (!button) { return; }
      button.addEventListener("click", function () {
        var descending = header.getAttribute("aria-sort") !== "descending";
        Array.prototype.forEach.call(headers, function (other) {
          other.removeAttribute("aria-sort");
        });
        header.setAttribute("aria-sort", descending ? "descending" : "ascending");
        var body = table.tBodies[0];
        var rows = Array.prototype.map.call(body.rows, function (row, index) {
          return [key(row.cells[column]), index, row];
        });
        rows.sort(function (x, y) {
          return (descending ? -1 : 1) * compare(x[0], y[0]) || x[1] - y[1];
        });
        rows.forEach(function (entry) { body.appendChild(entry[2]); });
      });
    });
  });
})();
"""


def _hash(text: str) -> str:
    """A CSP source allowing one inline element whose content is ``text``."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


#: The Content-Security-Policy to send with every report page: same-origin resources,
#: ``data:`` images (charts embedded in the page of one batch), and the page's own
#: inline style sheet and script, by hash.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        f"script-src 'self' {_hash(_SCRIPT)}",
        f"style-src 'self' {_hash(_CSS)}",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'self'",
    ]
)


@dataclass(frozen=True)
class ChartRef:
    """A chart as the report page shows it."""

    #: The chart's name, as :func:`service.charts.available_charts` gives it.
    name: str
    #: The ``<img src>``: a same-origin URL (no scheme, no host) or a ``data:image/`` URI.
    src: str
    #: The text alternative (``<img alt>``).
    alt: str
    #: The caption; the chart's name when empty.
    title: str = ""
    #: Links to the chart alone, by format (``{"svg": url, "png": url}``), listed on the page.
    links: Mapping[str, str] = field(default_factory=dict)


def chart_refs(
    evaluation: Mapping[str, Any],
    url_for: Callable[[str, ChartFormat], str],
    history: Sequence[Mapping[str, Any]] | None = None,
) -> list[ChartRef]:
    """A :class:`ChartRef` for each chart of ``evaluation``, its images served by URL.

    ``url_for(name, fmt)`` is the same-origin URL of chart ``name`` in ``fmt`` (for
    example ``/v1/evaluations/{id}/charts/{name}.{fmt}``); the page shows the SVG and
    links to both. Titles and text alternatives come from the data; nothing is drawn.
    """
    refs = []
    for name in charts_module.available_charts(evaluation, history):
        title, alt = charts_module.chart_text(evaluation, name, history)
        links = {"svg": url_for(name, "svg"), "png": url_for(name, "png")}
        refs.append(ChartRef(name, links["svg"], alt, title, links))
    return refs


def embedded_chart_refs(
    evaluation: Mapping[str, Any], history: Sequence[Mapping[str, Any]] | None = None
) -> list[ChartRef]:
    """A :class:`ChartRef` for each chart of ``evaluation``, drawn now and embedded as a
    ``data:`` URI of its SVG: for a page with no chart routes behind it (one batch)."""
    refs = []
    for name in charts_module.available_charts(evaluation, history):
        chart = charts_module.build_chart(evaluation, name, history)
        svg = base64.b64encode(charts_module.render(chart, "svg")).decode("ascii")
        refs.append(
            ChartRef(name, f"data:image/svg+xml;base64,{svg}", chart.description, chart.title)
        )
    return refs


# --- what the template shows ------------------------------------------------------------------


def _fmt(value: Any) -> str:
    """A value as the page shows it: 6 significant digits, integers grouped by thousands."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:.6g}"
    return str(value)


def _data_value(value: Any) -> str:
    """A number's exact text for sorting and for readers of the page's source."""
    return repr(float(value)) if isinstance(value, int | float) else str(value)


@dataclass(frozen=True)
class _Value:
    name: str
    text: str
    exact: str
    note: str = ""


def _value(name: str, value: Any, note: str = "") -> _Value:
    if isinstance(value, list) and all(isinstance(v, int | float) for v in value) and value:
        # A value per class (f1_score with average null): its mean, and its spread beside.
        numbers = [float(v) for v in value]
        spread = f"{len(numbers)} values, min {_fmt(min(numbers))}, max {_fmt(max(numbers))}"
        text = f"mean {_fmt(sum(numbers) / len(numbers))}"
        return _Value(name, text, "", f"{note}; {spread}" if note else spread)
    return _Value(name, _fmt(value), _data_value(value), note)


@dataclass(frozen=True)
class _Column:
    title: str
    numeric: bool = True


@dataclass(frozen=True)
class _Cell:
    text: str
    exact: str


@dataclass
class _Table:
    columns: list[_Column]
    rows: list[tuple[str, list[_Cell]]]
    footer: list[tuple[str, list[str]]]
    n_classes: int


def _per_class_table(report: Mapping[str, Any]) -> _Table:
    labels = [str(label) for label in report["labels"]]
    columns = [_Column("support"), _Column("precision"), _Column("recall"), _Column("F1")]
    series: list[Sequence[Any]] = [
        report["support"],
        report["precision"],
        report["recall"],
        report["f1"],
    ]
    for key, values in (report.get("loss") or {}).items():
        columns.append(_Column(f"loss: {key}"))
        series.append(values)
    support = [float(s) for s in report["support"]]
    # Largest support first; classes of equal support in class order.
    order = sorted(range(len(labels)), key=lambda i: (-support[i], i))
    rows = [
        (labels[i], [_Cell(_fmt(values[i]), _data_value(values[i])) for values in series])
        for i in order
    ]
    footer = []
    for kind, scores in (report.get("averages") or {}).items():
        cells = [""] + [_fmt(scores.get(k)) for k in ("precision", "recall", "f1")]
        footer.append((f"{kind} average", cells + [""] * (len(columns) - 4)))
    return _Table(columns, rows, footer, len(labels))


@dataclass
class _Part:
    """One evaluation's values, or one head's."""

    head: str | None
    facts: list[tuple[str, str]]
    losses: list[_Value]
    metrics: list[_Value]
    warnings: list[Mapping[str, Any]]
    calibration: list[tuple[str, str]]
    charts: list[ChartRef]
    table: _Table | None


def _part(
    part: Mapping[str, Any], head: str | None, charts: Sequence[ChartRef], with_counts: bool
) -> _Part:
    facts = []
    if with_counts and part.get("n_samples") is not None:
        facts.append(("Samples", _fmt(part["n_samples"])))
    if part.get("label_encoding") is not None:
        facts.append(("Label encoding", str(part["label_encoding"])))
    if part.get("n_classes") is not None:
        facts.append(("Classes", _fmt(part["n_classes"])))
    resolved = part.get("resolved") or {}
    reports = part.get("reports") or {}
    calibration = reports.get("calibration") or {}
    return _Part(
        head=head,
        facts=facts,
        losses=[_value(str(k), v) for k, v in (part.get("losses") or {}).items()],
        metrics=[
            _value(str(k), v, f"as {resolved[k]}" if k in resolved else "")
            for k, v in (part.get("metrics") or {}).items()
        ],
        warnings=list(part.get("warnings") or []),
        calibration=[
            (name, _fmt(calibration[key]))
            for name, key in (("ECE", "ece"), ("MCE", "mce"), ("Brier score", "brier"))
            if calibration.get(key) is not None
        ],
        charts=list(charts),
        table=_per_class_table(reports["per_class"]) if "per_class" in reports else None,
    )


def _check_src(ref: ChartRef) -> None:
    """Refuse a chart image from another host: the page must load nothing from elsewhere."""
    if ref.src.startswith("data:image/"):
        return
    parts = urlsplit(ref.src)
    if parts.scheme or parts.netloc or ref.src.startswith("//"):
        raise ValueError(
            f"Chart {ref.name!r} has src {ref.src!r}: expected a same-origin path such as "
            "'/v1/evaluations/<id>/charts/<name>.svg', or a data:image/ URI."
        )


#: Charts that take the page's whole width: their labels need it.
_WIDE = frozenset({"loss_history", "confusion_matrix", "per_class_f1"})

_ENVIRONMENT = jinja2.Environment(
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True
)
_ENVIRONMENT.filters["fmt"] = _fmt

_TEMPLATE = _ENVIRONMENT.from_string(
    """\
{% macro value_table(values, what) %}
{% if values %}
<table class="values-table">
<tbody>
{% for value in values %}
<tr><th scope="row"><code>{{ value.name }}</code>{% if value.note %} \
<span class="note">{{ value.note }}</span>{% endif %}</th>\
{% if value.exact %}<td class="num" data-value="{{ value.exact }}">{% else %}\
<td class="summary">{% endif %}{{ value.text }}</td></tr>
{% endfor %}
</tbody>
</table>
{% else %}
<p class="note">No {{ what }} computed.</p>
{% endif %}
{% endmacro %}
{% macro warning_list(warnings) %}
<ul class="warnings">
{% for warning in warnings %}
<li><code>{{ warning.code }}</code>{% if warning.batches is defined and warning.batches %} \
<span class="note">(raised by {{ warning.batches | fmt }} \
batch{{ "" if warning.batches == 1 else "es" }})</span>{% endif %}<br>\
{{ warning.message }}</li>
{% endfor %}
</ul>
{% endmacro %}
{% macro figure(ref) %}
<figure id="chart-{{ ref.name }}"{% if ref.name in wide %} class="wide"{% endif %}>
<img src="{{ ref.src }}" alt="{{ ref.alt }}">
<figcaption><code>{{ ref.name }}</code>{% if ref.title %} — {{ ref.title }}{% endif %}\
</figcaption>
</figure>
{% endmacro %}
<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{{ page_title }}</title>
<link rel="icon" href="data:,">
<style>{{ css }}</style>
</head>
<body>
<main>
<header>
<h1>{{ page_title }}</h1>
{% if evaluation_id %}<p class="id">Evaluation <code>{{ evaluation_id }}</code></p>{% endif %}
<dl class="facts">
{% for name, text in facts %}
<div><dt>{{ name }}</dt><dd>{{ text }}</dd></div>
{% endfor %}
</dl>
</header>
{% if charts %}
<nav aria-labelledby="chart-list">
<h2 id="chart-list">Charts</h2>
<ul>
{% for ref in charts %}
<li><a href="#chart-{{ ref.name }}"><code>{{ ref.name }}</code></a>{% if ref.title %} — \
{{ ref.title }}{% endif %}{% for fmt, url in ref.links.items() %} · <a href="{{ url }}">\
{{ fmt | upper }}</a>{% endfor %}</li>
{% endfor %}
</ul>
</nav>
{% endif %}
{% if total_loss is not none %}
<section aria-labelledby="total">
<h2 id="total">Total loss</h2>
<p><strong data-value="{{ total_loss.exact }}">{{ total_loss.text }}</strong> \
<span class="note">the sum over heads of each head's weight times the sum of its losses</span></p>
</section>
{% endif %}
{% if warnings %}
<section aria-labelledby="warnings">
<h2 id="warnings">Warnings</h2>
{{ warning_list(warnings) }}
</section>
{% endif %}
{% if top_charts %}
<section aria-labelledby="over-batches">
<h2 id="over-batches">Over the batches</h2>
<div class="charts">
{% for ref in top_charts %}{{ figure(ref) }}{% endfor %}
</div>
</section>
{% endif %}
{% for part in parts %}
{% set prefix = "head-" ~ part.head ~ "-" if part.head is not none else "" %}
<section aria-labelledby="{{ prefix }}values">
{% if part.head is not none %}
<h2 id="{{ prefix }}values">Head <code>{{ part.head }}</code></h2>
{% if part.facts %}<dl class="facts">
{% for name, text in part.facts %}<div><dt>{{ name }}</dt><dd>{{ text }}</dd></div>{% endfor %}
</dl>{% endif %}
{% else %}
<h2 id="{{ prefix }}values">Losses and metrics</h2>
{% endif %}
<div class="values">
<div>
<h3>Losses</h3>
{{ value_table(part.losses, "loss") }}
</div>
<div>
<h3>Metrics</h3>
{{ value_table(part.metrics, "metric") }}
</div>
{% if part.calibration %}
<div>
<h3>Calibration</h3>
<table>
<tbody>
{% for name, text in part.calibration %}
<tr><th scope="row">{{ name }}</th><td class="num">{{ text }}</td></tr>
{% endfor %}
</tbody>
</table>
</div>
{% endif %}
</div>
{% if part.warnings and part.head is not none %}
<h3>Warnings</h3>
{{ warning_list(part.warnings) }}
{% endif %}
{% if part.charts %}
<h3>Charts</h3>
<div class="charts">
{% for ref in part.charts %}{{ figure(ref) }}{% endfor %}
</div>
{% endif %}
{% if part.table %}
<h3 id="{{ prefix }}per-class">Per class</h3>
<p class="note">{{ part.table.n_classes | fmt }} classes, largest support first; \
click a column header to sort by it.</p>
<div class="scroll">
<table class="sortable per-class">
<thead>
<tr><th scope="col"><button type="button">class</button></th>
{% for column in part.table.columns %}
<th scope="col" class="num"{% if loop.first %} aria-sort="descending"{% endif %}>\
<button type="button">{{ column.title }}</button></th>
{% endfor %}
</tr>
</thead>
<tbody>
{% for label, cells in part.table.rows %}
<tr><th scope="row">{{ label }}</th>\
{% for cell in cells %}<td class="num" data-value="{{ cell.exact }}">{{ cell.text }}</td>\
{% endfor %}</tr>
{% endfor %}
</tbody>
{% if part.table.footer %}
<tfoot>
{% for name, texts in part.table.footer %}
<tr><th scope="row">{{ name }}</th>{% for text in texts %}<td class="num">{{ text }}</td>\
{% endfor %}</tr>
{% endfor %}
</tfoot>
{% endif %}
</table>
</div>
{% endif %}
</section>
{% endfor %}
</main>
<script>{{ script }}</script>
</body>
</html>
"""
)


def render_report(evaluation: Mapping[str, Any], charts: Sequence[ChartRef]) -> str:
    """The HTML page of ``evaluation``, showing ``charts``.

    Args:
        evaluation: a ``GET /v1/evaluations/{id}`` response (``id``, ``status``,
            ``created_at``, ``updated_at``, ``n_batches``, ``n_samples``, ``metadata``
            and the evaluate response over all batches), or a ``POST /v1/evaluate``
            response for the page of one batch: the fields of a stored evaluation are
            then absent, and so is the history. With ``outputs``, one section per head.
        charts: the charts to show, in order; a chart whose name is
            ``"<head>.<kind>"`` is shown in its head's section, the others (the loss per
            batch) before the heads.

    Raises:
        ValueError: a chart's ``src`` is on another host.
    """
    for ref in charts:
        _check_src(ref)
    stored = evaluation.get("id") is not None
    facts: list[tuple[str, str]] = []
    for name, key in (
        ("Status", "status"),
        ("Created", "created_at"),
        ("Updated", "updated_at"),
        ("Batches", "n_batches"),
        ("Samples", "n_samples"),
    ):
        if evaluation.get(key) is not None:
            facts.append((name, _fmt(evaluation[key])))
    outputs = evaluation.get("outputs")
    heads: Mapping[str, Mapping[str, Any]] = outputs if isinstance(outputs, Mapping) else {}
    by_head: dict[str | None, list[ChartRef]] = {}
    for ref in charts:
        head, _ = charts_module.split_chart_name(ref.name)
        by_head.setdefault(head if head in heads else None, []).append(ref)
    top_charts = by_head.pop(None, [])
    if heads:
        parts = [_part(part, head, by_head.get(head, []), True) for head, part in heads.items()]
        warnings = list(evaluation.get("warnings") or [])
    else:
        single = _part(evaluation, None, top_charts, False)
        facts += single.facts
        parts, top_charts, warnings = [single], [], single.warnings
    facts += [(str(k), str(v)) for k, v in (evaluation.get("metadata") or {}).items()]
    total = evaluation.get("total_loss")
    return _TEMPLATE.render(
        page_title="Evaluation report" if stored else "Evaluation of one batch",
        evaluation_id=evaluation.get("id"),
        facts=facts,
        charts=list(charts),
        top_charts=top_charts,
        total_loss=_value("total_loss", total) if total is not None else None,
        warnings=warnings,
        parts=parts,
        wide={ref.name for ref in charts if charts_module.split_chart_name(ref.name)[1] in _WIDE},
        css=Markup(_CSS),
        script=Markup(_SCRIPT),
    )
