"""Shared fixtures: ``client`` and ``make_client``, in-process HTTP clients of the app.

Starlette's ``TestClient`` emits a deprecation warning with these versions, and
``filterwarnings = error`` turns it into a failure, so the clients here are a
small synchronous wrapper over ``httpx.AsyncClient`` on an ``httpx.ASGITransport``,
each driving its own event loop::

    def test_health(client):
        assert client.get("/healthz").json() == {"status": "ok"}

    def test_small_limit(make_client):
        small = make_client(max_body_bytes=100)
        assert small.post("/v1/evaluate", content=b"x" * 101, headers=...).status_code == 413

``raise_app_exceptions`` (``make_client(raise_app_exceptions=False)``) decides
whether an exception escaping the app (a bug) fails the test with its traceback
(the default, as with ``TestClient``) or is seen as the app's 500 response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service import kernels, registry
from service.main import create_app
from service.settings import Settings

BASE_URL = "http://testserver"


class SyncClient:
    """A blocking HTTP client of one app instance, in process (no socket)."""

    def __init__(self, app: FastAPI, *, raise_app_exceptions: bool = True) -> None:
        self.app = app
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions),
            base_url=BASE_URL,
        )
        self._closed = False

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send a request; the response is read in full. Takes ``httpx`` arguments."""
        if self._closed:
            raise RuntimeError("this client is closed")
        return self._loop.run_until_complete(self._client.request(method, url, **kwargs))

    def concurrently(self, *requests: tuple[str, str, dict[str, Any]]) -> list[httpx.Response]:
        """Send requests (``(method, url, httpx arguments)`` each) at once, the app serving
        them side by side as it would on one event loop; their responses, in order."""
        if self._closed:
            raise RuntimeError("this client is closed")

        async def sent() -> list[httpx.Response]:
            return list(
                await asyncio.gather(
                    *(self._client.request(method, url, **kw) for method, url, kw in requests)
                )
            )

        return self._loop.run_until_complete(sent())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("HEAD", url, **kwargs)

    def options(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("OPTIONS", url, **kwargs)

    def close(self) -> None:
        """Close the client and its event loop (idempotent)."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        try:
            loop.run_until_complete(self._client.aclose())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture
def make_client() -> Iterator[Callable[..., SyncClient]]:
    """A factory: ``make_client(**settings_overrides)`` is a client of an app built
    with ``Settings(**settings_overrides)``; every client it made is closed at teardown.

    The keyword ``raise_app_exceptions`` (default True) is the client's, not a setting.
    """
    clients: list[SyncClient] = []
    # create_app hands the confusion-matrix class and statistic cell limits to the registry
    # (process-wide values): an app built with other limits must not leave them to the tests.
    confusion_limit = registry.MAX_CONFUSION_CLASSES[0]
    cell_limit = registry.MAX_STATISTIC_CELLS[0]

    def make(*, raise_app_exceptions: bool = True, **overrides: Any) -> SyncClient:
        made = SyncClient(
            create_app(Settings(**overrides)), raise_app_exceptions=raise_app_exceptions
        )
        clients.append(made)
        return made

    yield make
    for made in clients:
        made.close()
    registry.set_max_confusion_classes(confusion_limit)
    registry.set_max_statistic_cells(cell_limit)
    # And the kernels' thread count (None: their own default).
    kernels.set_kernel_threads(None)


@pytest.fixture
def client(make_client: Callable[..., SyncClient]) -> SyncClient:
    """A client of an app with the default settings."""
    return make_client()
