"""Hostile load: ``loss-service serve`` (one worker, default settings) under attacks, on
loopback, bounded in count and time.

    python -m bench.hostile [--profile full|bounded] [--json]

``make hostile`` runs the full profile; ``tests/test_hostile.py`` (in ``make test``) the
bounded one, which has fewer connections and shorter waits. Each attack runs while a
probe asks ``GET /healthz`` every 50 ms (2 s timeout), and the worker's RSS is sampled
every 20 ms (``VmRSS``):

- ``idle_declared``: connections that declare the maximum body and send nothing;
- ``slow_headers``: slowloris, a header byte a second per connection;
- ``slow_bodies``: a body byte a second per connection;
- ``many_headers`` / ``huge_header`` / ``endless_header``: 10,000 headers, one 10 MB
  header value, a header that keeps streaming;
- ``big_<encoding>``: concurrent maximum-size bodies as JSON lists, JSON with an escape,
  typed arrays, binary float32, binary uint8 into evaluate;
- ``many_heads``: an evaluate body with 100,000 heads.

Every request must be answered with 200, 408, 413, 431 or 503 with ``Retry-After``
(a connection that sent nothing may be closed without an answer); ``/healthz`` must
answer every probe within 2 s; the worker's RSS must stay under 2 GiB; and a while
after the last attack its RSS must be back within 20% of its warm level. The report
gives, per attack, the answers by status, ``/healthz`` p50/p99/max and the peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from bench import free_port, proc_status

BIN = Path(sys.executable).parent
MiB = 1024 * 1024
ANSWERS = {200, 408, 413, 431, 503}
MAX_RSS = 2 * 1024 * MiB
PROBE_LIMIT_S = 2.0


@dataclass(frozen=True)
class Profile:
    idle_connections: int
    slow_connections: int
    slow_seconds: float
    big_concurrency: int
    body_bytes: int
    endless_header_bytes: int
    settle_seconds: float


PROFILES = {
    "full": Profile(
        idle_connections=300,
        slow_connections=300,
        slow_seconds=15,
        big_concurrency=32,
        body_bytes=60 * MiB,
        endless_header_bytes=300 * MiB,
        settle_seconds=60,
    ),
    "bounded": Profile(
        idle_connections=100,
        slow_connections=60,
        slow_seconds=7,
        big_concurrency=12,
        body_bytes=24 * MiB,
        endless_header_bytes=20 * MiB,
        settle_seconds=8,
    ),
}


def rss_bytes(pid: int) -> int:
    return proc_status(pid, "VmRSS") or 0


# ---- one raw HTTP exchange ---------------------------------------------------------------


@dataclass
class Answer:
    status: int | None  # None: closed (or reset) without an answer
    retry_after: bool = False


async def _read_answer(reader: asyncio.StreamReader, timeout: float) -> Answer:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        return Answer(None)
    except TimeoutError:
        return Answer(-1)  # no answer in time: counted as a failure
    status = int(head.split(b" ", 2)[1])
    return Answer(status, b"\r\nretry-after:" in head.lower())


async def exchange(
    port: int,
    head: bytes,
    body: bytes | Callable[[asyncio.StreamWriter], Awaitable[None]] = b"",
    timeout: float = 120,
) -> Answer:
    """Send ``head`` then ``body`` (bytes, or a coroutine that writes it), read the answer."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    except OSError:
        return Answer(None)
    try:

        async def send() -> None:
            writer.write(head)
            if callable(body):
                await body(writer)
            elif body:
                view = memoryview(body)
                for start in range(0, len(view), 1 << 20):
                    writer.write(view[start : start + (1 << 20)])
                    await writer.drain()
            await writer.drain()

        sender = asyncio.create_task(send())
        answer = await _read_answer(reader, timeout)
        sender.cancel()
        with suppress(asyncio.CancelledError, ConnectionError, OSError):
            await sender
        return answer
    finally:
        writer.close()
        with suppress(ConnectionError, OSError):
            await writer.wait_closed()


def post_head(
    path: str, length: int, content_type: str = "application/json", **extra: str
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---- bodies ---------------------------------------------------------------------------------


def _rows(total_bytes: int, per_row: int) -> int:
    return max(1, total_bytes // per_row)


def json_lists(total: int, escaped: bool = False) -> bytes:
    c = 100
    rows = _rows(total, c * 11)
    rng = np.random.default_rng(0)
    y_pred = rng.random((rows, c)).astype(np.float32)
    body: dict[str, Any] = {"y_true": rng.integers(0, c, rows), "y_pred": y_pred}
    if escaped:
        body["metrics"] = [{"name": "accuracy", "as": 'say "hi"'}]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def _typed(a: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": base64.b64encode(a).decode()}


def typed_arrays(total: int) -> bytes:
    c = 1000
    rows = _rows(total, c * 4 * 4 // 3)
    rng = np.random.default_rng(1)
    y_pred = rng.random((rows, c), dtype=np.float32)
    return orjson.dumps({"y_true": _typed(rng.integers(0, c, rows)), "y_pred": _typed(y_pred)})


def binary(total: int, dtype: str) -> tuple[bytes, int]:
    c = 1000
    itemsize = np.dtype(dtype).itemsize
    rows = _rows(total, c * itemsize)
    rng = np.random.default_rng(2)
    y_pred = (rng.random((rows, c)) * (255 if dtype == "uint8" else 1)).astype(dtype)
    y_true = rng.integers(0, c, rows).astype(np.int64)
    header = orjson.dumps(
        {
            "from_logits": True,
            "y_true": {"dtype": "int64", "shape": [rows], "binary_data_size": y_true.nbytes},
            "y_pred": {"dtype": dtype, "shape": [rows, c], "binary_data_size": y_pred.nbytes},
        }
    )
    return header + y_true.tobytes() + y_pred.tobytes(), len(header)


def many_heads(n: int) -> bytes:
    head = {"y_true": [1], "y_pred": [[0.4, 0.6]]}
    return orjson.dumps({"outputs": {f"h{i}": head for i in range(n)}})


# ---- the run --------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    answers: Counter[str] = field(default_factory=Counter)
    bad: list[str] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)
    probe_failures: int = 0
    peak_rss: int = 0
    seconds: float = 0.0

    def record(self, answer: Answer, allow_silent_close: bool = False) -> None:
        key = "closed" if answer.status is None else str(answer.status)
        self.answers[key] += 1
        if answer.status is None:
            if not allow_silent_close:
                self.bad.append("closed without an answer")
        elif answer.status not in ANSWERS:
            self.bad.append(f"status {answer.status}")
        elif answer.status == 503 and not answer.retry_after:
            self.bad.append("503 without Retry-After")

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.probes, q)) if self.probes else float("nan")


class Watch:
    """Probes /healthz and samples the worker's RSS in threads while an attack runs."""

    def __init__(self, port: int, pid: int) -> None:
        self.port, self.pid = port, pid
        self.result: Result | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Watch:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._probe, daemon=True),
            threading.Thread(target=self._sample, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _probe(self) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=PROBE_LIMIT_S) as c:
            while not self._stop.is_set():
                start = time.perf_counter()
                try:
                    ok = c.get("/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                elapsed = time.perf_counter() - start
                assert self.result is not None
                self.result.probes.append(elapsed)
                if not ok or elapsed > PROBE_LIMIT_S:
                    self.result.probe_failures += 1
                self._stop.wait(0.05)

    def _sample(self) -> None:
        while not self._stop.is_set():
            assert self.result is not None
            try:
                self.result.peak_rss = max(self.result.peak_rss, rss_bytes(self.pid))
            except OSError:
                return
            self._stop.wait(0.02)


Attack = Callable[[int, Profile, Result], Awaitable[None]]


async def idle_declared(port: int, p: Profile, result: Result) -> None:
    head = post_head("/v1/losses/sparse_categorical_crossentropy", 64 * MiB)
    answers = await asyncio.gather(
        *(exchange(port, head, timeout=60) for _ in range(p.idle_connections))
    )
    for answer in answers:
        result.record(answer)


async def slow_headers(port: int, p: Profile, result: Result) -> None:
    async def one() -> Answer:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return Answer(None)
        text = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
        reading = asyncio.create_task(_read_answer(reader, p.slow_seconds + 30))
        try:
            for byte in text:
                if reading.done():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(1)
        except (ConnectionError, OSError):
            pass
        answer = await reading
        writer.close()
        return answer

    for answer in await asyncio.gather(*(one() for _ in range(p.slow_connections))):
        result.record(answer)


async def slow_bodies(port: int, p: Profile, result: Result) -> None:
    async def trickle(writer: asyncio.StreamWriter) -> None:
        for _ in range(int(p.slow_seconds) + 30):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(1)

    head = post_head("/v1/evaluate", 10_000)
    answers = await asyncio.gather(
        *(
            exchange(port, head, trickle, timeout=p.slow_seconds + 40)
            for _ in range(p.slow_connections)
        )
    )
    for answer in answers:
        result.record(answer)


async def many_headers(port: int, p: Profile, result: Result) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-%d: y\r\n" % i for i in range(10_000)
    )
    result.record(await exchange(port, head + b"\r\n", timeout=30))


async def huge_header(port: int, p: Profile, result: Result) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000_000 + b"\r\n\r\n"
    result.record(await exchange(port, head, timeout=30))


async def endless_header(port: int, p: Profile, result: Result) -> None:
    async def stream(writer: asyncio.StreamWriter) -> None:
        chunk = b"a" * (1 << 20)
        for _ in range(p.endless_header_bytes >> 20):
            writer.write(chunk)
            await writer.drain()

    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Endless: "
    result.record(await exchange(port, head, stream, timeout=60))


def big(body: bytes, path: str, content_type: str = "application/json", **extra: str) -> Attack:
    async def attack(port: int, p: Profile, result: Result) -> None:
        head = post_head(path, len(body), content_type, **extra)
        answers = await asyncio.gather(
            *(exchange(port, head, body, timeout=300) for _ in range(p.big_concurrency))
        )
        for answer in answers:
            result.record(answer)

    return attack


def attacks(p: Profile) -> list[tuple[str, Attack]]:
    scce = "/v1/losses/sparse_categorical_crossentropy"
    f32, f32_header = binary(p.body_bytes, "float32")
    u8, u8_header = binary(p.body_bytes, "uint8")
    octet = "application/octet-stream"

    async def heads(port: int, profile: Profile, result: Result) -> None:
        body = many_heads(100_000)
        result.record(await exchange(port, post_head("/v1/evaluate", len(body)), body, timeout=60))

    return [
        ("idle_declared", idle_declared),
        ("slow_headers", slow_headers),
        ("slow_bodies", slow_bodies),
        ("many_headers", many_headers),
        ("huge_header", huge_header),
        ("endless_header", endless_header),
        ("big_json_lists", big(json_lists(p.body_bytes), scce)),
        ("big_json_escaped", big(json_lists(p.body_bytes, escaped=True), "/v1/evaluate")),
        ("big_typed_arrays", big(typed_arrays(p.body_bytes), scce)),
        (
            "big_binary",
            big(f32, scce, octet, **{"Inference-Header-Content-Length": str(f32_header)}),
        ),
        (
            "big_binary_uint8",
            big(u8, "/v1/evaluate", octet, **{"Inference-Header-Content-Length": str(u8_header)}),
        ),
        ("many_heads", heads),
    ]


def warm_up(port: int) -> None:
    """Ordinary requests of every encoding and size, two at a time, so that the warm RSS
    includes what serving costs (libraries loaded, thread-pool threads started)."""
    scce = "/v1/losses/sparse_categorical_crossentropy"
    small = {"y_true": list(range(10)) * 3, "y_pred": np.full((30, 10), 0.1).tolist()}
    octet, octet_header = binary(8 * MiB, "float32")
    requests = [
        (orjson.dumps(small), {"content-type": "application/json"}),
        (typed_arrays(8 * MiB), {"content-type": "application/json"}),
        (json_lists(8 * MiB), {"content-type": "application/json"}),
        (
            octet,
            {
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(octet_header),
            },
        ),
    ]

    async def send_all() -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for body, headers in requests * 3:
                answers = await asyncio.gather(
                    *(client.post(scce, content=body, headers=headers) for _ in range(2))
                )
                for answer in answers:
                    answer.raise_for_status()

    asyncio.run(send_all())


def run(profile_name: str = "full") -> dict[str, Any]:
    profile = PROFILES[profile_name]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOSS_SERVICE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    process = subprocess.Popen(
        [str(BIN / "loss-service"), "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: list[Result] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.1)
        warm_up(port)
        time.sleep(1)
        warm_rss = rss_bytes(process.pid)
        watch = Watch(port, process.pid)
        for name, attack in attacks(profile):
            result = Result(name)
            watch.result = result
            start = time.monotonic()
            with watch:
                asyncio.run(attack(port, profile, result))
            result.seconds = time.monotonic() - start
            results.append(result)
        time.sleep(profile.settle_seconds)
        settled_rss = rss_bytes(process.pid)
        alive = process.poll() is None
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return {
        "profile": profile_name,
        "warm_rss": warm_rss,
        "settled_rss": settled_rss,
        "alive": alive,
        "attacks": [
            {
                "name": r.name,
                "answers": dict(sorted(r.answers.items())),
                "bad": r.bad[:5],
                "n_bad": len(r.bad),
                "probes": len(r.probes),
                "probe_failures": r.probe_failures,
                "healthz_p50_ms": round(r.quantile(0.5) * 1000, 1),
                "healthz_p99_ms": round(r.quantile(0.99) * 1000, 1),
                "healthz_max_ms": round(max(r.probes, default=float("nan")) * 1000, 1),
                "peak_rss_mib": round(r.peak_rss / MiB),
                "seconds": round(r.seconds, 1),
            }
            for r in results
        ],
    }


def failures(report: dict[str, Any]) -> list[str]:
    """What the report shows against the acceptance rules (empty: all held)."""
    found = []
    if not report["alive"]:
        found.append("the service died")
    for attack in report["attacks"]:
        name = attack["name"]
        if attack["n_bad"]:
            found.append(f"{name}: {attack['n_bad']} bad answers, e.g. {attack['bad']}")
        if attack["probe_failures"]:
            found.append(f"{name}: {attack['probe_failures']} /healthz probes over 2 s or failed")
        if attack["peak_rss_mib"] * MiB > MAX_RSS:
            found.append(f"{name}: peak RSS {attack['peak_rss_mib']} MiB")
    if report["settled_rss"] > 1.2 * report["warm_rss"]:
        found.append(
            f"RSS after the attacks {report['settled_rss'] / MiB:.0f} MiB, over 1.2 x the warm "
            f"{report['warm_rss'] / MiB:.0f} MiB"
        )
    return found


def table(report: dict[str, Any]) -> str:
    lines = [
        f"hostile load ({report['profile']} profile), one worker, default settings; warm RSS "
        f"{report['warm_rss'] / MiB:.0f} MiB, after the attacks "
        f"{report['settled_rss'] / MiB:.0f} MiB",
        "",
        "| attack | answers | /healthz p50 ms | p99 ms | max ms | peak RSS MiB | s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for a in report["attacks"]:
        answers = ", ".join(f"{k}: {v}" for k, v in a["answers"].items())
        lines.append(
            f"| {a['name']} | {answers} | {a['healthz_p50_ms']} | {a['healthz_p99_ms']} | "
            f"{a['healthz_max_ms']} | {a['peak_rss_mib']} | {a['seconds']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    report = run(args.profile)
    print(json.dumps(report, indent=2) if args.json else table(report))
    found = failures(report)
    for line in found:
        print(f"FAILED: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
