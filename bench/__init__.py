"""Benchmarks of the loss service: ``python -m bench`` (``make bench``); see bench/README.md.

This module holds what the parts share: timing (min and median of N runs),
aligned tables, the optional PyTorch import, the machine's description, and
starting a server as a subprocess on a free loopback port.
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TORCH_MISSING = "torch not installed"


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the minimum (the least disturbed run) and the median of ``n``."""

    min: float
    median: float
    n: int


def time_it(
    fn: Callable[[], Any],
    *,
    repeat: int,
    warmup: int = 1,
    budget: float | None = None,
    min_repeat: int = 3,
) -> Timing:
    """Time ``fn()`` ``repeat`` times after ``warmup`` calls.

    With ``budget`` (seconds), stops early once the runs took that long, after at
    least ``min_repeat`` runs: slow cases get fewer runs, never fewer than that.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    started = time.perf_counter()
    for i in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if budget is not None and i + 1 >= min_repeat and time.perf_counter() - started > budget:
            break
    return Timing(min(times), statistics.median(times), len(times))


def time_interleaved(
    variants: dict[str, tuple[Callable[[], None], Callable[[], Any]]],
    *,
    rounds: int,
    budget: float | None = None,
    min_rounds: int = 3,
) -> dict[str, Timing]:
    """Time several variants of one computation, one run of each per round.

    Each variant is ``(setup, fn)``: ``setup()`` (not timed) runs before each timed
    ``fn()``. Interleaving spreads the machine's noise over every variant alike;
    one untimed warm-up round comes first. ``budget`` stops after that many seconds
    (after at least ``min_rounds`` rounds).
    """
    for setup, fn in variants.values():
        setup()
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    started = time.perf_counter()
    for i in range(rounds):
        for name, (setup, fn) in variants.items():
            setup()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        if budget is not None and i + 1 >= min_rounds and time.perf_counter() - started > budget:
            break
    return {name: Timing(min(ts), statistics.median(ts), len(ts)) for name, ts in times.items()}


def ms(seconds: float | None) -> str:
    """Milliseconds, 3 significant digits below 1 ms, one decimal above."""
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3g}" if seconds < 1e-3 else f"{seconds * 1e3:.1f}"


def ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 10 else f"{value:.0f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right_from: int = 2) -> str:
    """A plain-text table; columns from ``right_from`` on are right-aligned."""
    cells = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if i >= right_from else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def import_torch() -> ModuleType | None:
    """PyTorch, if installed (the ``bench`` extra); None otherwise.

    Its OpenMP threads are made to sleep when idle (``OMP_WAIT_POLICY=PASSIVE``, unless
    set): by default they spin after each parallel op, which on a small machine steals
    the cores from whatever is timed next (our kernels ran up to 2x slower right after
    a torch-all run).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:
        return None
    return torch


def cpu_model() -> str:
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    torch = import_torch()
    parts = [
        f"nproc {os.cpu_count()}",
        f"CPU {cpu_model()}",
        f"Python {platform.python_version()}",
        f"NumPy {np.__version__}",
        f"torch {torch.__version__ if torch else '(not installed)'}",
    ]
    return "machine: " + ", ".join(parts) + f"; {load()}"


def load() -> str:
    """The load average: the machine is shared, so other work skews every number."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def all_threads() -> int:
    return os.cpu_count() or 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def venv_script(name: str) -> str:
    """A console script installed beside this interpreter (the virtualenv's)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `make install` first")
    return str(path)


@dataclass
class Server:
    """A server subprocess listening on ``url``."""

    process: subprocess.Popen[bytes]
    url: str
    command: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid


def _wait_until_up(process: subprocess.Popen[bytes], url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before answering")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer {url} within {timeout} s") from None
            time.sleep(0.05)


@contextmanager
def serve(
    command: Sequence[str],
    port: int,
    *,
    probe: str = "/",
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
    output: IO[bytes] | None = None,
) -> Iterator[Server]:
    """Run ``command`` (a server on 127.0.0.1:``port``) until the block ends; stopped
    with SIGTERM, then SIGKILL after 10 s. Its standard output and error go to ``output``
    (a file: its logs) if given, else to this process's."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), full_env.get("PYTHONPATH", "")) if p
    )
    process = subprocess.Popen(
        list(command),
        cwd=ROOT,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=output,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(process, url + probe, timeout)
        yield Server(process, url, list(command))
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def proc_status(pid: int, field: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (``VmHWM``, ``VmRSS``) in bytes, if readable."""
    try:
        for text in Path(f"/proc/{pid}/status").read_text().splitlines():
            if text.startswith(field + ":"):
                return int(text.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (``echo 5 > /proc/PID/clear_refs``, Linux 4.0+)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def header(title: str) -> str:
    return f"\n== {title} ==\n"
