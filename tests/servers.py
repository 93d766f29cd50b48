"""Helpers for tests that run the service as a real process on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn


def service_env() -> dict[str, str]:
    """This process's environment without any LOSS_SERVICE_* setting or metrics directory,
    so a started service sees only what the test sets."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("LOSS_SERVICE_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }


def wait_healthy(
    base: str,
    process: subprocess.Popen[str] | subprocess.Popen[bytes],
    *,
    seconds: float = 30,
    on_exit: Callable[[], str] = lambda: "the server exited at start",
) -> None:
    """Poll ``base``/healthz until it answers 200; fail if the process exits or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, on_exit()
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the service did not answer /healthz in {seconds} s"
        time.sleep(0.1)


@contextmanager
def serve_in_thread(app: Any, seconds: float = 20, **config_options: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free port of 127.0.0.1 in a background thread;
    yields its base URL and stops it (bounded waits both ways). ``config_options`` go
    to ``uvicorn.Config`` (``http=`` a protocol class, ``timeout_keep_alive=``...)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "ws": "none",
        "loop": "asyncio",
        "lifespan": "off",
        **config_options,
    }
    config = uvicorn.Config(app, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + seconds
        while not server.started:
            assert thread.is_alive(), "uvicorn exited at start"
            assert time.monotonic() < deadline, f"uvicorn did not start within {seconds} s"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=seconds)
        sock.close()
        assert not thread.is_alive(), f"uvicorn did not stop within {seconds} s"


async def failing_startup(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app whose lifespan startup fails: a worker of it never starts serving."""
    assert scope["type"] == "lifespan"
    await receive()
    await send({"type": "lifespan.startup.failed", "message": "refused for the test"})
