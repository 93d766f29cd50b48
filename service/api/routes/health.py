"""``/healthz``: is the service up."""

from __future__ import annotations

from fastapi import APIRouter

from service.api import schemas

router = APIRouter(tags=["service"])


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", operation_id="health", response_model=schemas.Health)
async def health() -> dict[str, str]:
    """Answers `{"status": "ok"}` while the service runs."""
    # On the event loop: never queued behind computations in the thread pool.
    return {"status": "ok"}
