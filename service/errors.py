"""The service's errors, and nothing else.

Every problem a request can have is one of these, and the web layer turns each
into one ``application/problem+json`` response (RFC 9457) in one handler::

    ServiceError                     status  title
    ├── MalformedRequest             400     Malformed request
    ├── Unauthorized                 401     Unauthorized
    ├── Forbidden                    403     Forbidden
    ├── NotFound                     404     Not found
    ├── MethodNotAllowed             405     Method not allowed
    ├── RequestTimeout               408     Request timeout (a body that stalled)
    ├── Conflict                     409     Conflict (a batch id reused, a closed evaluation)
    ├── PayloadTooLarge              413     Payload too large
    ├── UnsupportedMediaType         415     Unsupported media type
    ├── InvalidInput                 422     Invalid input
    ├── HeadersTooLarge              431     Request header fields too large
    ├── InternalError                500     Internal error (a bug: logged, no internals shown)
    └── ServiceUnavailable           503     Service unavailable (over a budget: retry later)

An error carries ``detail`` (one sentence: what was wrong, what was expected,
what was received) and ``errors``, a list of ``FieldError`` that point at the
offending field (``loc``) the way FastAPI's own validation errors do.
Kernels never raise these: validation happens once, at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class FieldError:
    loc: Loc
    msg: str

    def as_dict(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg}


@dataclass
class ServiceError(Exception):
    detail: str
    errors: list[FieldError] = field(default_factory=list)

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    slug: ClassVar[str] = "internal-error"

    def __post_init__(self) -> None:
        super().__init__(self.detail)

    @classmethod
    def at(cls, loc: Loc, msg: str) -> ServiceError:
        """An error about one field, whose message is also the detail."""
        return cls(msg, [FieldError(loc, msg)])

    def prefixed(self, prefix: Loc) -> ServiceError:
        """The same error with every ``loc`` moved under ``prefix`` (a head, an entry)."""
        moved = [FieldError(prefix + e.loc, e.msg) for e in self.errors]
        return type(self)(self.detail, moved)


class MalformedRequest(ServiceError):
    status = 400
    title = "Malformed request"
    slug = "malformed-request"


class Unauthorized(ServiceError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class Forbidden(ServiceError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(ServiceError):
    status = 404
    title = "Not found"
    slug = "not-found"


class MethodNotAllowed(ServiceError):
    status = 405
    title = "Method not allowed"
    slug = "method-not-allowed"


class RequestTimeout(ServiceError):
    status = 408
    title = "Request timeout"
    slug = "request-timeout"


class Conflict(ServiceError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class PayloadTooLarge(ServiceError):
    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class UnsupportedMediaType(ServiceError):
    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


class InvalidInput(ServiceError):
    status = 422
    title = "Invalid input"
    slug = "invalid-input"


class HeadersTooLarge(ServiceError):
    status = 431
    title = "Request header fields too large"
    slug = "headers-too-large"


class ServiceUnavailable(ServiceError):
    """Over a budget of the worker (memory, connections): the same request may succeed
    after ``RETRY_AFTER`` seconds, which the response says in ``Retry-After``."""

    status = 503
    title = "Service unavailable"
    slug = "service-unavailable"
    RETRY_AFTER: ClassVar[int] = 1


class InternalError(ServiceError):
    status = 500
    title = "Internal error"
    slug = "internal-error"


def invalid(loc: Loc, msg: str) -> InvalidInput:
    """Shorthand for the most common error: one invalid field."""
    return InvalidInput(msg, [FieldError(loc, msg)])


PROBLEM_CONTENT_TYPE = "application/problem+json"


#: Longest ``detail`` or ``msg`` of a problem document, and longest ``loc`` part: a
#: received value quoted in a message (a 60 MiB key, say) is cut, never sent back whole.
MAX_MESSAGE_CHARS = 2000
MAX_LOC_CHARS = 100
#: Most field errors listed in one problem document.
MAX_FIELD_ERRORS = 50


def json_kind(value: Any) -> str:
    """The JSON type of a parsed value: object, array, string, number, boolean or null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text``, cut to ``limit`` characters with a note of how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


def problem(error: ServiceError, instance: str | None = None) -> dict[str, Any]:
    """The RFC 9457 problem document for ``error``: the one format of every error response."""
    body: dict[str, Any] = {
        "type": f"urn:loss-service:problem:{error.slug}",
        "title": error.title,
        "status": error.status,
        "detail": clip(error.detail),
        "errors": [
            {
                "loc": [clip(p, MAX_LOC_CHARS) if isinstance(p, str) else p for p in e.loc],
                "msg": clip(e.msg),
            }
            for e in error.errors[:MAX_FIELD_ERRORS]
        ],
    }
    if instance is not None:
        body["instance"] = instance
    return body
