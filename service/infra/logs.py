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

Logged on an event loop (every request the server answers), access lines are written at
the end of the loop's turn, all the lines of the requests that ended in that turn in one
write: one system call a turn instead of one a request. Lines still pending when the
process exits are written then.
"""

from __future__ import annotations

import asyncio
import atexit
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

    def line(
        self, created: float, level: str, name: str, message: str, fields: dict[str, Any]
    ) -> str:
        """The line of a record without traceback, from its parts."""
        entry: dict[str, Any] = {
            "ts": _timestamp(created),
            "level": level.lower(),
            "logger": name,
            "msg": message,
        }
        entry.update(fields)
        return orjson.dumps(entry, default=str).decode()

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text or record.stack_info):
            return self.line(
                record.created, record.levelname, record.name, record.getMessage(), _extra(record)
            )
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

    def line(
        self, created: float, level: str, name: str, message: str, fields: dict[str, Any]
    ) -> str:
        """The line of a record without traceback, from its parts."""
        text = f"{_timestamp(created)} {level:<7} {name}: {message}"
        if fields:
            text += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return text

    def format(self, record: logging.LogRecord) -> str:
        text = self.line(
            record.created, record.levelname, record.name, record.getMessage(), _extra(record)
        )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        elif record.exc_text:
            text += "\n" + record.exc_text
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text


class AccessHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The access lines' handler (``logging_config`` gives it to ``service.access``): a
    stream handler that, when its formatter is the service's and its only filters add
    request ids (which an access line carries already), writes an access line straight
    from its fields: the same line, without a ``LogRecord`` and the logger's dispatch."""

    def direct(self) -> bool:
        """Whether :meth:`emit_fields` writes what handling a record would."""
        return (
            self.level <= logging.INFO
            and type(self.formatter) in _LINE_FORMATTERS
            and all(type(f) is RequestIdFilter for f in self.filters)
        )

    def emit_fields(
        self, message: str, message_args: tuple[Any, ...], fields: dict[str, Any]
    ) -> None:
        """Write the access line of ``fields`` (see :meth:`direct`): at the end of the
        running event loop's turn, with the other lines of that turn; at once when no
        event loop runs on this thread."""
        formatter = self.formatter
        assert isinstance(formatter, JsonFormatter | ConsoleFormatter)
        created = time.time()
        line = formatter.line(created, _INFO, ACCESS_LOGGER, message % message_args, fields)
        entry = (line + self.terminator, message_args, fields)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write([entry])
            return
        turn = _turn()
        turn.pending.append((self, entry))
        if turn.loop is not loop:
            # The turn's first line (or its loop ended before writing: the next one does).
            turn.loop = loop
            loop.call_soon(_write_pending, turn)

    def _write(self, entries: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> None:
        """Write these lines, in one write and one flush."""
        self.acquire()
        try:
            self.stream.write(
                entries[0][0] if len(entries) == 1 else "".join(e[0] for e in entries)
            )
            self.flush()
        except Exception:
            _, message_args, fields = entries[0]
            self.handleError(_access_record(message_args, fields))
        finally:
            self.release()


#: An access line waiting for the end of its event loop's turn: its handler, and the line
#: with the message arguments and fields it was made of (for ``handleError``).
_Pending = tuple[AccessHandler, tuple[str, tuple[Any, ...], dict[str, Any]]]


class _Turn:
    """One thread's access lines waiting for the end of its event loop's turn, and the
    loop that will write them (None once written)."""

    __slots__ = ("loop", "pending")

    def __init__(self) -> None:
        self.pending: list[_Pending] = []
        self.loop: asyncio.AbstractEventLoop | None = None


_local = threading.local()
#: Every thread's turn, written at exit if lines are still pending.
_every_turn: list[_Turn] = []


def _turn() -> _Turn:
    turn: _Turn | None = getattr(_local, "turn", None)
    if turn is None:
        turn = _local.turn = _Turn()
        _every_turn.append(turn)
    return turn


def _write_pending(turn: _Turn) -> None:
    """Write a turn's pending access lines, each handler's in one write."""
    turn.loop = None
    pending, turn.pending = turn.pending, []
    while pending:
        handler = pending[0][0]
        handler._write([entry for owner, entry in pending if owner is handler])
        pending = [item for item in pending if item[0] is not handler]


@atexit.register
def _write_every_pending() -> None:
    for turn in _every_turn:
        _write_pending(turn)


_INFO: Final = logging.getLevelName(logging.INFO)
_LINE_FORMATTERS: Final = (JsonFormatter, ConsoleFormatter)


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
            },
            # The same stream and format, for the access lines (written without records).
            "access": {
                "class": f"{AccessHandler.__module__}.{AccessHandler.__qualname__}",
                "formatter": "default",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": name, "propagate": False},
            # The access line is the service's own (``service.access``), one per request.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "service": {"handlers": ["default"], "level": name, "propagate": False},
            ACCESS_LOGGER: {"handlers": ["access"], "level": name, "propagate": False},
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


def _forget_pending_in_child() -> None:
    # The parent writes its own pending lines; a child starts with none.
    _every_turn.clear()
    _local.__dict__.clear()


os.register_at_fork(after_in_child=_forget_pending_in_child)


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
    logger = _access_log
    if not logger.isEnabledFor(logging.INFO):
        return
    fields = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "route": route,
        "status": status,
        "duration_ms": round(duration_s * 1000, 3),
        "request_bytes": request_bytes,
        "response_bytes": response_bytes,
        "client": client,
    }
    handlers = logger.handlers
    if (
        len(handlers) == 1
        and type(handler := handlers[0]) is AccessHandler
        and not (logger.propagate or logger.filters or logger.disabled)
        and handler.direct()
    ):
        # The service's own configuration: the line is written as handling a record
        # would write it.
        handler.emit_fields(_ACCESS_MESSAGE, (method, path, status), fields)
        return
    logger.handle(_access_record((method, path, status), fields))
