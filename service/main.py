"""The application factory: routers, the one error handler, the spec, the offline docs."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio.to_thread
import fastapi_offline
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Receive, Scope, Send

from service import __version__, diagnostics, kernels, registry
from service.admission import MemoryBudget, freeze_startup_objects, tune_allocator
from service.api.drain import DrainRequestBody
from service.api.error_responses import document_errors
from service.api.openapi_body import add_request_models
from service.api.openapi_examples import add_examples
from service.api.openapi_ops import per_operation_paths
from service.api.responses import problem_response
from service.api.routes import (
    evaluate,
    evaluations,
    health,
    losses,
    metrics,
    oip,
    reports,
)
from service.api.schemas import Problem
from service.diagnostics import CODES
from service.errors import (
    FieldError,
    InternalError,
    InvalidInput,
    MalformedRequest,
    MethodNotAllowed,
    NotFound,
    ServiceError,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from service.infra import requestid
from service.infra.middleware import with_head
from service.problems import under_protocol
from service.settings import Settings
from service.storage import UNAVAILABLE, unavailable

log = logging.getLogger("service")

STATIC = Path(fastapi_offline.__file__).parent / "static"

DESCRIPTION = (
    """
Classification losses and accuracy metrics with **Keras 3's numbers**, for labels in
either encoding (integer class indices or one-hot / multi-hot / soft targets) and
predictions as probabilities or logits.

* `accuracy` is resolved from the labels, never from a loss, and the response says what it
  resolved to.
* Every compute response carries `warnings`: diagnoses of likely mistakes, each with a
  stable code:
"""
    + "".join(f"  * `{code}`: {text}\n" for code, text in CODES.items())
    + """
* Errors are `application/problem+json` (RFC 9457) with `detail` and per-field `errors`.
* Large batches: send arrays as typed arrays (`{dtype, shape, data}` with base64 bytes), or
  use the binary encoding (`Content-Type: application/octet-stream` with an
  `Inference-Header-Content-Length` header: a JSON header, then the raw tensors).
"""
)


def _shown(value: Any) -> str:
    """A received value as an error message quotes it: its repr, cut to 80 characters."""
    if isinstance(value, str) and len(value) > 40:
        return f"{value[:40]!r}… ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "…"


def _field_errors(exc: RequestValidationError) -> list[FieldError]:
    """Each failed field with what it expected and, where one came, what it received."""
    errors = []
    for e in exc.errors():
        msg = str(e.get("msg", ""))
        if "input" in e and e.get("type") != "missing":
            msg = f"{msg}; received {_shown(e['input'])}"
        errors.append(FieldError(tuple(e.get("loc", ())), msg))
    return errors


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at the request's path (the router's 405 names only
    the first matching route's, though one path may have several routes); ``HEAD``
    wherever ``GET`` is (the operations middleware serves it as a ``GET``)."""
    routes = request.app.router.routes
    for route in routes:
        # Static files (the docs' assets): GET and HEAD, whatever the file.
        static = isinstance(route, Mount) and isinstance(route.app, StaticFiles)
        if static and request.url.path.startswith(route.path + "/"):
            return "GET, HEAD"
    allowed = with_head(
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )
    return ", ".join(method for method in _METHODS if method in allowed)


def _slash_hint(request: Request) -> str:
    """For a path that some route serves without its trailing slash, a word saying so (the
    service never redirects: a client following the redirect of a ``PUT`` would store a
    batch under another id than the one it sent)."""
    path = request.url.path
    if not path.endswith("/") or path == "/":
        return ""
    scope = {**request.scope, "path": request.scope["path"].rstrip("/")}
    if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
        return f" (it is served without the trailing slash: {path.rstrip('/')})"
    return ""


def _install_error_handlers(app: FastAPI) -> None:
    """One format for every error, the framework's own included."""

    async def service_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServiceError)
        return problem_response(exc, request.url.path)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        path = request.url.path
        error: ServiceError
        hint = _slash_hint(request) if exc.status_code in (404, 405) else ""
        if exc.status_code == 404 or hint:
            # A 405 with a hint: a path with a trailing slash that a route takes whole (a
            # batch id is the rest of its path) but whose method is served without the
            # slash is the 404 of it.
            error = NotFound.at(("path",), f"No route {path}{hint}: see /docs for the API's paths.")
            exc.headers = None
        elif exc.status_code == 405:
            allowed = _allowed_methods(request)
            exc.headers = {**(exc.headers or {}), "Allow": allowed}
            error = MethodNotAllowed.at(
                ("method",),
                f"{request.method} is not allowed on {path}: expected {allowed or 'another'}.",
            )
        elif exc.status_code == 400:
            error = MalformedRequest.at(("body",), str(exc.detail))
        elif exc.status_code == 415:
            error = UnsupportedMediaType.at(("header", "content-type"), str(exc.detail))
        else:
            error = MalformedRequest.at(("request",), str(exc.detail))
        # The protocol's clients read {"error"} from any answer under /v2.
        response = (
            oip.error_response(error) if under_protocol(path) else problem_response(error, path)
        )
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = _field_errors(exc)
        detail = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors)
        return problem_response(
            InvalidInput(f"Invalid request: {detail}.", errors), request.url.path
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        # A bug, not the caller's fault: log it, answer without internals.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            InternalError("The service failed on this request; the failure was logged."),
            request.url.path,
        )

    async def store_error(request: Request, exc: Exception) -> Response:
        if not unavailable(exc):
            return await unexpected(request, exc)
        # The database's state, not the request's: the same request may succeed later.
        log.warning(
            "the evaluation store is unavailable on %s %s: %s",
            request.method,
            request.url.path,
            exc,
        )
        error = ServiceUnavailable.at(
            ("database",),
            f"The evaluation store is unavailable ({type(exc).__name__}; logged): the "
            "database could not be reached or could not serve the request now. Expected: "
            "send the request again after the time in Retry-After (a batch sent again "
            "under its id is counted once).",
        )
        return problem_response(error, request.url.path)

    app.add_exception_handler(ServiceError, service_error)
    for unavailable_error in UNAVAILABLE:
        app.add_exception_handler(unavailable_error, store_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs and ReDoc at /redoc, with every asset served from here.

    The assets are the ``fastapi-offline`` package's. The pages' Content-Security-Policy
    lets them load nothing from elsewhere: ReDoc's sidebar otherwise fetches its
    "API docs by Redocly" logo from cdn.redoc.ly (a broken image when offline).
    """
    csp = "; ".join(
        [
            "default-src 'self'",
            "script-src 'self' 'unsafe-inline'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "worker-src 'self' blob:",
            "connect-src 'self'",
            "frame-ancestors 'self'",
        ]
    )
    app.mount("/static/docs", StaticFiles(directory=STATIC), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def swagger() -> Response:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} – docs",
            swagger_js_url="/static/docs/swagger-ui-bundle.js",
            swagger_css_url="/static/docs/swagger-ui.css",
            swagger_favicon_url="/static/docs/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )
        page.headers["Content-Security-Policy"] = csp
        return page

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> Response:
        page = get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} – ReDoc",
            redoc_js_url="/static/docs/redoc.standalone.js",
            redoc_favicon_url="/static/docs/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = csp
        return page


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The spec: routes, plus the request models the raw-body routes describe."""
    spec = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=[
            {"name": "losses", "description": "Keras 3 losses."},
            {"name": "metrics", "description": "Accuracy metrics."},
            {"name": "evaluate", "description": "Many losses and metrics in one call."},
            {
                "name": "evaluations",
                "description": "Streaming evaluations: batch by batch, durable, exact.",
            },
            {"name": "service", "description": "Health."},
            {"name": "oip", "description": "The Open Inference Protocol (v2, KServe/Triton)."},
        ],
    )
    add_request_models(spec)
    spec["components"]["schemas"]["Problem"] = Problem.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    for name, sub in spec["components"]["schemas"]["Problem"].pop("$defs", {}).items():
        spec["components"]["schemas"].setdefault(name, sub)
    per_operation_paths(spec)
    _add_request_id(spec)
    _add_security(spec)
    document_errors(spec)
    add_examples(spec)
    return spec


def _add_request_id(spec: dict[str, Any]) -> None:
    """``X-Request-ID``, which every request may carry, as an optional header of every
    operation.

    It is also what keeps a client generated by openapi-python-client (0.29) importable:
    for a body of two media types (JSON, binary) it writes ``body: ... | Unset`` and
    imports ``Unset`` only for an optional parameter (its issue #1451).
    """
    parameter = {
        "name": requestid.HEADER,
        "in": "header",
        "required": False,
        "description": "Your id of the request, echoed in the response's "
        f"`{requestid.HEADER}` and put on the service's log lines of it: 1 to "
        f"{requestid.MAX_LENGTH} letters, digits or `-_.:+=/@~` (otherwise, or without it, "
        "the service makes one).",
        "schema": {"type": "string"},
    }
    for item in spec["paths"].values():
        for operation in item.values():
            operation.setdefault("parameters", []).append(dict(parameter))


_UNAUTHORIZED = {
    "401": "No valid `Authorization: Bearer <key>` header (when API keys are configured).",
    "403": "A key that is not configured.",
}


def _add_security(spec: dict[str, Any]) -> None:
    """Bearer API keys on the protected paths (the docs page's Authorize button), and
    the 401/403 answers of the protocol's paths, in its error shape (those of ``/v1`` are
    problem documents: :func:`document_errors`)."""
    spec["components"]["securitySchemes"] = {
        "bearerAuth": {
            "type": "http",
            "scheme": "bearer",
            "description": "One of `LOSS_SERVICE_API_KEYS`, when the service has keys.",
        }
    }
    for path, item in spec["paths"].items():
        if not (path.startswith("/v1/") or path.startswith("/v2/models")):
            continue
        for operation in item.values():
            operation["security"] = [{"bearerAuth": []}]
            if path.startswith("/v2/"):
                responses = operation.setdefault("responses", {})
                for status, text in _UNAUTHORIZED.items():
                    content = operation_json_error(responses)
                    responses.setdefault(status, {"description": text, "content": content})


def operation_json_error(responses: dict[str, Any]) -> dict[str, Any]:
    """The error content an operation already documents (the protocol's own for /v2)."""
    for status in ("404", "400", "422"):
        if status in responses and "content" in responses[status]:
            content: dict[str, Any] = responses[status]["content"]
            return content
    return {}


def _install_infrastructure(app: FastAPI, settings: Settings) -> None:
    """``/metrics`` and the ``Operations`` middleware (request id, CORS if
    ``cors_origins``, API keys if ``api_keys``, access log, metrics, and the direct path
    of the compute routes and of a batch's ``PUT``), told what they label."""
    # Imported here: the metrics' storage is chosen when prometheus_client is first
    # imported, which must follow the command line's PROMETHEUS_MULTIPROC_DIR.
    from service.api import compute
    from service.infra import middleware, prometheus

    prometheus.configure(
        warning_codes=diagnostics.CODES,
        compute_routes={
            "/v1/losses/{name}": ("loss", frozenset(registry.LOSSES)),
            "/v1/metrics/{name}": ("metric", frozenset(registry.METRICS)),
            "/v1/evaluate": ("evaluate", None),
        },
    )
    app.add_api_route(
        prometheus.PATH,
        prometheus.metrics_endpoint,
        methods=["GET"],
        include_in_schema=False,
        response_model=None,
    )
    app.add_middleware(
        middleware.Operations,
        api_keys=[key.get_secret_value() for key in settings.api_keys],
        cors_origins=settings.cors_origins,
        direct={
            **{
                ("POST", template): partial(compute.serve, operation_of)
                for template, operation_of in compute.ROUTES.items()
            },
            ("PUT", evaluations.BATCH_PATH): evaluations.serve_put,
        },
    )


class _App(FastAPI):
    """FastAPI, with the request-body drain outside everything (its error middleware too),
    so that an early answer (413, 415, ...) reaches a client that is still sending."""

    #: Whether FastAPI's native telemetry (OpenTelemetry) is on, asked once: FastAPI asks
    #: on every request, reading the environment three times (~6% of a small request).
    _telemetry_on: bool | None = None

    def build_middleware_stack(self) -> ASGIApp:
        return DrainRequestBody(super().build_middleware_stack())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self._telemetry_on is None:
                telemetry = getattr(self, "_native_telemetry", None)
                self._telemetry_on = telemetry is None or bool(telemetry.enabled())
            if not self._telemetry_on:
                # What FastAPI does for a request when its telemetry is off.
                if self.root_path:
                    scope["root_path"] = self.root_path
                await Starlette.__call__(self, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """A worker's start (the server's lifespan ``startup``, once the app is built): the
    evaluation store is opened and its schema migrated (a database that cannot be reached
    now is logged, and opened by the first request about evaluations after it can: 503
    until then; any other failure stops the start); then, with setting ``gc_freeze``,
    what the worker built is left out of the garbage collector's full passes from here
    on (see :func:`~service.admission.freeze_startup_objects`). At its end, the store is
    disposed of."""
    try:
        await anyio.to_thread.run_sync(evaluations.open_store, app.state)
    except Exception as error:
        if not unavailable(error):
            raise
        log.error(
            "the evaluation store could not be opened at start (%s): requests about "
            "evaluations answer 503 until the database can be reached",
            error,
        )
    if app.state.settings.gc_freeze:
        log.debug("%d objects left out of the collector's passes", freeze_startup_objects())
    yield
    # The worker's end: puts still queued are committed, the connections given back.
    store = getattr(app.state, "store", None)
    if store is not None:
        await anyio.to_thread.run_sync(store.dispose)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = _App(
        title="Loss service",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.budget = MemoryBudget(settings.max_inflight_bytes, settings.max_request_memory_bytes)
    tune_allocator(settings.malloc_mmap_threshold, settings.malloc_trim_threshold)
    registry.set_max_confusion_classes(settings.max_confusion_classes)
    registry.set_max_statistic_cells(settings.max_statistic_cells)
    kernels.set_kernel_threads(settings.kernel_threads)
    for module in (losses, metrics, evaluate, evaluations, reports, health, oip):
        app.include_router(module.router)
    _install_error_handlers(app)
    _install_docs(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    _install_infrastructure(app, settings)
    return app
