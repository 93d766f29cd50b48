"""Request ids: the caller's ``X-Request-ID`` when it is a sane token, else a new one.

A sane id is 1 to 128 characters out of letters, digits and ``-_.:+=/@~`` (so a UUID,
a ULID, a W3C trace id, a base64 token all pass, and nothing that could forge a log
line does). Anything else is replaced by a fresh id in ``uuid4().hex``'s form. The id is echoed in
the response's ``X-Request-ID`` header, put on every log record of the request, and
available to the app as ``request.state.request_id``.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Iterable
from contextvars import ContextVar, Token
from typing import Final

HEADER: Final = "X-Request-ID"
MAX_LENGTH: Final = 128

_HEADER_KEY: Final = HEADER.lower().encode("latin-1")
_SANE: Final = re.compile(rb"[A-Za-z0-9\-_.:+=/@~]{1,%d}" % MAX_LENGTH)

_current: ContextVar[str | None] = ContextVar("loss_service_request_id", default=None)


def is_sane(value: bytes) -> bool:
    """Whether ``value`` may be used as a request id as it is."""
    return _SANE.fullmatch(value) is not None


#: The bits ``uuid4`` fixes: the version (4) and the RFC 4122 variant (``10``).
_UUID4_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET: Final = (0x4000 << 64) | (0x8000 << 48)


#: The ids' random bits: a generator seeded from the system's randomness, seeded again in
#: every child process. Ids need to be unique, not secret: no system call (which releases
#: the GIL, and on a busy worker waits to get it back) for each request.
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))


def new_request_id() -> str:
    """A fresh id in ``uuid.uuid4().hex``'s form (32 hex digits, version 4, RFC 4122
    variant), made without the ``UUID`` object: this runs for most requests."""
    value = _random.getrandbits(128) & _UUID4_CLEAR | _UUID4_SET
    return f"{value:032x}"


def from_headers(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request's id: its first ``X-Request-ID`` if sane, else a new one."""
    for name, value in headers:
        if name.lower() == _HEADER_KEY:
            value = value.strip()
            return value.decode("ascii") if is_sane(value) else new_request_id()
    return new_request_id()


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return _current.get()


def set_current(request_id: str) -> Token[str | None]:
    """Make ``request_id`` the current one; returns a token for ``reset_current``."""
    return _current.set(request_id)


def reset_current(token: Token[str | None]) -> None:
    _current.reset(token)
