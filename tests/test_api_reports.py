"""The report page and charts of an evaluation, served by the service: routes, formats,
the one-batch page, and the page in a real headless Chromium with no other host."""

from __future__ import annotations

import html
import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from test_docs import _render
from test_docs import chromium as chromium  # a fixture, shared

from service.main import create_app
from service.settings import Settings
from tests.conftest import SyncClient
from tests.servers import serve_in_thread

C = 6
NAMES = [f"class {i}" for i in range(C)]
SETTINGS = {
    "metrics": ["accuracy", "auc", {"name": "f1_score", "average": "macro"}],
    "reports": ["per_class", "confusion_matrix", "calibration"],
    "class_names": NAMES,
    "metadata": {"model": "demo"},
}
CHARTS = ["loss_history", "confusion_matrix", "reliability", "roc", "per_class_f1"]


def _batches(n: int = 6) -> list[dict[str, Any]]:
    rng = np.random.default_rng(4)
    out = []
    for _ in range(n):
        y = rng.integers(0, C, 48)
        p = rng.dirichlet(np.full(C, 0.5), 48)
        p[np.arange(48), y] += rng.random(48)
        p /= p.sum(axis=1, keepdims=True)
        out.append({"y_true": y.tolist(), "y_pred": p.tolist()})
    return out


def _fill(client: httpx.Client | SyncClient) -> str:
    eid = str(client.post("/v1/evaluations", json=SETTINGS).json()["id"])
    for i, batch in enumerate(_batches()):
        assert client.put(f"/v1/evaluations/{eid}/batches/b{i}", json=batch).status_code == 201
    return eid


@pytest.fixture
def client(tmp_path: Path) -> Iterator[SyncClient]:
    with SyncClient(create_app(Settings(data_dir=tmp_path / "data"))) as made:
        yield made


def test_the_report_page_lists_and_links_every_chart(client: SyncClient) -> None:
    eid = _fill(client)
    r = client.get(f"/v1/evaluations/{eid}/report")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    loss = client.get(f"/v1/evaluations/{eid}").json()["losses"]["sparse_categorical_crossentropy"]
    assert f"{loss:.4f}"[:5] in r.text
    for name in CHARTS:
        assert f"/v1/evaluations/{eid}/charts/{name}.svg" in r.text
        assert f"/v1/evaluations/{eid}/charts/{name}.png" in r.text
    assert "class 5" in r.text and "demo" in r.text


def test_chart_links_of_heads_with_url_characters_reach_their_charts(client: SyncClient) -> None:
    heads = ["q?x", "h#1", "p%41", "a b"]
    settings = {"outputs": {head: {"reports": ["per_class"]} for head in heads}}
    eid = client.post("/v1/evaluations", json=settings).json()["id"]
    batch = {"y_true": [0, 1, 1], "y_pred": [[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]]}
    r = client.put(
        f"/v1/evaluations/{eid}/batches/b", json={"outputs": dict.fromkeys(heads, batch)}
    )
    assert r.status_code == 201, r.text
    page = client.get(f"/v1/evaluations/{eid}/report").text
    links = re.findall(r'src="(/v1/evaluations/[^"]+\.svg)"', page)
    assert len(links) >= len(heads)
    for link in links:
        chart = client.get(html.unescape(link))
        assert chart.status_code == 200, (link, chart.text)


@pytest.mark.parametrize("name", CHARTS)
def test_each_chart_is_valid_svg_and_png(client: SyncClient, name: str) -> None:
    eid = _fill(client)
    svg = client.get(f"/v1/evaluations/{eid}/charts/{name}.svg")
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    root = ET.fromstring(svg.content)
    assert root.find("{http://www.w3.org/2000/svg}title") is not None
    png = client.get(f"/v1/evaluations/{eid}/charts/{name}.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(png.content)) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_unknown_charts_and_formats(client: SyncClient) -> None:
    eid = _fill(client)
    missing = client.get(f"/v1/evaluations/{eid}/charts/pie.svg")
    assert missing.status_code == 404 and "confusion_matrix" in missing.json()["detail"]
    assert client.get(f"/v1/evaluations/{eid}/charts/roc.gif").status_code == 422
    assert client.get("/v1/evaluations/nope/report").status_code == 404


@pytest.mark.browser
def test_the_report_page_renders_offline_in_chromium(chromium: str, tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path / "data"))
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        eid = _fill(client)
        loss = client.get(f"/v1/evaluations/{eid}").json()["losses"][
            "sparse_categorical_crossentropy"
        ]
        dom, requests, console = _render(chromium, f"{base}/v1/evaluations/{eid}/report", tmp_path)
        outside = [url for _, url in requests if not url.startswith(base + "/")]
        assert not outside, outside
        charts = {url for _, url in requests if "/charts/" in url}
        assert len(charts) >= 4, requests
        for url in charts:
            assert client.get(url.removeprefix(base)).status_code == 200
        problems = [m for m in console if "error" in m.lower() or "refused" in m.lower()]
        assert not problems, problems
        assert f"{loss:.4f}"[:5] in dom


def test_evaluate_with_accept_html_answers_the_page_of_one_batch(client: SyncClient) -> None:
    body = {**_batches(1)[0], **{k: v for k, v in SETTINGS.items() if k != "metadata"}}
    r = client.post("/v1/evaluate", json=body, headers={"accept": "text/html"})
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("text/html")
    assert r.text.count("data:image/svg+xml;base64,") >= 4
    assert client.post("/v1/evaluate", json=body).headers["content-type"] == "application/json"
    # Accept's qualities decide: text/html with q=0 is not acceptable, JSON preferred or
    # named first at equal quality wins; text/html preferred wins.
    for accept, page in [
        ("text/html;q=0, application/json", False),
        ("application/json, text/html", False),
        ("text/html;q=0.5, application/json;q=0.9", False),
        ("application/json;q=0.5, text/html", True),
        ("text/html, application/json", True),
        ("text/html;q=bad", False),
        ("TEXT/HTML", True),  # media types are case-insensitive
    ]:
        answer = client.post("/v1/evaluate", json=body, headers={"accept": accept})
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/html") is page, accept
    # The page takes what the JSON answer takes, and refuses the rest in its words: not an
    # evaluation's fields, not a head that is no object (it was dropped from the page).
    heads = {"outputs": {"a": _batches(1)[0], "b": 5}}
    for refused_body in [{**body, "metadata": {"a": "b"}}, {**body, "bogus": 1}, heads]:
        as_json = client.post("/v1/evaluate", json=refused_body)
        as_page = client.post("/v1/evaluate", json=refused_body, headers={"accept": "text/html"})
        assert as_json.status_code == as_page.status_code == 422, as_page.text[:300]
        assert as_page.json()["detail"] == as_json.json()["detail"]
        assert as_page.json()["errors"] == as_json.json()["errors"]


def test_reports_named_with_as_are_drawn_and_tabled(client: SyncClient) -> None:
    """The page and the charts look reports up by their kind: renamed with `as`, they
    were missing from both (the JSON answer keeps the names)."""
    reports = [
        {"name": "per_class", "as": "pc"},
        {"name": "calibration", "as": "cal"},
        {"name": "confusion_matrix", "as": "cm"},
    ]
    batch = _batches(1)[0]
    page = client.post(
        "/v1/evaluate", json={**batch, "reports": reports}, headers={"accept": "text/html"}
    )
    plain = client.post(
        "/v1/evaluate",
        json={**batch, "reports": [r["name"] for r in reports]},
        headers={"accept": "text/html"},
    )
    assert page.status_code == plain.status_code == 200
    charts_in = page.text.count("data:image/svg+xml;base64,")
    assert charts_in == plain.text.count("data:image/svg+xml;base64,") >= 3
    assert page.text.count("<table") == plain.text.count("<table") >= 2
    created = client.post("/v1/evaluations", json={"reports": reports}).json()["id"]
    assert client.put(f"/v1/evaluations/{created}/batches/a", json=batch).status_code == 201
    assert set(client.get(f"/v1/evaluations/{created}").json()["reports"]) == {"pc", "cal", "cm"}
    for chart in ("confusion_matrix", "reliability", "per_class_f1"):
        drawn = client.get(f"/v1/evaluations/{created}/charts/{chart}.svg")
        assert drawn.status_code == 200, (chart, drawn.text[:200])
