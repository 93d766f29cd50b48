"""Endpoints: end-to-end latency of ``POST /v1/losses/sparse_categorical_crossentropy`` (from
logits) per request encoding, against the in-process kernel time of the same batch.

The service runs as ``loss-service serve`` (the virtualenv's console script) in a
subprocess on a free loopback port; one persistent httpx client sends bodies encoded
beforehand (the client's encode time is its own column), and a request's time runs
from sending it to having its JSON answer parsed. References, measured in the same run:

* kernel: ``service.kernels.sparse_categorical_crossentropy`` on the same arrays, in
  this process, with the kernel threads the server uses (all cores);
* torch-1t: PyTorch's ``cross_entropy`` of the same logits and labels on one thread (if
  PyTorch is installed): what the computation itself costs elsewhere;
* in-process: ``service.evaluation.loss`` on the decoded arrays (validation, kernel,
  reduction, diagnoses: the whole request minus HTTP and decoding);
* orjson.loads of the JSON body, the floor of any JSON-lists decode;
* the transport floors of the same body: ``raw-asgi``, the throughput part's raw ASGI
  app (reads the body, answers a constant) under the same uvicorn settings, over the
  same kind of httpx connection; and ``socket``, the body sent over a loopback TCP
  socket to a thread that ``recv_into``-s a ready buffer and answers one byte: what
  moving those bytes costs this machine with no HTTP at all.

Memory: before each encoding's requests the server's peak RSS is reset
(``/proc/PID/clear_refs``); after them ``VmHWM`` is its peak during them.
"""

from __future__ import annotations

import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import numpy as np
import orjson

from bench import (
    TORCH_MISSING,
    Timing,
    free_port,
    import_torch,
    ms,
    proc_status,
    ratio,
    reset_peak_rss,
    serve,
    table,
    time_it,
    venv_script,
)
from bench.kernels import SHAPES
from service import cli, evaluation, kernels
from service.client import Encoding, encode_body

LOSS = "sparse_categorical_crossentropy"
PATH = f"/v1/losses/{LOSS}"
QUICK_SHAPES = [(4096, 1000), (512, 32000)]
#: Bodies of these runs are far over the default 64 MiB limit (JSON lists of 16 M floats).
MAX_BODY = 1 << 30
ENCODINGS: tuple[Encoding, ...] = ("binary", "typed", "json")  # the largest body comes last
MiB = 1 << 20


@dataclass(frozen=True)
class Row:
    shape: str
    encoding: str
    body_bytes: int
    encode: float
    latency: Timing
    kernel: float
    in_process: float
    loads: float | None
    raw_asgi: float
    over_socket: float
    rss_before: int | None
    peak: int | None
    torch_1t: float | None


def batch(n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((n, c), dtype=np.float32) * 3).astype(np.float32)
    labels = rng.integers(0, c, size=n, dtype=np.int64)
    return labels, logits


@contextmanager
def socket_sink() -> Iterator[socket.socket]:
    """A connected loopback socket whose peer, a thread, reads each message (8-byte length,
    then the bytes) into a buffer allocated once and answers one byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()
    listener.close()

    def sink() -> None:
        buffer = bytearray(1 << 20)
        while True:
            size_bytes = peer.recv(8, socket.MSG_WAITALL)
            if len(size_bytes) < 8:
                return
            size = int.from_bytes(size_bytes, "little")
            if size > len(buffer):
                buffer = bytearray(size)
            view, got = memoryview(buffer), 0
            while got < size:
                n = peer.recv_into(view[got:size])
                if n == 0:
                    return
                got += n
            peer.sendall(b"k")

    thread = threading.Thread(target=sink, daemon=True)
    thread.start()
    try:
        yield client
    finally:
        client.close()
        thread.join(timeout=10)
        peer.close()


def _socket_round_trip(sock: socket.socket, content: bytes) -> None:
    sock.sendall(len(content).to_bytes(8, "little"))
    sock.sendall(content)
    if sock.recv(1) != b"k":
        raise RuntimeError("the socket sink did not answer")


def _post_raw(http: httpx.Client, content: bytes, headers: dict[str, str]) -> None:
    response = http.post(PATH, content=content, headers=headers)
    if response.status_code != 200:
        raise RuntimeError(f"raw ASGI app: {response.status_code}: {response.text[:200]}")


def _post(http: httpx.Client, content: bytes, headers: dict[str, str]) -> float:
    response = http.post(PATH, content=content, headers=headers)
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.text[:500]}")
    value: float = orjson.loads(response.content)["loss"]
    return value


def _torch_one_thread(
    labels: np.ndarray, logits: np.ndarray, expected: float, repeat: int, budget: float
) -> float | None:
    """PyTorch's ``cross_entropy`` of the same batch on one thread (None without
    PyTorch); its value is checked against the service's."""
    torch = import_torch()
    if torch is None:
        return None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        z, t = torch.from_numpy(logits), torch.from_numpy(labels)
        value = float(torch.nn.functional.cross_entropy(z, t))
        if abs(value - expected) > 1e-4 * max(1.0, abs(expected)):
            raise RuntimeError(f"torch says {value}, the service {expected}")
        return time_it(
            lambda: torch.nn.functional.cross_entropy(z, t), repeat=repeat, budget=budget
        ).min
    finally:
        torch.set_num_threads(threads)


def _measure(
    http: httpx.Client,
    raw_http: httpx.Client,
    sock: socket.socket,
    pid: int,
    shape: tuple[int, int],
    repeat: int,
    budget: float,
) -> list[Row]:
    n, c = shape
    labels, logits = batch(n, c)
    body: dict[str, Any] = {"y_true": labels, "y_pred": logits, "from_logits": True}
    kernel = time_it(
        lambda: kernels.sparse_categorical_crossentropy(labels, logits, from_logits=True),
        repeat=repeat,
        budget=budget,
    ).min
    in_process = time_it(
        lambda: evaluation.loss(LOSS, dict(body), max_elements=1 << 40),
        repeat=repeat,
        budget=budget,
    ).min
    expected = float(evaluation.loss(LOSS, dict(body), max_elements=1 << 40)["loss"])
    torch_1t = _torch_one_thread(labels, logits, expected, repeat, budget)
    rows: list[Row] = []
    for encoding in ENCODINGS:
        encoded = time_it(partial(encode_body, body, encoding), repeat=3, warmup=0)
        content, headers, _ = encode_body(body, encoding)
        loads = None
        if encoding != "binary":
            loads = time_it(partial(orjson.loads, content), repeat=3, budget=budget).min
        got = _post(http, content, headers)  # warm-up, and the value is the in-process one
        if abs(got - expected) > 1e-6 * max(1.0, abs(expected)):
            raise RuntimeError(f"{encoding}: the service says {got}, in process {expected}")
        rss_before = proc_status(pid, "VmRSS")
        reset = reset_peak_rss(pid)
        latency = time_it(
            partial(_post, http, content, headers),
            repeat=repeat,
            warmup=0,
            budget=budget,
        )
        peak = proc_status(pid, "VmHWM")
        raw_asgi = time_it(
            partial(_post_raw, raw_http, content, headers), repeat=repeat, budget=budget
        ).min
        over_socket = time_it(
            partial(_socket_round_trip, sock, content), repeat=repeat, budget=budget
        ).min
        rows.append(
            Row(
                f"{n}x{c}",
                encoding,
                len(content),
                encoded.min,
                latency,
                kernel,
                in_process,
                loads,
                raw_asgi,
                over_socket,
                rss_before if reset else None,
                peak,
                torch_1t,
            )
        )
        del content
    return rows


def run(quick: bool = False) -> str:
    shapes = QUICK_SHAPES if quick else SHAPES
    repeat, budget = (3, 3.0) if quick else (10, 8.0)
    port, raw_port = free_port(), free_port()
    # As shipped, but for the body limit: default settings, access lines to a file.
    command = [venv_script("loss-service"), "serve", "--port", str(port)]
    raw_command = [
        venv_script("uvicorn"),
        "bench.throughput:raw_app",
        *("--host", "127.0.0.1", "--port", str(raw_port), "--workers", "1"),
        *("--log-level", "warning", "--no-access-log"),
        *("--loop", cli.event_loop(), "--http", cli.http_parser()),
    ]
    rows: list[Row] = []
    with (
        tempfile.TemporaryFile() as log,
        serve(
            command,
            port,
            probe="/healthz",
            env={"LOSS_SERVICE_MAX_BODY_BYTES": str(MAX_BODY)},
            output=log,
        ) as server,
        serve(raw_command, raw_port) as raw_server,
        httpx.Client(base_url=server.url, timeout=600) as http,
        httpx.Client(base_url=raw_server.url, timeout=600) as raw_http,
        socket_sink() as sock,
    ):
        started_rss = proc_status(server.pid, "VmRSS")
        for shape in shapes:
            rows.extend(_measure(http, raw_http, sock, server.pid, shape, repeat, budget))
        final_peak = proc_status(server.pid, "VmHWM")
    headers = [
        "shape",
        "encoding",
        "body MiB",
        "encode ms",
        "min ms",
        "median ms",
        "kernel ms",
        "in-proc ms",
        "min/kernel",
        "min/in-proc",
        "loads ms",
        "min/loads",
        "raw-asgi ms",
        "min/raw-asgi",
        "socket ms",
        "socket/kernel",
        "torch-1t ms",
        "min/torch-1t",
        "peak RSS MiB",
        "(peak-rss)/body",
    ]
    lines = []
    for r in rows:
        extra = None
        if r.peak is not None and r.rss_before is not None:
            extra = (r.peak - r.rss_before) / r.body_bytes
        lines.append(
            [
                r.shape,
                r.encoding,
                f"{r.body_bytes / MiB:.1f}",
                ms(r.encode),
                ms(r.latency.min),
                ms(r.latency.median),
                ms(r.kernel),
                ms(r.in_process),
                ratio(r.latency.min / r.kernel),
                ratio(r.latency.min / r.in_process),
                ms(r.loads),
                "-" if r.loads is None else ratio(r.latency.min / r.loads),
                ms(r.raw_asgi),
                ratio(r.latency.min / r.raw_asgi),
                ms(r.over_socket),
                ratio(r.over_socket / r.kernel),
                ms(r.torch_1t) if r.torch_1t is not None else TORCH_MISSING,
                "-" if r.torch_1t is None else ratio(r.latency.min / r.torch_1t),
                "-" if r.peak is None else f"{r.peak / MiB:.0f}",
                "-" if extra is None else f"{extra:.2f}",
            ]
        )
    largest = max(rows, key=lambda r: r.body_bytes)
    summary = [
        f"server: {' '.join(command)} (pid {server.pid}), LOSS_SERVICE_MAX_BODY_BYTES={MAX_BODY}",
        f"latency: minimum and median of up to {repeat} requests (~{budget:g} s at most per "
        "row); kernel and in-process times: minimum, in this process, all cores.",
        "raw-asgi: a raw ASGI app that only reads the body, same uvicorn settings; socket: "
        "the body over a loopback socket to a thread, no HTTP (the floor of any server).",
        "(peak-rss)/body: the server's peak RSS during that row's requests above its RSS "
        "before them, per byte of request body.",
    ]
    if started_rss is not None and final_peak is not None:
        summary.append(
            f"server RSS after start-up {started_rss / MiB:.0f} MiB; peak RSS after the largest "
            f"request ({largest.shape} {largest.encoding}, {largest.body_bytes / MiB:.0f} MiB "
            f"body) {final_peak / MiB:.0f} MiB = {final_peak / largest.body_bytes:.1f}x the "
            f"payload ({(final_peak - started_rss) / largest.body_bytes:.1f}x above start-up)."
        )
    return "\n".join([*summary, "", table(headers, lines), "", *_verdicts(rows)])


#: The goals for 4096x1000 bodies, against references measured in the same run:
#: (encoding, reference, the most the ratio may be; None: shown, no goal).
TARGETS: tuple[tuple[str, str, float | None], ...] = (
    ("typed", "raw-asgi", 1.5),
    ("typed", "torch-1t", 10.0),
    ("binary", "raw-asgi", None),
    ("binary", "torch-1t", None),
)


def _verdicts(rows: list[Row]) -> list[str]:
    """The ratios the goals name, for the 4096x1000 rows."""
    lines = []
    for encoding, reference, most in TARGETS:
        for r in rows:
            if r.shape != "4096x1000" or r.encoding != encoding:
                continue
            base = r.raw_asgi if reference == "raw-asgi" else r.torch_1t
            if base is None:
                lines.append(f"4096x1000 {encoding}: min/{reference} - ({TORCH_MISSING})")
                continue
            value = r.latency.min / base
            goal = (
                ""
                if most is None
                else f" (target <= {most:g}: {'met' if value <= most else 'not met'})"
            )
            lines.append(f"4096x1000 {encoding}: min/{reference} = {value:.2f}{goal}")
    return lines


if __name__ == "__main__":
    print(run())
