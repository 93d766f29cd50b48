"""``/v1/metrics``: the metric catalogue and one metric on a batch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from service import registry
from service.api import schemas
from service.api.catalogue import catalogue
from service.api.compute import metric_operation, respond
from service.api.error_responses import ERROR_RESPONSES
from service.api.openapi_body import request_body

router = APIRouter(prefix="/v1/metrics", tags=["metrics"])

MetricName = Annotated[
    str,
    Path(
        description="The metric; `accuracy` is resolved from the labels.",
        json_schema_extra={"enum": sorted(registry.METRICS)},
    ),
]


@router.get("", operation_id="list_metrics", response_model=schemas.MetricCatalogue)
def list_metrics() -> dict[str, object]:
    """Every metric, with each parameter, its type, default and meaning."""
    return catalogue("metrics", registry.METRICS.values())


@router.post(
    "/{name}",
    operation_id="compute_metric",
    response_model=None,
    responses={200: {"model": schemas.MetricResponse}, **ERROR_RESPONSES},
    openapi_extra=request_body(schemas.MetricRequest),
)
async def compute_metric(name: MetricName, request: Request) -> Response:
    """Compute one metric on a batch; the response says what `accuracy` resolved to."""
    # An unknown name is a 404 before the body is read.
    return await respond(request, metric_operation(name))
