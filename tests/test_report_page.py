"""The HTML report page: its values, warnings, per-class table and charts; escaping; its
Content-Security-Policy; one section per head; the page of one batch; its render time.

The ``browser`` test serves the page and its charts from a small Starlette app on
loopback and loads it in a headless Chromium that resolves no other host, through a
harness page that frames the report and reads what Chromium made of it (image sizes,
visible text, the table after a click on a column header). A screenshot of the page is
taken on the way; with ``REPORT_SCREENSHOT=<path>`` in the environment it is also
copied there (``REPORT_SCREENSHOT=docs/report.png`` refreshes the one in the docs).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from report_samples import multi_head, single_label
from servers import serve_in_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from test_docs import _render
from test_docs import chromium as chromium  # a fixture, shared

from service import charts
from service.report_page import (
    CONTENT_SECURITY_POLICY,
    ChartRef,
    chart_refs,
    embedded_chart_refs,
    render_report,
)


def _url_for(evaluation: dict[str, Any]) -> Any:
    return lambda name, fmt: f"/v1/evaluations/{evaluation['id']}/charts/{name}.{fmt}"


class _Page(HTMLParser):
    """What a test reads from a page: images, inline scripts and styles, the per-class
    rows (their header cell and data cells), the sections and every attribute name."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.sections: list[str] = []
        self.attributes: set[str] = set()
        self._element: str | None = None
        self._in_table = False
        self._in_body = False
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.attributes.update(name for name, _ in attrs)
        if tag == "img":
            self.images.append(values)
        elif tag in ("script", "style"):
            self._element = tag
            (self.scripts if tag == "script" else self.styles).append("")
        elif tag == "table" and "per-class" in (values.get("class") or ""):
            self.tables.append([])
            self._in_table = True
        elif tag == "tbody" and self._in_table:
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag in ("th", "td") and self._row is not None:
            self._cell = []
        elif tag == "section":
            self.sections.append(values.get("aria-labelledby") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._element = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._in_table = False
        elif tag in ("th", "td") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._element == "script":
            self.scripts[-1] += data
        elif self._element == "style":
            self.styles[-1] += data
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def sample() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return single_label()


@pytest.fixture(scope="module")
def page(sample: tuple[dict[str, Any], list[dict[str, Any]]]) -> str:
    evaluation, history = sample
    return render_report(evaluation, chart_refs(evaluation, _url_for(evaluation), history))


# --- content --------------------------------------------------------------------------------------


def test_page_shows_the_metadata_and_counts(page: str) -> None:
    for text in (
        "<h1>Evaluation report</h1>",
        "<code>0f8b6c1e9d6a4c2b8e7f5a3d1c9b7e6a</code>",
        "<dt>Status</dt><dd>closed</dd>",
        "<dt>Created</dt><dd>2026-11-30T10:00:00Z</dd>",
        "<dt>Updated</dt><dd>2026-11-30T10:41:07Z</dd>",
        "<dt>Batches</dt><dd>40</dd>",
        "<dt>Samples</dt><dd>4,000</dd>",
        "<dt>Label encoding</dt><dd>sparse</dd>",
        "<dt>Classes</dt><dd>37</dd>",
        "<dt>model</dt><dd>resnet-50 v3</dd>",
    ):
        assert text in page, text


def test_page_shows_the_losses_and_metrics(
    page: str, sample: tuple[dict[str, Any], list[dict[str, Any]]]
) -> None:
    evaluation, _ = sample
    loss = evaluation["losses"]["sparse_categorical_crossentropy"]
    assert f'data-value="{loss!r}">{loss:.6g}</td>' in page
    for name, value in evaluation["metrics"].items():
        assert f"<code>{name}</code>" in page
        if isinstance(value, float):
            assert f'data-value="{value!r}">{value:.6g}</td>' in page
    assert '<span class="note">as sparse_categorical_accuracy</span>' in page
    f1 = evaluation["metrics"]["f1_score"]
    assert f"37 values, min {min(f1):.6g}, max {max(f1):.6g}</span>" in page
    assert f'<td class="summary">mean {sum(f1) / 37:.6g}</td>' in page
    ece = evaluation["reports"]["calibration"]["ece"]
    assert f'<th scope="row">ECE</th><td class="num">{ece:.6g}</td>' in page


def test_page_shows_the_warnings_with_their_batch_counts(page: str) -> None:
    assert "<code>probabilities_renormalized</code>" in page
    assert "(raised by 3 batches)" in page
    assert "categorical losses renormalized them." in page


def test_per_class_table_has_a_row_per_class_by_support(
    page: str, sample: tuple[dict[str, Any], list[dict[str, Any]]]
) -> None:
    evaluation, _ = sample
    report = evaluation["reports"]["per_class"]
    [rows] = _Page(page).tables
    assert len(rows) == 37
    assert sorted(row[0] for row in rows) == sorted(report["labels"])
    supports = [int(row[1].replace(",", "")) for row in rows]
    assert supports == sorted(report["support"], reverse=True)
    index = report["labels"].index(rows[0][0])
    assert rows[0][2:5] == [f"{report[k][index]:.6g}" for k in ("precision", "recall", "f1")]
    loss = report["loss"]["sparse_categorical_crossentropy"][index]
    assert rows[0][5] == f"{loss:.6g}"
    support_header = '<th scope="col" class="num" aria-sort="descending">'
    assert f'{support_header}<button type="button">support</button></th>' in page
    assert "macro average" in page and "weighted average" in page


def test_each_chart_is_an_image_with_alt_text_and_is_listed(
    page: str, sample: tuple[dict[str, Any], list[dict[str, Any]]]
) -> None:
    evaluation, history = sample
    names = charts.available_charts(evaluation, history)
    images = _Page(page).images
    assert [image["src"] for image in images] == [
        f"/v1/evaluations/{evaluation['id']}/charts/{name}.svg" for name in names
    ]
    for image, name in zip(images, names, strict=True):
        assert image["alt"] == charts.chart_text(evaluation, name, history)[1]
        assert f'<a href="#chart-{name}"><code>{name}</code></a>' in page
        assert f'<figure id="chart-{name}"' in page
        assert f'/charts/{name}.png">PNG</a>' in page


def test_class_names_and_messages_are_escaped() -> None:
    names = list(single_label()[0]["reports"]["per_class"]["labels"])
    names[0] = "<script>alert(1)</script>"
    evaluation, history = single_label(class_names=tuple(names))
    evaluation = {
        **evaluation,
        "metadata": {"note": '"><img src=x onerror=alert(2)>'},
        "warnings": [{"code": "x<y", "message": "<b>bold</b> & more", "batches": 1}],
    }
    page = render_report(evaluation, chart_refs(evaluation, _url_for(evaluation), history))
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in page
    assert "(raised by 1 batch)" in page
    parsed = _Page(page)
    assert len(parsed.scripts) == 1
    assert "<script>alert(1)</script>" in [row[0] for row in parsed.tables[0]]


def test_content_security_policy_allows_only_this_origin_and_the_inline_elements(
    page: str,
) -> None:
    directives = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["img-src"] == "'self' data:"
    assert directives["object-src"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    parsed = _Page(page)
    for kind, [content] in (("script-src", parsed.scripts), ("style-src", parsed.styles)):
        digest = base64.b64encode(hashlib.sha256(content.encode()).digest()).decode()
        assert directives[kind] == f"'self' 'sha256-{digest}'"
    # Inline style attributes and event handlers would need 'unsafe-inline': there are none.
    assert "style" not in parsed.attributes
    assert not [name for name in parsed.attributes if name.startswith("on")]
    assert not re.search(r"""(?i)(src|href)=["']?(https?:)?//""", page)


def test_a_chart_from_another_host_is_refused(
    sample: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    evaluation, _ = sample
    for src in ("https://cdn.example.com/c.svg", "//cdn.example.com/c.svg", "javascript:x"):
        with pytest.raises(ValueError, match="expected a same-origin path"):
            render_report(evaluation, [ChartRef("roc", src, "alt")])
    render_report(evaluation, [ChartRef("roc", "charts/roc.svg", "alt")])


def test_heads_get_a_section_each_with_their_charts() -> None:
    evaluation, history = multi_head()
    refs = chart_refs(evaluation, _url_for(evaluation), history)
    page = render_report(evaluation, refs)
    parsed = _Page(page)
    assert parsed.sections == [
        "total",
        "warnings",
        "over-batches",
        "head-species-values",
        "head-attributes-values",
    ]
    assert f"{evaluation['total_loss']:.6g}</strong>" in page
    assert len(parsed.tables) == 2
    assert [len(rows) for rows in parsed.tables] == [10, 6]
    species = page.index('id="head-species-values"')
    attributes = page.index('id="head-attributes-values"')
    for ref in refs:
        position = page.index(f'<figure id="chart-{ref.name}"')
        if ref.name.startswith("species."):
            assert species < position < attributes
        elif ref.name.startswith("attributes."):
            assert attributes < position
        else:
            assert position < species
    head = evaluation["outputs"]["attributes"]
    assert f"{head['losses']['binary_crossentropy']:.6g}</td>" in page
    assert "<dt>Label encoding</dt><dd>multi_hot</dd>" in page
    assert "<code>binary_accuracy_inflated</code>" in page
    assert "subset accuracy is 0.42" in page


def test_page_of_one_batch_embeds_its_charts() -> None:
    stored, _ = single_label()
    response = {
        k: v
        for k, v in stored.items()
        if k not in {"id", "status", "created_at", "updated_at", "n_batches", "metadata"}
    }
    response["warnings"] = [{"code": "probabilities_renormalized", "message": "Rows differ."}]
    refs = embedded_chart_refs(response)
    assert [ref.name for ref in refs] == charts.available_charts(response)
    page = render_report(response, refs)
    assert "<h1>Evaluation of one batch</h1>" in page
    assert "<dt>Batches</dt>" not in page and "<dt>Status</dt>" not in page
    assert "<dt>Samples</dt><dd>4,000</dd>" in page
    assert "raised by" not in page
    images = _Page(page).images
    assert len(images) == 4
    for image, ref in zip(images, refs, strict=True):
        src = image["src"] or ""
        prefix = "data:image/svg+xml;base64,"
        assert src.startswith(prefix)
        svg = base64.b64decode(src.removeprefix(prefix))
        assert f"<title>{html.escape(ref.title, quote=False)}</title>".encode() in svg
        assert image["alt"] == ref.alt


def test_full_page_of_1000_classes_renders_every_chart() -> None:
    """At 1000 classes the page has every class's row and all five charts (how long it
    takes is measured by ``make bench``, not asserted here)."""
    evaluation, history = single_label(n_classes=1000, n_samples=8000)
    refs = chart_refs(evaluation, _url_for(evaluation), history)
    page = render_report(evaluation, refs)
    images = [charts.render(charts.build_chart(evaluation, r.name, history), "svg") for r in refs]
    assert len(images) == 5 and [len(rows) for rows in _Page(page).tables] == [1000]


# --- a real browser -------------------------------------------------------------------------------

HARNESS = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>harness</title>
<link rel="icon" href="data:,"></head>
<body><iframe id="report" src="/report" width="1280" height="900"></iframe>
<pre id="result">pending</pre>
<script>
document.getElementById("report").addEventListener("load", function () {
  var doc = this.contentDocument;
  if (doc.location.pathname !== "/report") { return; }
  var images = Array.prototype.map.call(doc.images, function (img) {
    return {src: img.getAttribute("src"), alt: img.alt, naturalWidth: img.naturalWidth};
  });
  var table = doc.querySelector("table.per-class");
  var column = function (index) {
    return Array.prototype.map.call(table.tBodies[0].rows, function (row) {
      return row.cells[index].textContent;
    });
  };
  var before = column(4);
  table.tHead.rows[0].cells[4].querySelector("button").click();
  var result = {
    images: images,
    text: doc.body.innerText,
    f1Before: before,
    f1After: column(4),
    sort: table.tHead.rows[0].cells[4].getAttribute("aria-sort")
  };
  document.getElementById("result").textContent = JSON.stringify(result);
});
</script></body></html>
"""


def _report_app(evaluation: dict[str, Any], history: list[dict[str, Any]]) -> Starlette:
    """The report at /report and its charts at /charts/<name>.<svg|png>, rendered per
    request in Starlette's thread pool, as the service's routes would."""

    def report(request: Request) -> Response:
        refs = chart_refs(evaluation, lambda name, fmt: f"/charts/{name}.{fmt}", history)
        return HTMLResponse(
            render_report(evaluation, refs),
            headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY},
        )

    def chart(request: Request) -> Response:
        name, fmt = request.path_params["name"], request.path_params["fmt"]
        if fmt not in ("svg", "png") or name not in charts.available_charts(evaluation, history):
            return Response(status_code=404)
        data = charts.render(charts.build_chart(evaluation, name, history), fmt)
        return Response(data, media_type="image/svg+xml" if fmt == "svg" else "image/png")

    def harness(request: Request) -> Response:
        return HTMLResponse(HARNESS)

    return Starlette(
        routes=[
            Route("/report", report),
            Route("/charts/{name}.{fmt}", chart),
            Route("/harness", harness),
        ]
    )


@pytest.fixture(scope="module")
def report_server(sample: tuple[dict[str, Any], list[dict[str, Any]]]) -> Iterator[str]:
    evaluation, history = sample
    with serve_in_thread(_report_app(evaluation, history)) as url:
        yield url


def _screenshot(browser: str, url: str, workdir: Path, size: tuple[int, int]) -> Path:
    path = workdir / "report.png"
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={workdir / 'profile-shot'}",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={size[0]},{size[1]}",
        "--virtual-time-budget=10000",
        f"--screenshot={path}",
        url,
    ]
    run = subprocess.run(command, capture_output=True, timeout=90, check=False)
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-3000:]
    return path


@pytest.mark.browser
def test_report_renders_offline_in_a_browser(
    chromium: str,
    report_server: str,
    sample: tuple[dict[str, Any], list[dict[str, Any]]],
    tmp_path: Path,
) -> None:
    evaluation, history = sample
    dom, requests, console = _render(chromium, f"{report_server}/harness", tmp_path)
    match = re.search(r'<pre id="result">(.*?)</pre>', dom, re.S)
    assert match, dom[-2000:]
    assert match.group(1) != "pending", "the report frame never loaded"
    result = json.loads(html.unescape(match.group(1)))

    # Every request went to the test server; the report loaded each of its charts.
    assert requests
    outside = [url for _, url in requests if not url.startswith(report_server + "/")]
    assert not outside, outside
    requested = {url.removeprefix(report_server) for _, url in requests}
    names = charts.available_charts(evaluation, history)
    assert {f"/charts/{name}.svg" for name in names} <= requested

    # No error, nothing refused by the Content-Security-Policy.
    problems = [m for m in console if re.search(r"(?i)error|refused|failed|violat", m)]
    assert not problems, "\n".join(problems)

    loaded = [image for image in result["images"] if image["naturalWidth"] > 0]
    assert len(loaded) >= 4 and len(loaded) == len(names), result["images"]
    assert all(image["alt"] for image in result["images"])
    loss = evaluation["losses"]["sparse_categorical_crossentropy"]
    assert f"{loss:.6g}" in result["text"]
    assert "probabilities_renormalized" in result["text"]

    # The inline script ran (its hash is in the policy): a click sorted the table by F1.
    assert result["sort"] == "descending"
    after = [float(v) for v in result["f1After"]]
    assert after == sorted(after, reverse=True)
    assert after != [float(v) for v in result["f1Before"]]

    shot = _screenshot(chromium, f"{report_server}/report", tmp_path, (1280, 3000))
    with Image.open(shot) as image:
        assert image.size == (1280, 3000)
        assert len(image.getcolors(1 << 20) or []) > 1000, "the screenshot looks blank"
    target = os.environ.get("REPORT_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
