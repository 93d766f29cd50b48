"""Pictures: the report page of an evaluation, its charts alone, and the page of one batch.

``GET /v1/evaluations/{id}/report`` is one HTML page that loads nothing from another host
(its Content-Security-Policy allows the service's own origin only): the evaluation's
counts, values and warnings, the per-class table and the charts, each drawn by
:mod:`service.charts` (Matplotlib) in the thread pool. ``GET
/v1/evaluations/{id}/charts/{chart}.svg`` (or ``.png``) is one chart alone. ``POST
/v1/evaluate`` with ``Accept: text/html`` answers the page of its one batch
(:func:`batch_page`).

With API keys configured a browser does not send the key with an ``<img>`` request, so
the page then carries its charts inside it (SVG ``data:`` URIs) instead of by URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import quote

import anyio.to_thread
from fastapi import APIRouter, Path, Request, Response

from service import charts, report_page
from service.api.body import read_body
from service.api.compute import admit, decode
from service.api.error_responses import ERROR_RESPONSES
from service.api.routes.evaluations import EvaluationId, _not_found, _owner, _summary, _swept
from service.errors import NotFound, invalid
from service.evaluation import check_evaluate_settings
from service.settings import Settings
from service.storage import Store
from service.streaming import (
    curves,
    evaluate_batch,
    for_pictures,
    parse_settings,
    results,
)

router = APIRouter(prefix="/v1/evaluations", tags=["evaluations"])

#: Batches drawn in the loss-per-batch chart (the latest, in arrival order).
MAX_HISTORY = 10_000
_HISTORY_PAGE = 1000
_HTML = "text/html; charset=utf-8"
_MEDIA = {"svg": "image/svg+xml", "png": "image/png"}

ChartName = Annotated[
    str,
    Path(
        description="A chart the report page lists (`loss_history`, `confusion_matrix`, "
        "`reliability`, `roc`, `pr`, `per_class_f1`; `<head>.<chart>` with heads).",
        max_length=200,
    ),
]


def _evaluation_and_history(
    store: Store, owner: str | None, evaluation_id: str
) -> tuple[dict[str, Any], list[Mapping[str, Any]]]:
    """The evaluation as ``GET`` answers it (with its AUC curves), and its batches'
    own answers in arrival order (the last :data:`MAX_HISTORY`)."""
    totals = store.get_totals(owner, evaluation_id)
    if totals is None:
        raise _not_found(evaluation_id)
    row = totals.evaluation
    evaluation = {
        **_summary(row),
        **results(row.config, row.facts, totals.values, row.warnings, row.n_samples),
    }
    evaluation = for_pictures(evaluation, curves(row.config, row.facts, totals.values), row.facts)
    history: list[Mapping[str, Any]] = []
    cursor = None
    while True:
        page = store.list_batches(owner, evaluation_id, limit=_HISTORY_PAGE, cursor=cursor)
        if page is None:
            break
        history.extend(b.answer | {"batch_id": b.batch_id} for b in page.items)
        history = history[-MAX_HISTORY:]
        if page.next is None:
            break
        cursor = page.next
    return evaluation, history


def _page(
    evaluation: Mapping[str, Any],
    history: list[Mapping[str, Any]],
    embedded: bool,
    evaluation_id: str | None = None,
) -> str:
    if embedded or evaluation_id is None:
        refs = report_page.embedded_chart_refs(evaluation, history)
    else:
        refs = report_page.chart_refs(
            evaluation,
            # A chart's name holds its head's: `?`, `#` or `%` there would cut the link.
            lambda name, fmt: (
                f"/v1/evaluations/{evaluation_id}/charts/{quote(name, safe='')}.{fmt}"
            ),
            history,
        )
    return report_page.render_report(evaluation, refs)


def _html(page: str) -> Response:
    return Response(
        page,
        media_type=_HTML,
        headers={
            "Content-Security-Policy": report_page.CONTENT_SECURITY_POLICY,
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get(
    "/{evaluation_id}/report",
    operation_id="evaluation_report",
    response_class=Response,
    responses={
        200: {"content": {"text/html": {}}, "description": "The report page."},
        **ERROR_RESPONSES,
    },
)
async def evaluation_report(request: Request, evaluation_id: EvaluationId) -> Response:
    """The evaluation's report page: values, warnings, per-class table and charts."""
    store = await _swept(request, evaluation_id)
    owner = _owner(request)
    settings: Settings = request.app.state.settings
    embedded = bool(settings.api_keys)

    def build() -> str:
        evaluation, history = _evaluation_and_history(store, owner, evaluation_id)
        return _page(evaluation, history, embedded, evaluation_id)

    return _html(await anyio.to_thread.run_sync(build))


#: The chart's format (checked in the route, whose 422 says what was received).
ChartFormat = Annotated[
    str, Path(description="`svg` or `png`.", json_schema_extra={"enum": ["svg", "png"]})
]


@router.get(
    "/{evaluation_id}/charts/{chart}.{fmt}",
    operation_id="evaluation_chart",
    response_class=Response,
    responses={
        200: {
            "content": {"image/svg+xml": {}, "image/png": {}},
            "description": "The chart, with a title, axis labels and a text alternative.",
        },
        **ERROR_RESPONSES,
    },
)
async def evaluation_chart(
    request: Request, evaluation_id: EvaluationId, chart: ChartName, fmt: ChartFormat
) -> Response:
    """One chart of the evaluation, as SVG or PNG."""
    if fmt not in _MEDIA:
        raise invalid(("path", "fmt"), f"Charts are `.svg` or `.png`; received {fmt[:20]!r}.")
    kind: Literal["svg", "png"] = "svg" if fmt == "svg" else "png"
    store = await _swept(request, evaluation_id)
    owner = _owner(request)

    def draw() -> bytes:
        evaluation, history = _evaluation_and_history(store, owner, evaluation_id)
        try:
            return charts.render(charts.build_chart(evaluation, chart, history), kind)
        except charts.ChartNotAvailable as missing:
            raise NotFound.at(("path", "chart"), str(missing)) from None

    return Response(await anyio.to_thread.run_sync(draw), media_type=_MEDIA[kind])


def wants_html(request: Request) -> bool:
    """Whether the request asks for the page: ``Accept`` names ``text/html`` with a
    quality above 0 and above JSON's (at equal quality, the one named first)."""
    html = json = None
    for position, item in enumerate(request.headers.get("accept", "").split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        rank = (quality, -position)
        if media.lower() == "text/html" and (html is None or rank > html):
            html = rank
        elif media.lower() == "application/json" and (json is None or rank > json):
            json = rank
    return html is not None and html[0] > 0 and (json is None or html > json)


async def batch_page(request: Request) -> Response:
    """``POST /v1/evaluate`` with ``Accept: text/html``: the report page of one batch,
    computed as a streaming evaluation of that batch alone would be (charts inside)."""
    settings: Settings = request.app.state.settings
    raw = await read_body(request)
    try:

        def build() -> str:
            document = decode(raw, settings)
            admit(raw, document, settings)
            if not isinstance(document, dict):
                raise invalid(("body",), "The request body must be a JSON object.")
            # Refused as the JSON answer refuses it (fields, heads, names), in its words.
            check_evaluate_settings(document)
            arrays, options = _split(document)
            config, _ = parse_settings(options)
            outcome = evaluate_batch(config, arrays, None, settings.max_elements)
            evaluation = results(config, outcome.facts, outcome.stats, {}, outcome.n_samples)
            evaluation["n_samples"] = outcome.n_samples
            evaluation["warnings"] = outcome.answer["warnings"]
            evaluation = for_pictures(
                evaluation, curves(config, outcome.facts, outcome.stats), outcome.facts
            )
            return _page(evaluation, [], embedded=True)

        return _html(await anyio.to_thread.run_sync(build))
    finally:
        raw.release()


def _split(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An evaluate body as a batch's arrays and an evaluation's settings."""
    arrays_fields = ("y_true", "y_pred", "sample_weight")
    if isinstance(body.get("outputs"), dict):
        arrays = {
            "outputs": {
                head: {k: v for k, v in part.items() if k in arrays_fields}
                for head, part in body["outputs"].items()
                if isinstance(part, dict)
            }
        }
        settings = {
            **{k: v for k, v in body.items() if k != "outputs"},
            "outputs": {
                head: {k: v for k, v in part.items() if k not in arrays_fields}
                for head, part in body["outputs"].items()
                if isinstance(part, dict)
            },
        }
        return arrays, settings
    return (
        {k: v for k, v in body.items() if k in arrays_fields},
        {k: v for k, v in body.items() if k not in arrays_fields},
    )
