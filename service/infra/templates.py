"""Which route template a request is for: ``/v1/losses/{name}``, never the path itself.

The templates are the paths of the app's routing table (what it serves: included
routers, ``/docs``, ``/metrics``, mounts as ``/static/docs/{path}``), compiled once, on
first use, with Starlette's own path compiler: literal paths go in a dictionary, and a
templated one's regex is tried only on paths that start with its literal prefix.
(Not the OpenAPI document's paths: it may describe one route as several operations.)
Resolving a path does not need the request to have been routed: a request refused
before routing (a 401) still gets its template.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from fastapi.routing import iter_route_contexts
from starlette.routing import Mount, compile_path
from starlette.types import Scope

log = logging.getLogger(__name__)

UNMATCHED: Final = "<unmatched>"


@dataclass(frozen=True, slots=True)
class _Table:
    """Literal paths by path; templated ones (longer literal prefixes first) with the
    literal prefix that a path must start with before its regex is tried."""

    literal: Mapping[str, str]
    templated: tuple[tuple[str, re.Pattern[str], str], ...]


def _routes(app: Any) -> list[Any]:
    """The app's routes, those of its included routers among them."""
    routes = list(getattr(app, "routes", ()))
    try:
        return [context.original_route for context in iter_route_contexts(routes)]
    except Exception:
        log.warning("the included routes could not be listed; routes are labelled coarsely")
        return routes


def _templates(app: Any) -> _Table:
    paths: set[str] = set()
    for route in _routes(app):
        path = getattr(route, "path", None)
        if not isinstance(path, str) or not path:
            continue
        paths.add(path.rstrip("/") + "/{path:path}" if isinstance(route, Mount) else path)
    literal: dict[str, str] = {}
    templated: list[tuple[str, re.Pattern[str], str]] = []
    for path in paths:
        regex, template, convertors = compile_path(path)
        if convertors:
            templated.append((template.split("{", 1)[0], regex, template))
        else:
            literal[template] = template
    # Longer literal prefixes first: /v1/losses/{name} before /v1/{anything}.
    templated.sort(key=lambda t: (-len(t[0]), t[2]))
    return _Table(literal, tuple(templated))


def route_path(scope: Scope) -> str:
    """The request's path below the app's ``root_path``."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


_NO_PARAMS: Final[Mapping[str, str]] = {}


class RouteTemplates:
    """The route templates of one app, compiled on first use: a dictionary lookup for a
    literal path, a prefix test then a regex for each templated one."""

    def __init__(self) -> None:
        self._table: _Table | None = None
        self._lock = threading.Lock()

    def resolve(self, app: Any, path: str) -> tuple[str, Mapping[str, str]]:
        """The template that ``path`` matches and its parameters, or ``UNMATCHED``."""
        table = self._table
        if table is None:
            with self._lock:
                if self._table is None:
                    self._table = _templates(app)
                table = self._table
        template = table.literal.get(path)
        if template is not None:
            return template, _NO_PARAMS
        for prefix, regex, template in table.templated:
            if path.startswith(prefix):
                match = regex.match(path)
                if match is not None:
                    return template, match.groupdict()
        return UNMATCHED, _NO_PARAMS
