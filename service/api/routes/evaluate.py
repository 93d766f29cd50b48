"""``/v1/evaluate``: many losses and metrics on one batch, or on several heads."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api import schemas
from service.api.compute import evaluate_operation, respond
from service.api.error_responses import ERROR_RESPONSES
from service.api.openapi_body import request_body
from service.api.routes.reports import batch_page, wants_html

router = APIRouter(prefix="/v1", tags=["evaluate"])


@router.post(
    "/evaluate",
    operation_id="evaluate",
    response_model=None,
    responses={
        200: {
            "model": schemas.EvaluateResponse | schemas.HeadsResponse,
            "content": {"text/html": {}},
            "description": "The results; with `Accept: text/html`, the batch's report page.",
        },
        **ERROR_RESPONSES,
    },
    openapi_extra=request_body(schemas.EvaluateRequest, schemas.HeadsRequest),
)
async def evaluate(request: Request) -> Response:
    """Compute several losses and metrics on one batch (or one per head), with diagnoses."""
    if wants_html(request):
        return await batch_page(request)
    return await respond(request, evaluate_operation())
