"""``/v1/losses``: the loss catalogue and one loss on a batch."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from service import registry
from service.api import schemas
from service.api.catalogue import catalogue
from service.api.compute import loss_operation, respond
from service.api.error_responses import ERROR_RESPONSES
from service.api.openapi_body import request_body

router = APIRouter(prefix="/v1/losses", tags=["losses"])

LossName = Annotated[
    str,
    Path(
        description="The loss (Keras 3 name).", json_schema_extra={"enum": sorted(registry.LOSSES)}
    ),
]


@router.get("", operation_id="list_losses", response_model=schemas.LossCatalogue)
def list_losses() -> dict[str, object]:
    """Every loss, with each parameter, its type, default and meaning."""
    return catalogue("losses", registry.LOSSES.values())


@router.post(
    "/{name}",
    operation_id="compute_loss",
    response_model=None,
    responses={200: {"model": schemas.LossResponse}, **ERROR_RESPONSES},
    openapi_extra=request_body(schemas.LossRequest),
)
async def compute_loss(name: LossName, request: Request) -> Response:
    """Compute one loss on a batch, with Keras 3's numbers and diagnoses."""
    # An unknown name is a 404 before the body is read.
    return await respond(request, loss_operation(name))
