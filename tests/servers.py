"""Helpers for tests that run the service as a real process on loopback."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

import httpx


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
