"""Throughput: small requests (``categorical_crossentropy`` on a 32x10 JSON batch) with
concurrent clients, against two references under the same uvicorn settings (1 worker,
the event loop and HTTP parser ``loss-service serve`` picks: uvloop and httptools when
installed, log level warning, no uvicorn access log, as ``loss-service serve`` runs it):

* ``raw_app``: a raw ASGI app that reads the body and returns a constant JSON object;
* ``bare_app``: a bare FastAPI app whose endpoint returns a constant dict.

Ours runs as ``loss-service serve``; the references as ``uvicorn bench.throughput:raw_app``
and ``uvicorn bench.throughput:bare_app``. The load comes from ``wrk`` (one thread, a Lua
script POSTing the body) when installed, else from an asyncio httpx generator in this
process. Everything is on 127.0.0.1, bounded in time; the servers are stopped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from fastapi import FastAPI

from bench import Server, free_port, ratio, serve, table, venv_script
from service import cli

PATH = "/v1/losses/categorical_crossentropy"
CONSTANT = b'{"loss":0.0}'
#: Set to "httpx" to use the Python load generator even when wrk is installed.
GENERATOR_ENV = "BENCH_LOAD_GENERATOR"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# ---- the references ----------------------------------------------------------------------


async def raw_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, answers a constant JSON object."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(CONSTANT)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": CONSTANT})


bare_app = FastAPI()


@bare_app.post("/v1/losses/{name}")
async def bare(name: str) -> dict[str, float]:
    """A constant dict: FastAPI's routing, dependency solving and JSON response, nothing else."""
    return {"loss": 0.0}


# ---- the load --------------------------------------------------------------------------


def request_body() -> bytes:
    """32 one-hot labels over 10 classes and softmax predictions, as JSON lists."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=32)
    y_true = np.eye(10, dtype=np.int64)[labels]
    z = rng.standard_normal((32, 10)).astype(np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    y_pred = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return orjson.dumps({"y_true": y_true, "y_pred": y_pred}, option=orjson.OPT_SERIALIZE_NUMPY)


@dataclass(frozen=True)
class Load:
    requests_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    requests: int


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(text)
    value, unit = float(match[1]), match[2]
    return value * 60e3 if unit == "m" else value * _UNITS[unit]


def parse_wrk(output: str) -> Load:
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rate is None or total is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    latency = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", output, flags=re.M))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    n_errors = int(errors[1]) if errors else 0
    if socket_errors:
        n_errors += sum(int(x) for x in socket_errors.groups())
    return Load(
        float(rate[1]),
        _wrk_ms(latency["50"]) if "50" in latency else None,
        _wrk_ms(latency["99"]) if "99" in latency else None,
        n_errors,
        int(total[1]),
    )


def wrk_script(body: bytes, directory: Path) -> Path:
    text = body.decode()
    if "]==]" in text:
        raise ValueError("the body cannot go in a Lua long string")
    script = directory / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{text}]==]\n"
    )
    return script


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> Load:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True)
    return parse_wrk(done.stdout)


async def _httpx_load(url: str, body: bytes, connections: int, seconds: float) -> Load:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    latencies: list[float] = []
    errors = 0
    headers = {"Content-Type": "application/json"}
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers=headers)
                    if response.status_code != 200:
                        errors += 1
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(q: float) -> float | None:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3 if ordered else None

    return Load(len(latencies) / elapsed, pct(0.5), pct(0.99), errors, len(latencies))


def run_httpx(url: str, body: bytes, connections: int, seconds: float) -> Load:
    return asyncio.run(_httpx_load(url, body, connections, seconds))


# ---- the run -----------------------------------------------------------------------------


def _check_ours(server: Server, body: bytes) -> None:
    response = httpx.post(
        server.url + PATH, content=body, headers={"Content-Type": "application/json"}
    )
    if response.status_code != 200 or "loss" not in response.json():
        raise RuntimeError(f"the service answered {response.status_code}: {response.text}")


def run(quick: bool = False) -> str:
    connections = 32
    seconds, rounds = (3.0, 1) if quick else (10.0, 3)
    body = request_body()
    use_wrk = shutil.which("wrk") is not None and os.environ.get(GENERATOR_ENV) != "httpx"
    uvicorn = venv_script("uvicorn")
    common = [
        *("--host", "127.0.0.1", "--workers", "1", "--log-level", "warning", "--no-access-log"),
        # What `loss-service serve` runs with, named, so that the settings are the same.
        *("--loop", cli.event_loop(), "--http", cli.http_parser()),
    ]
    ports = {name: free_port() for name in ("raw", "bare", "ours")}
    commands = {
        "raw": [uvicorn, "bench.throughput:raw_app", "--port", str(ports["raw"]), *common],
        "bare": [uvicorn, "bench.throughput:bare_app", "--port", str(ports["bare"]), *common],
        "ours": [
            venv_script("loss-service"),
            "serve",
            "--port",
            str(ports["ours"]),
            "--log-level",
            "warning",
        ],
    }
    probes = {"raw": "/", "bare": "/docs", "ours": "/healthz"}
    best: dict[str, Load] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        servers = {
            name: stack.enter_context(serve(command, ports[name], probe=probes[name]))
            for name, command in commands.items()
        }
        _check_ours(servers["ours"], body)
        script = wrk_script(body, Path(tmp))

        def load(name: str, duration: float) -> Load:
            url = servers[name].url + PATH
            if use_wrk:
                return run_wrk(url, script, connections, duration)
            return run_httpx(url, body, connections, duration)

        for name in servers:  # warm-up: connections, caches, the JIT-less interpreter's
            load(name, 1.0)
        for _ in range(rounds):  # interleaved, the best round of each kept
            for name in servers:
                result = load(name, seconds)
                if name not in best or result.requests_per_s > best[name].requests_per_s:
                    best[name] = result
    raw = best["raw"].requests_per_s
    rows = []
    for name in ("raw", "bare", "ours"):
        r = best[name]
        rows.append(
            [
                name,
                f"{r.requests_per_s:.0f}",
                ratio(r.requests_per_s / raw),
                "-" if r.p50_ms is None else f"{r.p50_ms:.2f}",
                "-" if r.p99_ms is None else f"{r.p99_ms:.2f}",
                str(r.errors),
                str(r.requests),
            ]
        )
    generator = (
        f"wrk -t1 -c{connections} -d{seconds:g}s (Lua POST script)"
        if use_wrk
        else f"asyncio httpx, {connections} connections, {seconds:g} s (the generator itself "
        "may be the bottleneck: install wrk)"
    )
    lines = [
        f"load: {generator}; best of {rounds} interleaved round(s) after a 1 s warm-up each; "
        f"body {len(body)} bytes of JSON (32x10 one-hot labels, softmax predictions).",
        *(f"{name}: {' '.join(cmd)}" for name, cmd in commands.items()),
        "",
        table(["server", "req/s", "/raw", "p50 ms", "p99 ms", "errors", "requests"], rows, 1),
        "",
        f"ours/raw = {best['ours'].requests_per_s / raw:.3f}, "
        f"bare/raw = {best['bare'].requests_per_s / raw:.3f}, "
        f"ours/bare = {best['ours'].requests_per_s / best['bare'].requests_per_s:.3f}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
