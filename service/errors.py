"""The service's errors, and nothing else.

Every problem a request can have is one of these, and the web layer turns each
into one ``application/problem+json`` response (RFC 9457) in one handler::

    ServiceError                     status  title
    ├── MalformedRequest             400     Malformed request
    ├── Unauthorized                 401     Unauthorized
    ├── Forbidden                    403     Forbidden
    ├── NotFound                     404     Not found
    ├── MethodNotAllowed             405     Method not allowed
    ├── PayloadTooLarge              413     Payload too large
    ├── UnsupportedMediaType         415     Unsupported media type
    ├── InvalidInput                 422     Invalid input
    └── InternalError                500     Internal error (a bug: logged, no internals shown)

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


class InternalError(ServiceError):
    status = 500
    title = "Internal error"
    slug = "internal-error"


def invalid(loc: Loc, msg: str) -> InvalidInput:
    """Shorthand for the most common error: one invalid field."""
    return InvalidInput(msg, [FieldError(loc, msg)])


PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem(error: ServiceError, instance: str | None = None) -> dict[str, Any]:
    """The RFC 9457 problem document for ``error``: the one format of every error response."""
    body: dict[str, Any] = {
        "type": f"urn:loss-service:problem:{error.slug}",
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "errors": [e.as_dict() for e in error.errors],
    }
    if instance is not None:
        body["instance"] = instance
    return body
