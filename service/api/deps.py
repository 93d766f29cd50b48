"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from contextlib import suppress
from typing import Annotated, Any

from fastapi import Depends, Request

from service.api.body import RawBody, read_body
from service.arrays import parse_binary, parse_json_body
from service.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]
RawBodyDep = Annotated[RawBody, Depends(read_body)]


def decode(raw: RawBody, settings: Settings) -> Any:
    """The request body as JSON values, with binary tensors already as NumPy views."""
    if raw.content_type == "binary":
        assert raw.header_length is not None
        return parse_binary(raw.data, raw.header_length, settings.max_elements)
    body = parse_json_body(raw.data)
    if isinstance(raw.data, bytearray):
        # Nothing refers to the JSON text any more (the arrays are parsed copies): its memory
        # goes now, before the computation, not when the request ends.
        with suppress(BufferError):
            raw.data.clear()
    return body
