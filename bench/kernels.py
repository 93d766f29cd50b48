"""Kernels: ``service.kernels`` against PyTorch's CPU losses and a naive NumPy version.

Every op computes per-sample losses (``reduction="none"``) on float32 inputs:

* ours, at 1 kernel thread and at all cores (``LOSS_SERVICE_KERNEL_THREADS``);
* PyTorch (``torch.nn.functional``), with ``torch.set_num_threads(1)`` and all cores;
* naive NumPy: the textbook formula, building the one-hot matrix and
  ``log(softmax(z))`` (or ``log(sigmoid(x))``) over the whole batch at once.

The ratio columns divide our all-cores time by the others', measured in the same
run: below 1 we are faster.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from bench import (
    TORCH_MISSING,
    all_threads,
    import_torch,
    ms,
    ratio,
    table,
    time_interleaved,
)
from service import kernels

EPS = np.float32(1e-7)
SHAPES = [(4096, 1000), (65536, 10), (512, 32000)]
THREADS_ENV = "LOSS_SERVICE_KERNEL_THREADS"

Fn = Callable[[], Any]


@dataclass(frozen=True)
class Case:
    op: str
    ours: Fn
    naive: Fn
    torch: Fn | None


def _ours_threads(n: int) -> Callable[[], None]:
    """Sets our kernels' thread count (read by every kernel call)."""

    def setup() -> None:
        os.environ[THREADS_ENV] = str(n)

    return setup


def _torch_threads(torch: ModuleType, n: int) -> Callable[[], None]:
    def setup() -> None:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

    return setup


def _nothing() -> None:
    return None


@dataclass(frozen=True)
class Data:
    labels: np.ndarray  # (n,) int64
    logits: np.ndarray  # (n, c) float32
    probs: np.ndarray  # softmax rows
    soft: np.ndarray  # (n, c) float32 soft targets: what the service sends the dense op
    targets: np.ndarray  # (n, c) 0/1 float32, multi-label
    sigmoid: np.ndarray  # (n, c) probabilities of independent labels


def make_data(n: int, c: int, seed: int = 0) -> Data:
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, c), dtype=np.float32) * 3).astype(np.float32)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32)
    labels = rng.integers(0, c, size=n, dtype=np.int64)
    soft = np.full((n, c), 0.1 / c, np.float32)  # label-smoothed targets, rows summing to 1
    soft[np.arange(n), labels] += 0.9
    targets = (rng.random((n, c), dtype=np.float32) < 0.1).astype(np.float32)
    sigmoid = (1 / (1 + np.exp(-logits))).astype(np.float32)
    return Data(labels, logits, probs, soft, targets, sigmoid)


# ---- naive NumPy -----------------------------------------------------------------------


def _naive_one_hot(labels: np.ndarray, c: int) -> np.ndarray:
    m = np.zeros((labels.shape[0], c), np.float32)
    m[np.arange(labels.shape[0]), labels] = 1
    return m


def _naive_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def _naive_log_probs(p: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.log(np.clip(p / p.sum(axis=1, keepdims=True), EPS, 1 - EPS))
    return out


def naive_cce_logits(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    out: np.ndarray = -(y * np.log(_naive_softmax(z))).sum(axis=1)
    return out


def naive_cce_probs(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    out: np.ndarray = -(y * _naive_log_probs(p)).sum(axis=1)
    return out


def naive_bce_logits(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    s = 1 / (1 + np.exp(-x))
    out: np.ndarray = -(y * np.log(s) + (1 - y) * np.log(1 - s)).mean(axis=1)
    return out


def naive_bce_probs(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = np.clip(p, EPS, 1 - EPS)
    out: np.ndarray = -(y * np.log(q) + (1 - y) * np.log(1 - q)).mean(axis=1)
    return out


# ---- the cases -------------------------------------------------------------------------


def cases(d: Data, torch: ModuleType | None) -> list[Case]:
    c = d.logits.shape[1]
    k = kernels
    t_ops: dict[str, Fn] = {}
    if torch is not None:
        f = torch.nn.functional
        t, z, p = (torch.from_numpy(a) for a in (d.labels, d.logits, d.probs))
        y, yb, pb = (torch.from_numpy(a) for a in (d.soft, d.targets, d.sigmoid))
        eps = float(EPS)

        def nll_of_probs() -> Any:
            return f.nll_loss(torch.log(p.clamp(eps, 1 - eps)), t, reduction="none")

        def dense_probs() -> Any:
            q = (p / p.sum(dim=1, keepdim=True)).clamp(eps, 1 - eps)
            return -(y * torch.log(q)).sum(dim=1)

        t_ops = {
            "logits": lambda: f.cross_entropy(z, t, reduction="none"),
            "probs": nll_of_probs,
            "dense_logits": lambda: f.cross_entropy(z, y, reduction="none"),
            "dense_probs": dense_probs,
            "bce_logits": lambda: f.binary_cross_entropy_with_logits(z, yb, reduction="none").mean(
                dim=1
            ),
            "bce_probs": lambda: f.binary_cross_entropy(pb, yb, reduction="none").mean(dim=1),
        }
    return [
        Case(
            "sparse_cce logits",
            lambda: k.sparse_categorical_crossentropy(d.labels, d.logits, from_logits=True),
            lambda: naive_cce_logits(_naive_one_hot(d.labels, c), d.logits),
            t_ops.get("logits"),
        ),
        Case(
            "sparse_cce probs",
            lambda: k.sparse_categorical_crossentropy(d.labels, d.probs),
            lambda: naive_cce_probs(_naive_one_hot(d.labels, c), d.probs),
            t_ops.get("probs"),
        ),
        Case(
            "cce_from_indices logits",
            lambda: k.categorical_crossentropy_from_indices(d.labels, d.logits, from_logits=True),
            lambda: naive_cce_logits(_naive_one_hot(d.labels, c), d.logits),
            t_ops.get("logits"),
        ),
        Case(
            "cce_from_indices probs",
            lambda: k.categorical_crossentropy_from_indices(d.labels, d.probs),
            lambda: naive_cce_probs(_naive_one_hot(d.labels, c), d.probs),
            t_ops.get("probs"),
        ),
        Case(
            "cce dense logits",
            lambda: k.categorical_crossentropy(d.soft, d.logits, from_logits=True),
            lambda: naive_cce_logits(d.soft, d.logits),
            t_ops.get("dense_logits"),
        ),
        Case(
            "cce dense probs",
            lambda: k.categorical_crossentropy(d.soft, d.probs),
            lambda: naive_cce_probs(d.soft, d.probs),
            t_ops.get("dense_probs"),
        ),
        Case(
            "bce logits",
            lambda: k.binary_crossentropy(d.targets, d.logits, from_logits=True),
            lambda: naive_bce_logits(d.targets, d.logits),
            t_ops.get("bce_logits"),
        ),
        Case(
            "bce probs",
            lambda: k.binary_crossentropy(d.targets, d.sigmoid),
            lambda: naive_bce_probs(d.targets, d.sigmoid),
            t_ops.get("bce_probs"),
        ),
    ]


def _check(case: Case, torch: ModuleType | None) -> str | None:
    """A note when ours and the references disagree (they compute the same numbers)."""
    ours = np.asarray(case.ours(), np.float64)
    others = {"naive": np.asarray(case.naive(), np.float64)}
    if torch is not None and case.torch is not None:
        others["torch"] = case.torch().double().numpy()
    for name, values in others.items():
        if not np.allclose(ours, values, rtol=2e-3, atol=2e-4):
            worst = float(np.max(np.abs(ours - values)))
            return f"{case.op}: ours and {name} differ by up to {worst:.3g}"
    return None


def run(quick: bool = False) -> str:
    torch = import_torch()
    n_all = all_threads()
    rounds, budget = (3, 1.5) if quick else (10, 4.0)
    shapes = SHAPES
    before = os.environ.get(THREADS_ENV)
    headers = [
        "shape",
        "op",
        "ours-1t ms",
        "ours ms",
        "med/min",
        "torch-1t ms",
        "torch-all ms",
        "naive ms",
        "ours/torch-all",
        "ours-1t/torch-1t",
        "ours/naive",
        "1t/all",
    ]
    rows: list[list[str]] = []
    notes: list[str] = []
    for n, c in shapes:
        d = make_data(n, c)
        for case in cases(d, torch):
            note = _check(case, torch)
            if note:
                notes.append(note)
            variants: dict[str, tuple[Callable[[], None], Fn]] = {
                "ours-1t": (_ours_threads(1), case.ours),
                "ours": (_ours_threads(n_all), case.ours),
                "naive": (_nothing, case.naive),
            }
            if torch is not None and case.torch is not None:
                variants["torch-1t"] = (_torch_threads(torch, 1), case.torch)
                variants["torch-all"] = (_torch_threads(torch, n_all), case.torch)
            t = time_interleaved(variants, rounds=rounds, budget=budget)
            ours, ours_1 = t["ours"].min, t["ours-1t"].min
            if "torch-all" in t:
                torch_1, torch_all = t["torch-1t"].min, t["torch-all"].min
                t1, tall = ms(torch_1), ms(torch_all)
                r_all, r_1 = ratio(ours / torch_all), ratio(ours_1 / torch_1)
            else:
                t1 = tall = r_all = r_1 = TORCH_MISSING
            rows.append(
                [
                    f"{n}x{c}",
                    case.op,
                    ms(ours_1),
                    ms(ours),
                    f"{t['ours'].median / ours:.2f}",
                    t1,
                    tall,
                    ms(t["naive"].min),
                    r_all,
                    r_1,
                    ratio(ours / t["naive"].min),
                    ratio(ours_1 / ours),
                ]
            )
        del d
    os.environ.pop(THREADS_ENV, None)
    if before is not None:
        os.environ[THREADS_ENV] = before
    text = table(headers, rows)
    legend = (
        f"float32, per-sample losses. Times: minimum of up to {rounds} interleaved rounds (one "
        f"run of every variant per round, ~{budget:g} s at most per op); med/min: our median "
        f"over our minimum (noise). 'ours' and 'all' use {n_all} threads. Ratios: ours (all "
        "threads) over the reference measured in the same rounds, < 1 means ours is faster; "
        "1t/all: our speed-up from threads."
    )
    return "\n".join([legend, "", text, *(f"note: {x}" for x in notes)])


if __name__ == "__main__":
    print(run())
