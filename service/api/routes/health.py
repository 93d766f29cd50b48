"""``/healthz``: is the service up."""

from __future__ import annotations

from fastapi import APIRouter

from service.api import schemas

router = APIRouter(tags=["service"])


@router.head(
    "/healthz",
    operation_id="health_head",
    summary="Health (headers only)",
    description="The same check for load balancers that send `HEAD`: 200, no body.",
    response_model=None,
    responses={200: {"description": "The service runs."}},
)
@router.get("/healthz", operation_id="health", response_model=schemas.Health)
async def health() -> dict[str, str]:
    """Answers `{"status": "ok"}` while the service runs."""
    # On the event loop: never queued behind computations in the thread pool.
    return {"status": "ok"}
