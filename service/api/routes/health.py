"""``/healthz``: is the service up."""

from __future__ import annotations

from fastapi import APIRouter

from service.api import schemas

router = APIRouter(tags=["service"])


@router.get("/healthz", operation_id="health", response_model=schemas.Health)
def health() -> dict[str, str]:
    """Answers `{"status": "ok"}` while the service runs."""
    return {"status": "ok"}
