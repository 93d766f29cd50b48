"""Logs and request ids: one access line per request, JSON or console, ``X-Request-ID``."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import httpx
import pytest

from service.infra import logs, requestid
from service.main import create_app
from service.settings import Settings

URL = "/v1/losses/categorical_crossentropy"
BODY = {"y_true": [[0, 1, 0], [0, 0, 1]], "y_pred": [[0.05, 0.95, 0], [0.1, 0.8, 0.1]]}
ACCESS_FIELDS = {
    "request_id",
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "request_bytes",
    "response_bytes",
    "client",
}


def call(method: str, url: str, settings: Settings | None = None, **kw: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(settings or Settings()))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await c.request(method, url, **kw)

    return asyncio.run(go())


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logs.ACCESS_LOGGER]


# -- request ids -------------------------------------------------------------------


@pytest.mark.parametrize(
    "given",
    [
        "abc",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "a" * 128,
        "req:1/2+3=4@host~x_y.z",
    ],
)
def test_sane_request_id_is_echoed(given: str) -> None:
    response = call("GET", "/healthz", headers={"X-Request-ID": given})
    assert response.headers["x-request-id"] == given


@pytest.mark.parametrize(
    "given", ["", "a" * 129, "has space", "new\\nline", 'quote"d', "ünï", "semi;colon", "<tag>"]
)
def test_other_request_ids_are_replaced(given: str) -> None:
    response = call("GET", "/healthz", headers={"X-Request-ID": given.encode()})
    generated = response.headers["x-request-id"]
    assert generated != given
    assert len(generated) == 32
    int(generated, 16)


def test_a_request_id_is_generated_for_each_request() -> None:
    first = call("GET", "/healthz").headers["x-request-id"]
    second = call("GET", "/healthz").headers["x-request-id"]
    assert first != second
    assert len(first) == len(second) == 32


def test_request_id_on_errors_and_only_once() -> None:
    response = call("POST", "/v1/losses/nope", json=BODY, headers={"x-request-id": "r-1"})
    assert response.status_code == 404
    assert response.headers.get_list("x-request-id") == ["r-1"]


def test_request_id_helpers() -> None:
    assert requestid.is_sane(b"abc-123")
    assert not requestid.is_sane(b"abc 123")
    assert requestid.from_headers([(b"X-Request-Id", b" r-9 ")]) == "r-9"
    assert requestid.current_request_id() is None


# -- access lines ------------------------------------------------------------------


def test_one_access_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=logs.ACCESS_LOGGER)
    response = call("POST", URL, json=BODY, headers={"X-Request-ID": "line-1"})
    assert response.status_code == 200
    (record,) = access_records(caplog)
    fields = {name: getattr(record, name) for name in ACCESS_FIELDS}
    assert fields["request_id"] == "line-1"
    assert fields["method"] == "POST"
    assert fields["path"] == URL
    assert fields["route"] == "/v1/losses/{name}"
    assert fields["status"] == 200
    assert fields["duration_ms"] > 0
    assert fields["request_bytes"] == len(response.request.content)
    assert fields["response_bytes"] == len(response.content)
    assert record.getMessage() == f"POST {URL} 200"


def test_access_line_of_an_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=logs.ACCESS_LOGGER)
    response = call("GET", "/no/such/path?token=secret")
    assert response.status_code == 404
    (record,) = access_records(caplog)
    assert record.status == 404  # type: ignore[attr-defined]
    assert record.route == "<unmatched>"  # type: ignore[attr-defined]
    assert record.path == "/no/such/path"  # type: ignore[attr-defined]
    assert "secret" not in record.getMessage()


def test_access_line_of_a_refused_request(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=logs.ACCESS_LOGGER)
    headers = {"Authorization": "Bearer wrong-key"}
    response = call("POST", URL, Settings(api_keys=["right-key"]), json=BODY, headers=headers)
    assert response.status_code == 403
    (record,) = access_records(caplog)
    assert record.status == 403  # type: ignore[attr-defined]
    assert record.route == "/v1/losses/{name}"  # type: ignore[attr-defined]
    assert record.request_bytes == 0  # type: ignore[attr-defined]
    assert "wrong-key" not in str(record.__dict__)


def test_access_path_has_no_control_characters(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=logs.ACCESS_LOGGER)
    call("GET", "/x%0Afake%20line")
    (record,) = access_records(caplog)
    assert "\n" not in record.path  # type: ignore[attr-defined]


# -- formatters --------------------------------------------------------------------


def _record(**extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("service.access", logging.INFO, __file__, 1, "GET %s", ("/x",), None)
    for name, value in extra.items():
        setattr(record, name, value)
    return record


def test_json_formatter() -> None:
    line = logs.JsonFormatter().format(_record(request_id="r1", status=200, duration_ms=1.5))
    entry = json.loads(line)
    assert entry["level"] == "info"
    assert entry["logger"] == "service.access"
    assert entry["msg"] == "GET /x"
    assert entry["request_id"] == "r1"
    assert entry["status"] == 200
    assert entry["ts"].endswith("Z")
    assert "\n" not in line


def test_json_formatter_with_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("service", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    line = logs.JsonFormatter().format(record)
    entry = json.loads(line)
    assert "ValueError: boom" in entry["exc"]
    assert "\n" not in line


def test_console_formatter() -> None:
    line = logs.ConsoleFormatter().format(_record(request_id="r1", status=200))
    assert "INFO" in line
    assert "GET /x" in line
    assert "request_id=r1" in line
    assert "status=200" in line


def test_request_id_filter_uses_the_current_request() -> None:
    record = _record()
    token = requestid.set_current("current-1")
    try:
        assert logs.RequestIdFilter().filter(record)
    finally:
        requestid.reset_current(token)
    assert record.request_id == "current-1"  # type: ignore[attr-defined]
    outside = _record()
    logs.RequestIdFilter().filter(outside)
    assert not hasattr(outside, "request_id")


def test_bookkeeping_never_fails_a_request(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from service.infra import prometheus

    def broken(**_: Any) -> None:
        raise RuntimeError("metrics store unavailable")

    monkeypatch.setattr(prometheus, "observe", broken)
    response = call("POST", URL, json=BODY)
    assert response.status_code == 200
    assert any("recording the request failed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_access_lines_written_directly_are_the_lines_of_records(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the service's logging configuration, access lines are written straight from
    their fields; a configuration the handler cannot vouch for (another filter here)
    handles records: the lines are the same."""
    import io
    import logging.config

    fields = dict(
        request_id="r-1",
        method="POST",
        path="/v1/losses/x",
        route="/v1/losses/{name}",
        status=200,
        duration_s=0.0123456,
        request_bytes=10,
        response_bytes=20,
        client="127.0.0.1",
    )
    monkeypatch.setattr(logs.time, "time", lambda: 1_700_000_000.25)
    records: list[logging.LogRecord] = []
    make_record = logs._access_record

    def counted(*args: Any) -> logging.LogRecord:
        records.append(make_record(*args))
        return records[-1]

    monkeypatch.setattr(logs, "_access_record", counted)
    config = logs.logging_config("info", fmt)
    assert config["loggers"][logs.ACCESS_LOGGER] == {
        "handlers": ["access"],
        "level": "INFO",
        "propagate": False,
    }
    assert config["handlers"]["access"]["class"] == "service.infra.logs.AccessHandler"
    configurator = logging.config.DictConfigurator(config)
    logger = logging.getLogger(logs.ACCESS_LOGGER)
    state = (logger.handlers[:], logger.level, logger.propagate, logger.disabled)
    lines = []
    try:
        for extra_filter in (False, True):
            # The access logger as the configuration sets it up (on this logger only).
            handler = logs.AccessHandler(io.StringIO())
            handler.setFormatter(
                configurator.configure_custom(dict(config["formatters"]["default"]))
            )
            handler.addFilter(logs.RequestIdFilter())
            logger.handlers = [handler]
            logger.setLevel(logging.INFO)
            logger.propagate = logger.disabled = False
            assert handler.direct()
            if extra_filter:
                handler.addFilter(logging.Filter())
                assert not handler.direct()
            records.clear()
            logs.access(**fields)
            assert len(records) == int(extra_filter)  # a record only when not written directly
            stream = handler.stream
            assert isinstance(stream, io.StringIO)
            lines.append(stream.getvalue())
    finally:
        logger.handlers[:], level, logger.propagate, logger.disabled = state
        logger.setLevel(level)
    direct, handled = lines
    assert direct == handled and direct.endswith("\n") and direct.count("\n") == 1
    if fmt == "json":
        entry = json.loads(direct)
        assert entry["msg"] == "POST /v1/losses/x 200" and entry["duration_ms"] == 12.346
        assert list(entry)[4:] == list(ACCESS_FIELDS_ORDER)
        assert entry["ts"] == "2023-11-14T22:13:20.250Z"


ACCESS_FIELDS_ORDER = (
    "request_id",
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "request_bytes",
    "response_bytes",
    "client",
)


class _CountingStream:
    """A text stream that records each write."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def _direct_access_logger(monkeypatch: pytest.MonkeyPatch) -> _CountingStream:
    """The ``service.access`` logger as the service configures it, on a counting stream."""
    stream = _CountingStream()
    handler = logs.AccessHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.RequestIdFilter())
    logger = logging.getLogger(logs.ACCESS_LOGGER)
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "propagate", False)
    monkeypatch.setattr(logger, "disabled", False)
    monkeypatch.setattr(logger, "level", logging.INFO)
    logger.manager._clear_cache()  # type: ignore[attr-defined]
    return stream


def _access(request_id: str) -> None:
    logs.access(
        request_id=request_id,
        method="POST",
        path="/v1/losses/x",
        route="/v1/losses/{name}",
        status=200,
        duration_s=0.001,
        request_bytes=10,
        response_bytes=20,
        client=None,
    )


def test_access_lines_of_one_event_loop_turn_are_written_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = _direct_access_logger(monkeypatch)

    async def requests() -> list[str]:
        for i in range(3):
            _access(f"r-{i}")
        before = list(stream.writes)
        await asyncio.sleep(0)  # the end of the turn
        await asyncio.sleep(0)
        _access("r-3")
        return before

    before = asyncio.run(requests())
    assert before == []
    assert len(stream.writes) == 2  # r-0..r-2 in one write; r-3 at the loop's end
    first = [json.loads(line) for line in stream.writes[0].splitlines()]
    assert [entry["request_id"] for entry in first] == ["r-0", "r-1", "r-2"]
    assert json.loads(stream.writes[1])["request_id"] == "r-3"
    _access("r-4")  # no event loop: at once
    assert json.loads(stream.writes[2])["request_id"] == "r-4"


def test_access_lines_left_by_a_closed_loop_go_with_the_next_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = _direct_access_logger(monkeypatch)
    loop = asyncio.new_event_loop()

    async def one() -> None:
        loop.stop()  # this turn is the loop's last: the write due at the next never comes
        _access("left")

    task = loop.create_task(one())
    loop.run_forever()
    assert task.done()
    loop.close()
    assert stream.writes == []

    async def next_one() -> None:
        _access("next")
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(next_one())
    ids = [json.loads(line)["request_id"] for w in stream.writes for line in w.splitlines()]
    assert ids == ["left", "next"]
