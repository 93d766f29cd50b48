"""The service's settings: one class, read from ``LOSS_SERVICE_*`` environment variables."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LOSS_SERVICE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    log_level: str = "info"
    #: Largest request body accepted, in bytes; larger ones get a 413.
    max_body_bytes: int = 64 * 1024 * 1024
    #: Largest number of elements in one array of a request; more gets a 413.
    max_elements: int = 64 * 1024 * 1024
