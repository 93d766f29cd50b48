"""Logs: JSON lines (or readable console lines), and one access line per request.

``logging_config(level, fmt)`` is the ``logging.config.dictConfig`` dictionary that the
command line hands to uvicorn (which applies it in every worker process): the server's
own logs and the service's go through one handler on standard error, formatted by
``JsonFormatter`` or ``ConsoleFormatter``. Every record logged while a request is being
served carries that request's id (``request_id``), the access line's included.

The access line, logged by ``access()`` on the ``service.access`` logger at INFO, holds::

    {"ts": "2025-01-01T12:00:00.123Z", "level": "info", "logger": "service.access",
     "msg": "POST /v1/evaluate 200", "request_id": "4bf92f3577b34da6a3ce929d0e0e4736",
     "method": "POST", "path": "/v1/evaluate", "route": "/v1/evaluate", "status": 200,
     "duration_ms": 12.41, "request_bytes": 5120, "response_bytes": 431,
     "client": "127.0.0.1"}

``request_bytes`` is the request body received by the service, ``response_bytes`` the
response body sent. Query strings and headers (``Authorization`` above all) are never
logged.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Final

import orjson

from service.infra.requestid import current_request_id

ACCESS_LOGGER: Final = "service.access"

#: The attributes every ``LogRecord`` has: anything else was passed with ``extra=``.
_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "color_message", "taskName"}
)

_access_log = logging.getLogger(ACCESS_LOGGER)
_ACCESS_MESSAGE: Final = "%s %s %d"


#: The last second formatted by ``_timestamp`` and its text (one tuple: replaced whole).
_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    global _second
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    second, text = _second
    if second != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second = (seconds, text)
    return f"{text}.{millis:03d}Z"


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k[0] != "_"}


class RequestIdFilter(logging.Filter):
    """Adds the id of the request being served (if any) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = current_request_id()
            if request_id is not None:
                record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``msg``, then the record's
    extra fields (``request_id``, the access fields), then ``exc`` for a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_extra(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """Readable lines: ``<time> <LEVEL> <logger> <message> key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _extra(record)
        text = (
            f"{_timestamp(record.created)} {record.levelname:<7} {record.name}: "
            f"{record.getMessage()}"
        )
        if fields:
            text += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


def logging_config(level: str = "info", fmt: str = "json") -> dict[str, Any]:
    """The ``dictConfig`` of the server and the service: one handler, on standard error."""
    formatter = JsonFormatter if fmt == "json" else ConsoleFormatter
    name = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"default": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": name, "propagate": False},
            # The access line is the service's own (``service.access``), one per request.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "service": {"handlers": ["default"], "level": name, "propagate": False},
        },
        "root": {"handlers": ["default"], "level": name},
    }


def access_enabled() -> bool:
    """Whether an access line would be logged (the ``service.access`` logger is enabled
    for INFO): when not, the caller need not gather its fields."""
    return _access_log.isEnabledFor(logging.INFO)


#: Per thread: the attributes that every access record made on it shares (its logger,
#: level, source, thread and process), from one record made by the record factory.
_templates: dict[int, tuple[type[logging.LogRecord], dict[str, Any]]] = {}
os.register_at_fork(after_in_child=_templates.clear)


def _access_record(message_args: tuple[Any, ...], fields: dict[str, Any]) -> logging.LogRecord:
    """An access record: a copy of this thread's template with the time, the message
    and the fields of this request (no ``LogRecord()`` and no caller lookup each time:
    the access line is logged for every request)."""
    ident = threading.get_ident()
    made = _templates.get(ident)
    if made is None:
        first = logging.getLogRecordFactory()(
            ACCESS_LOGGER, logging.INFO, __file__, 0, _ACCESS_MESSAGE, (), None, "access"
        )
        made = _templates[ident] = (type(first), dict(first.__dict__))
    cls, template = made
    record = cls.__new__(cls)
    attributes = record.__dict__
    attributes.update(template)
    now = time.time()
    attributes["created"] = now
    attributes["msecs"] = int((now - int(now)) * 1000) + 0.0
    attributes["relativeCreated"] = template["relativeCreated"] + (now - template["created"]) * 1000
    attributes["args"] = message_args
    attributes.update(fields)
    return record


def access(
    *,
    request_id: str,
    method: str,
    path: str,
    route: str,
    status: int,
    duration_s: float,
    request_bytes: int,
    response_bytes: int,
    client: str | None,
) -> None:
    """Log the access line of one request (see the module's docstring)."""
    if not _access_log.isEnabledFor(logging.INFO):
        return
    record = _access_record(
        (method, path, status),
        {
            "request_id": request_id,
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": round(duration_s * 1000, 3),
            "request_bytes": request_bytes,
            "response_bytes": response_bytes,
            "client": client,
        },
    )
    _access_log.handle(record)
