"""Load test: ``loss-service serve`` under concurrent clients, on loopback, bounded.

    python bench/load.py [--seconds 60] [--clients 8] [--warmup 10] [--workers 1] [--json]

Starts the service as a subprocess on a free 127.0.0.1 port, then ``--clients``
concurrent clients (httpx, asyncio) send a mix of small requests (32x10, nested JSON,
``categorical_crossentropy``) and large ones (every ``--large-every``-th request:
1024x1000 float32 predictions and int32 labels as base64 typed arrays,
``sparse_categorical_crossentropy``), first for ``--warmup`` seconds, then for
``--seconds``. It reports the requests, the errors (any answer but a 200, any
transport error), p50/p99 latency (all, small, large), and the resident memory (RSS,
``VmRSS`` of the server and its workers) after the warm-up and at the end.

Each worker's RSS grows during its first tens of seconds (buffers of the largest
requests seen, kept by the allocator) and then levels off: with several workers,
give the warm-up about a minute (``--warmup 60``).

Stops by itself: after the time, or ``--max-requests`` requests, whichever is first.
Exits 1 on any error, or when ``--max-rss-growth`` is given and the RSS grew more.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

BIN = Path(sys.executable).parent
SMALL_SHAPE = (32, 10)
LARGE_SHAPE = (1024, 1000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _typed(array: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "data": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii"),
    }


def bodies(seed: int = 0) -> tuple[bytes, bytes]:
    """(small JSON body, large typed-array body), encoded once."""
    rng = np.random.default_rng(seed)
    rows, classes = SMALL_SHAPE
    y_pred = rng.random(SMALL_SHAPE) + 0.01
    y_pred /= y_pred.sum(axis=1, keepdims=True)
    y_true = np.eye(classes)[rng.integers(0, classes, rows)]
    small = orjson.dumps({"y_true": y_true.tolist(), "y_pred": y_pred.round(6).tolist()})
    rows, classes = LARGE_SHAPE
    big = rng.random(LARGE_SHAPE, dtype=np.float32) + np.float32(0.01)
    big /= big.sum(axis=1, keepdims=True)
    labels = rng.integers(0, classes, rows).astype(np.int32)
    large = orjson.dumps({"y_true": _typed(labels), "y_pred": _typed(big)})
    return small, large


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The ppid is the second field after the parenthesised command name.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants, in bytes."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
        pending.extend(_children(current))
    return total


@dataclass
class Phase:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {"small": [], "large": []})
    errors: list[str] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values()) + len(self.errors)


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def run_phase(
    base: str,
    clients: int,
    seconds: float,
    max_requests: int,
    small: bytes,
    large: bytes,
    large_every: int,
) -> Phase:
    phase = Phase()
    deadline = time.monotonic() + seconds
    headers = {"content-type": "application/json"}
    urls = {
        "small": f"{base}/v1/losses/categorical_crossentropy",
        "large": f"{base}/v1/losses/sparse_categorical_crossentropy",
    }
    payloads = {"small": small, "large": large}
    issued = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(index: int, http: httpx.AsyncClient) -> None:
        nonlocal issued
        n = index  # clients start at different points of the mix
        while time.monotonic() < deadline and issued < max_requests:
            issued += 1
            kind = "large" if n % large_every == 0 else "small"
            n += 1
            start = time.perf_counter()
            try:
                response = await http.post(urls[kind], content=payloads[kind], headers=headers)
            except httpx.HTTPError as error:
                phase.errors.append(f"{kind}: {type(error).__name__}: {error}")
                continue
            elapsed = time.perf_counter() - start
            if response.status_code != 200:
                phase.errors.append(f"{kind}: {response.status_code} {response.text[:200]}")
            else:
                phase.latencies[kind].append(elapsed)

    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    return phase


def summary(phase: Phase, seconds: float) -> dict[str, Any]:
    every = phase.latencies["small"] + phase.latencies["large"]

    def ms(values: list[float], q: float) -> float | None:
        p = percentile(values, q)
        return None if p is None else round(p * 1000, 2)

    return {
        "requests": phase.requests,
        "errors": len(phase.errors),
        "first_errors": phase.errors[:5],
        "requests_per_s": round(phase.requests / seconds, 1),
        "small": len(phase.latencies["small"]),
        "large": len(phase.latencies["large"]),
        "p50_ms": ms(every, 50),
        "p99_ms": ms(every, 99),
        "small_p50_ms": ms(phase.latencies["small"], 50),
        "small_p99_ms": ms(phase.latencies["small"], 99),
        "large_p50_ms": ms(phase.latencies["large"], 50),
        "large_p99_ms": ms(phase.latencies["large"], 99),
    }


def start_server(port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("LOSS_SERVICE_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    command = [str(BIN / "loss-service"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(
        [*command, "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # the access log is written, as in production, and dropped
    )


def wait_healthy(base: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not become healthy")
        time.sleep(0.1)


def stop_server(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def run(args: argparse.Namespace) -> dict[str, Any]:
    small, large = bodies()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_server(port, args.workers)
    try:
        wait_healthy(base, process)
        warm = asyncio.run(
            run_phase(
                base, args.clients, args.warmup, args.max_requests, small, large, args.large_every
            )
        )
        rss_warm = rss_bytes(process.pid)
        measured = asyncio.run(
            run_phase(
                base, args.clients, args.seconds, args.max_requests, small, large, args.large_every
            )
        )
        rss_end = rss_bytes(process.pid)
    finally:
        exit_code = stop_server(process)
    result = {
        "clients": args.clients,
        "workers": args.workers,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup,
        "small_body_bytes": len(small),
        "large_body_bytes": len(large),
        "warmup_requests": warm.requests,
        "warmup_errors": len(warm.errors),
        **summary(measured, args.seconds),
        "rss_after_warmup_mib": round(rss_warm / 2**20, 1),
        "rss_end_mib": round(rss_end / 2**20, 1),
        "rss_growth_pct": round(100 * (rss_end - rss_warm) / rss_warm, 2),
        "server_exit_code": exit_code,
    }
    return result


def report(result: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{result['requests']} requests in {result['seconds']} s "
            f"({result['requests_per_s']}/s) from {result['clients']} clients, "
            f"{result['workers']} worker(s): {result['small']} small "
            f"({result['small_body_bytes']} B), {result['large']} large "
            f"({result['large_body_bytes'] / 2**20:.1f} MiB)",
            f"errors: {result['errors']} (warm-up: {result['warmup_errors']} "
            f"of {result['warmup_requests']})",
            f"latency all   p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms",
            f"latency small p50 {result['small_p50_ms']} ms, p99 {result['small_p99_ms']} ms",
            f"latency large p50 {result['large_p50_ms']} ms, p99 {result['large_p99_ms']} ms",
            f"RSS after warm-up {result['rss_after_warmup_mib']} MiB, at the end "
            f"{result['rss_end_mib']} MiB ({result['rss_growth_pct']:+.2f}%)",
            f"server exit code after SIGTERM: {result['server_exit_code']}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured duration")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--warmup", type=float, default=10.0, help="warm-up duration")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--large-every", type=int, default=4, help="one large request in N")
    parser.add_argument("--max-requests", type=int, default=200_000, help="per phase, at most")
    parser.add_argument(
        "--max-rss-growth", type=float, default=None, help="fail above this RSS growth (%%)"
    )
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = parser.parse_args(argv)
    if not (0 < args.seconds <= 3600 and 0 <= args.warmup <= 600 and 1 <= args.clients <= 256):
        parser.error("--seconds in (0, 3600], --warmup in [0, 600], --clients in [1, 256]")
    if args.large_every < 1 or args.workers < 1:
        parser.error("--large-every and --workers must be at least 1")

    result = run(args)
    print(report(result), flush=True)
    if args.json:
        print(json.dumps(result), flush=True)
    failed = result["errors"] > 0 or result["warmup_errors"] > 0
    if args.max_rss_growth is not None and result["rss_growth_pct"] > args.max_rss_growth:
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
