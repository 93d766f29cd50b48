"""Throughput: small requests (``sparse_categorical_crossentropy`` on a 32x10 JSON batch:
integer labels, softmax predictions) from ``wrk`` with 32 connections, the service as
shipped against references served by uvicorn under the same settings (1 worker, the
event loop and HTTP parser ``loss-service serve`` picks: uvloop and httptools when
installed, log level warning, no uvicorn access log):

* ``raw``: ``raw_app``, a raw ASGI app that reads the body and returns a constant JSON
  object: the server's own ceiling;
* ``bare``: ``bare_app``, FastAPI with one ``async`` endpoint returning a constant dict:
  the framework's ceiling;
* ``compute``: ``compute_app``, the service's own decoding and computation inline in a
  raw ASGI app: the ceiling of any web path around this computation;
* ``naive``: ``naive_app``, the service one would write first: FastAPI, a pydantic
  ``list[int]`` / ``list[list[float]]`` body, the loss in NumPy in an ``async`` endpoint
  (the same number as ours, checked);
* ``ours``: ``loss-service serve`` with its defaults, as shipped: request ids, the JSON
  access line of every request (to a file here), Prometheus metrics, the guarded HTTP
  protocol, the drain layer;
* ``ours-w2``: the same with ``--workers 2`` (on 2 cores, wrk then shares them).

Every server runs for the whole part; rounds interleave them, one wrk run of each per
round, so that the machine's noise falls on all alike; the table gives each one's
median over the rounds. The load comes from ``wrk`` (one thread, a Lua script POSTing
the body) when installed, else from an asyncio httpx generator in this process.
Everything is on 127.0.0.1; the servers are stopped afterwards.
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
from pydantic import BaseModel

from bench import Server, free_port, ratio, serve, table, venv_script
from service import cli
from service.api import compute
from service.api.body import RawBody
from service.settings import Settings

LOSS = "sparse_categorical_crossentropy"
PATH = f"/v1/losses/{LOSS}"
CONSTANT = b'{"loss":0.0}'
#: What the issue asks of the service against the references, measured in the same run.
TARGETS = {"bare": 0.6, "naive": 1.5}
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


async def compute_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The service's own decoding and computation of the body (``service.api.compute``),
    inline in a raw ASGI app, answered with its JSON: the ceiling of any web path
    around this computation."""
    if scope["type"] != "http":
        await raw_app(scope, receive, send)
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    name = scope["path"].rsplit("/", 1)[-1]
    raw = RawBody(bytearray(b"".join(chunks)), "json", None)
    result = compute._run(raw, _SETTINGS, compute.loss_operation(name))
    content = orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


_SETTINGS = Settings()

naive_app = FastAPI()


class Batch(BaseModel):
    y_true: list[int]
    y_pred: list[list[float]]


@naive_app.post(PATH)
async def naive(batch: Batch) -> dict[str, float]:
    """Keras' sparse categorical crossentropy of probabilities in NumPy: rows normalised,
    clipped to [1e-7, 1 - 1e-7], the mean of -log p[label]."""
    p = np.asarray(batch.y_pred, dtype=np.float32)
    p = np.clip(p / p.sum(axis=1, keepdims=True), 1e-7, 1 - 1e-7)
    labels = np.asarray(batch.y_true)
    return {"loss": float(-np.log(p[np.arange(labels.size), labels]).mean())}


# ---- the load --------------------------------------------------------------------------


def request_body() -> bytes:
    """32 integer labels over 10 classes and softmax predictions, as JSON lists."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=32)
    z = rng.standard_normal((32, 10)).astype(np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    y_pred = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return orjson.dumps({"y_true": labels, "y_pred": y_pred}, option=orjson.OPT_SERIALIZE_NUMPY)


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


async def _httpx_load(
    url: str | Callable[[], str],
    body: bytes,
    connections: int,
    seconds: float,
    method: str = "POST",
    expect: int = 200,
) -> Load:
    """``connections`` clients sending ``body`` until ``seconds`` pass: to ``url``, or to
    a new URL from ``url()`` each request (``expect``: the status counted as success)."""
    next_url = url if callable(url) else lambda: url
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
                    response = await client.request(
                        method, next_url(), content=body, headers=headers
                    )
                    if response.status_code != expect:
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


def run_httpx(
    url: str | Callable[[], str], body: bytes, connections: int, seconds: float, **how: Any
) -> Load:
    """:func:`_httpx_load` run to its end (``how``: its ``method`` and ``expect``)."""
    return asyncio.run(_httpx_load(url, body, connections, seconds, **how))


# ---- the run -----------------------------------------------------------------------------


def _answer(server: Server, body: bytes) -> float:
    """The loss a server answers for ``body`` (a 200 with a number, or the run stops)."""
    response = httpx.post(
        server.url + PATH, content=body, headers={"Content-Type": "application/json"}
    )
    if response.status_code != 200 or "loss" not in response.json():
        raise RuntimeError(f"{server.command[1]} answered {response.status_code}: {response.text}")
    value: float = response.json()["loss"]
    return value


def _access_lines(log: Path) -> int:
    """How many access lines a server's log holds."""
    with log.open("rb") as lines:
        return sum(1 for line in lines if b'"logger":"service.access"' in line)


def median_round(loads: list[Load]) -> Load:
    """The round with the median rate (the lower middle one of an even count)."""
    ordered = sorted(loads, key=lambda load: load.requests_per_s)
    return ordered[(len(ordered) - 1) // 2]


def run(quick: bool = False) -> str:
    connections = 32
    seconds, rounds = (3.0, 1) if quick else (5.0, 5)
    body = request_body()
    use_wrk = shutil.which("wrk") is not None and os.environ.get(GENERATOR_ENV) != "httpx"
    uvicorn = venv_script("uvicorn")
    common = [
        *("--host", "127.0.0.1", "--workers", "1", "--log-level", "warning", "--no-access-log"),
        # What `loss-service serve` runs with, named, so that the settings are the same.
        *("--loop", cli.event_loop(), "--http", cli.http_parser()),
    ]
    names = ("raw", "bare", "compute", "naive", "ours", "ours-w2")
    ports = {name: free_port() for name in names}
    service = venv_script("loss-service")
    commands = {
        "raw": [uvicorn, "bench.throughput:raw_app", "--port", str(ports["raw"]), *common],
        "bare": [uvicorn, "bench.throughput:bare_app", "--port", str(ports["bare"]), *common],
        "compute": [
            *(uvicorn, "bench.throughput:compute_app", "--port", str(ports["compute"]), *common)
        ],
        "naive": [uvicorn, "bench.throughput:naive_app", "--port", str(ports["naive"]), *common],
        # As shipped: every setting at its default (log level info: one JSON access line a
        # request, written to a file here).
        "ours": [service, "serve", "--port", str(ports["ours"])],
        "ours-w2": [service, "serve", "--port", str(ports["ours-w2"]), "--workers", "2"],
    }
    probes = {"raw": "/", "compute": "/", "bare": "/docs", "naive": "/docs"}
    loads: dict[str, list[Load]] = {name: [] for name in names}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        logs = {name: Path(tmp) / f"{name}.log" for name in names}
        servers = {
            name: stack.enter_context(
                serve(
                    command,
                    ports[name],
                    probe=probes.get(name, "/healthz"),
                    output=stack.enter_context(logs[name].open("wb")),
                )
            )
            for name, command in commands.items()
        }
        expected = _answer(servers["ours"], body)
        for name in ("compute", "naive", "ours-w2"):
            got = _answer(servers[name], body)
            if abs(got - expected) > 1e-5 * max(1.0, abs(expected)):
                raise RuntimeError(f"{name} answers {got}, the service {expected}")
        script = wrk_script(body, Path(tmp))

        def load(name: str, duration: float) -> Load:
            url = servers[name].url + PATH
            if use_wrk:
                return run_wrk(url, script, connections, duration)
            return run_httpx(url, body, connections, duration)

        for name in names:  # warm-up: connections, caches, the JIT-less interpreter's
            load(name, 1.0)
        for _ in range(rounds):  # interleaved: a burst of noise hits them alike
            for name in names:
                loads[name].append(load(name, seconds))
        access_lines = sum(_access_lines(logs[name]) for name in ("ours", "ours-w2"))
    median = {name: median_round(loads[name]) for name in names}
    rate = {name: median[name].requests_per_s for name in names}
    rows = []
    for name in names:
        rates = [load.requests_per_s for load in loads[name]]
        r = median[name]
        rows.append(
            [
                name,
                f"{r.requests_per_s:.0f}",
                f"{min(rates):.0f}-{max(rates):.0f}",
                ratio(r.requests_per_s / rate["bare"]),
                ratio(r.requests_per_s / rate["naive"]),
                ratio(r.requests_per_s / rate["compute"]),
                ratio(r.requests_per_s / rate["raw"]),
                "-" if r.p50_ms is None else f"{r.p50_ms:.2f}",
                "-" if r.p99_ms is None else f"{r.p99_ms:.2f}",
                str(sum(load.errors for load in loads[name])),
            ]
        )
    generator = (
        f"wrk -t1 -c{connections} -d{seconds:g}s (Lua POST script)"
        if use_wrk
        else f"asyncio httpx, {connections} connections, {seconds:g} s (the generator itself "
        "may be the bottleneck: install wrk)"
    )
    requests = sum(load.requests for name in ("ours", "ours-w2") for load in loads[name])
    ours = rate["ours"]
    verdict = ", ".join(
        f"ours/{ref} = {ours / rate[ref]:.2f} (target >= {target:g}: "
        f"{'met' if ours / rate[ref] >= target else 'not met'})"
        for ref, target in TARGETS.items()
    )
    lines = [
        f"load: {generator}; {rounds} interleaved round(s) after a 1 s warm-up each, the "
        f"median round shown; body {len(body)} bytes of JSON (32x10: integer labels, "
        "softmax predictions).",
        *(f"{name}: {' '.join(cmd)}" for name, cmd in commands.items()),
        f"ours wrote {access_lines} access lines for {requests} requests (plus warm-ups).",
        "",
        table(
            [
                *("server", "req/s", "range", "/bare", "/naive", "/compute", "/raw"),
                *("p50 ms", "p99 ms", "errors"),
            ],
            rows,
            1,
        ),
        "",
        verdict,
        f"ours/compute = {ours / rate['compute']:.2f} (what the web path keeps of the "
        f"computation's own ceiling), compute/bare = {rate['compute'] / rate['bare']:.2f}, "
        f"naive/bare = {rate['naive'] / rate['bare']:.2f}, bare/raw = "
        f"{rate['bare'] / rate['raw']:.2f}",
        f"--workers 2 / --workers 1 = {rate['ours-w2'] / ours:.2f} (the 2 cores shared with wrk)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
