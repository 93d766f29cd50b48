"""Which route template a request is for: ``/v1/losses/{name}``, never the path itself.

The templates are the paths of the app's OpenAPI document and of its top-level
routes (``/docs``, ``/metrics``, ``/static/docs/{path}``), compiled once, on first
use, with Starlette's own path compiler. Resolving a path does not need the
request to have been routed: a request refused before routing (a 401) still gets
its template.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from starlette.routing import Mount, compile_path
from starlette.types import Scope

log = logging.getLogger(__name__)

UNMATCHED: Final = "<unmatched>"


@dataclass(frozen=True, slots=True)
class _Template:
    regex: re.Pattern[str]
    template: str


def _templates(app: Any) -> list[_Template]:
    paths: set[str] = set()
    try:
        paths.update(app.openapi().get("paths", {}))
    except Exception:
        log.warning("the OpenAPI paths could not be read; routes are labelled coarsely")
    for route in getattr(app, "routes", ()):
        path = getattr(route, "path", None)
        if not isinstance(path, str) or not path:
            continue
        paths.add(path.rstrip("/") + "/{path:path}" if isinstance(route, Mount) else path)
    compiled = [compile_path(path) for path in paths]
    # Literal paths before templated ones, longer literal prefixes first.
    compiled.sort(key=lambda c: (bool(c[2]), -len(c[1].split("{", 1)[0]), c[1]))
    return [_Template(regex, template) for regex, template, _ in compiled]


def route_path(scope: Scope) -> str:
    """The request's path below the app's ``root_path``."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class RouteTemplates:
    """The route templates of one app, compiled on first use."""

    def __init__(self) -> None:
        self._table: list[_Template] | None = None
        self._lock = threading.Lock()

    def resolve(self, app: Any, path: str) -> tuple[str, Mapping[str, str]]:
        """The template that ``path`` matches and its parameters, or ``UNMATCHED``."""
        table = self._table
        if table is None:
            with self._lock:
                if self._table is None:
                    self._table = _templates(app)
                table = self._table
        for entry in table:
            match = entry.regex.match(path)
            if match is not None:
                return entry.template, match.groupdict()
        return UNMATCHED, {}
