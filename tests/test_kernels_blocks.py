"""The kernels' fast paths: row blocks, threads, scratch buffers, row reductions.

The kernels walk big batches by row blocks on a thread pool, reduce rows with
BLAS products or column loops, and compute the loss at integer labels from
unshifted exponentials. Each is checked here against a float64 reference on
batches large enough to take those paths (several blocks, several threads),
at the golden tolerances (rtol 1e-5, atol 1e-6).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from service import kernels
from service.kernels import _blocks
from service.kernels._blocks import (
    for_each_block,
    row_blocks,
    row_dots,
    row_max,
    row_sums,
    scratch,
)

RTOL, ATOL = 1e-5, 1e-6
EPS = 1e-7


@pytest.fixture(params=["1", "3"], ids=["1-thread", "3-threads"])
def kernel_threads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs the test with one kernel thread, then with three (more than the blocks need)."""
    monkeypatch.setenv("LOSS_SERVICE_KERNEL_THREADS", request.param)
    return str(request.param)


# ---- float64 references -------------------------------------------------------------------


def ref_log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))


def ref_cce(y: np.ndarray, p: np.ndarray, from_logits: bool, s: float = 0.0) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64) * (1 - s) + s / y.shape[1]
    if from_logits:
        logq = ref_log_softmax(p)
    else:
        p = np.asarray(p, dtype=np.float64)
        logq = np.log(np.clip(p / p.sum(axis=1, keepdims=True), EPS, 1 - EPS))
    return np.asarray(-(y * logq).sum(axis=1))


def ref_scce_probs(labels: np.ndarray, p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.asarray(np.log(q.sum(axis=1)) - np.log(q[np.arange(len(labels)), labels]))


def ref_bce(y: np.ndarray, p: np.ndarray, from_logits: bool, s: float = 0.0) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64) * (1 - s) + s / 2
    x = np.asarray(p, dtype=np.float64)
    if from_logits:
        per = y * np.logaddexp(0.0, -x) + (1 - y) * np.logaddexp(0.0, x)
    else:
        # float32 clips to [ε32, 1 - ε32], and 1 - (1 - ε32) is 2^-23, not ε
        q = np.clip(x, float(np.float32(EPS)), float(np.float32(1) - np.float32(EPS)))
        per = -(y * np.log(q) + (1 - y) * np.log(1 - q))
    return np.asarray(per.mean(axis=1))


def softmax32(z: np.ndarray) -> np.ndarray:
    return np.exp(ref_log_softmax(z)).astype(np.float32)


def one_hot(labels: np.ndarray, c: int) -> np.ndarray:
    y = np.zeros((len(labels), c), dtype=np.float32)
    y[np.arange(len(labels)), labels] = 1
    return y


#: (rows, classes): narrow rows (column products), wide rows (per-row dots), the
#: widest rows (pairwise sums); each batch is several blocks, over the parallel threshold.
SHAPES = [(40_000, 10), (300, 1000), (12, 32_000)]


def batch(n: int, c: int, scale: float = 3.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, c)) * scale).astype(np.float32)
    return rng.integers(0, c, n), logits


# ---- blocks and threads -------------------------------------------------------------------


@pytest.mark.parametrize("n_rows", [0, 1, 7, 1000, 65_537])
@pytest.mark.parametrize("n_cols", [1, 10, 3000, 300_000])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_row_blocks_cover_every_row_once(n_rows: int, n_cols: int, parts: int) -> None:
    blocks = list(row_blocks(n_rows, n_cols, parts))
    covered = [i for rows in blocks for i in range(rows.start, rows.stop)]
    assert covered == list(range(n_rows))
    assert all(rows.stop > rows.start for rows in blocks)
    # no block much over the block size, unless a single row is that wide
    assert all(
        rows.stop - rows.start <= max(1, _blocks.BLOCK_ELEMENTS // n_cols) for rows in blocks
    )
    if n_rows >= parts and n_rows * n_cols > _blocks.BLOCK_ELEMENTS:
        assert len(blocks) % parts == 0 or len(blocks) == n_rows


def test_for_each_block_runs_every_block_once_on_several_threads(kernel_threads: str) -> None:
    n, c = 100_000, 10  # over the parallel threshold: several blocks
    seen = np.zeros(n, dtype=np.int64)
    names: set[str] = set()
    lock = threading.Lock()

    def work(rows: slice) -> None:
        with lock:
            names.add(threading.current_thread().name)
        seen[rows] += 1

    for_each_block(n, c, work)
    assert np.all(seen == 1)
    assert threading.current_thread().name in names or kernel_threads != "1"


def test_for_each_block_raises_a_blocks_error_once_no_block_runs(kernel_threads: str) -> None:
    n, c = 100_000, 10
    seen = np.zeros(n, dtype=np.int64)
    running = threading.Semaphore(0)

    def work(rows: slice) -> None:
        running.release()
        seen[rows] += 1
        if rows.start == 0:
            raise ValueError("first block")

    with pytest.raises(ValueError, match="first block"):
        for_each_block(n, c, work)
    ran = seen.copy()
    threading.Event().wait(0.05)  # nothing still running writes after the call
    np.testing.assert_array_equal(seen, ran)
    assert set(np.unique(seen)) <= {0, 1}


def test_threads_follow_the_setting_and_count_the_cores_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOSS_SERVICE_KERNEL_THREADS", "3")
    assert _blocks.threads() == 3
    monkeypatch.setenv("LOSS_SERVICE_KERNEL_THREADS", "5")
    assert _blocks.threads() == 5
    calls: list[None] = []
    real = os.cpu_count
    _blocks._cores.cache_clear()

    def cpu_count() -> int | None:
        calls.append(None)
        return real()

    monkeypatch.setattr(os, "cpu_count", cpu_count)
    for unset in ("", "0", "x"):
        monkeypatch.setenv("LOSS_SERVICE_KERNEL_THREADS", unset)
        assert _blocks.threads() == (real() or 1)
    monkeypatch.delenv("LOSS_SERVICE_KERNEL_THREADS")
    assert _blocks.threads() == (real() or 1)
    assert len(calls) == 1


def test_a_small_batch_is_one_block_on_the_calling_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_threads() -> int:
        raise AssertionError("a small batch asked for the thread count")

    monkeypatch.setattr(_blocks, "threads", no_threads)
    _blocks._idle.append({})  # a buffer set to reuse: no thread count to keep it either
    seen: list[tuple[slice, str]] = []

    def work(rows: slice) -> None:
        seen.append((rows, threading.current_thread().name))

    for n, c in [(1, 1), (32, 10), (7, 0), (_blocks.PARALLEL_MIN_ELEMENTS // 10 - 1, 10)]:
        seen.clear()
        for_each_block(n, c, work)
        assert seen == [(slice(0, n), threading.current_thread().name)]
    seen.clear()
    for_each_block(0, 10, work)
    assert seen == []


def test_scratch_is_reused_per_slot_and_dtype_within_a_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOSS_SERVICE_KERNEL_THREADS", "1")
    got: list[np.ndarray] = []

    def work(rows: slice) -> None:
        a = scratch((rows.stop - rows.start, 10), np.dtype(np.float32))
        b = scratch((rows.stop - rows.start, 10), np.dtype(np.float32), slot=1)
        c = scratch((rows.stop - rows.start, 10), np.dtype(np.float64))
        assert not np.shares_memory(a, b) and not np.shares_memory(a, c)
        assert a.dtype == np.float32 and c.dtype == np.float64
        got.append(a)

    for_each_block(3 * _blocks.BLOCK_ELEMENTS // 10, 10, work)
    assert len(got) > 1
    assert all(np.shares_memory(got[0], a) for a in got)


def test_kernels_called_from_several_threads_at_once(kernel_threads: str) -> None:
    # as a server's thread pool calls them: each call's blocks get their own buffers
    batches = [batch(n, c, seed=i) for i, (n, c) in enumerate(SHAPES * 2)]
    expected = [
        kernels.sparse_categorical_crossentropy(labels, z, from_logits=True)
        for labels, z in batches
    ]
    got: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        labels, z = batches[i]
        for _ in range(3):
            got[i] = kernels.sparse_categorical_crossentropy(labels, z, from_logits=True)

    callers = [threading.Thread(target=call, args=(i,)) for i in range(len(batches))]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    for i, values in enumerate(expected):
        np.testing.assert_array_equal(got[i], values)


def test_scratch_outside_blocks_is_a_fresh_array() -> None:
    a = scratch((4, 5), np.dtype(np.float32))
    b = scratch((4, 5), np.dtype(np.float32))
    assert a.shape == (4, 5) and not np.shares_memory(a, b)


# ---- row reductions -----------------------------------------------------------------------


@pytest.mark.parametrize("c", [1, 2, 10, 32, 33, 1000, 8192, 8193, 32_000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_reductions_match_float64(c: int, dtype: type[np.floating]) -> None:
    rng = np.random.default_rng(c)
    n = max(3, 400_000 // c)  # narrow rows: more rows than one BLAS call takes
    a = np.exp(rng.standard_normal((n, c)) * 3).astype(dtype)
    b = rng.random((n, c)).astype(dtype)
    exact = a.astype(np.float64)
    rtol = 2e-6 if dtype == np.float32 else 1e-13
    sums = row_sums(a)
    assert sums.dtype == dtype and sums.shape == (n,)
    np.testing.assert_allclose(sums, exact.sum(axis=1), rtol=rtol)
    dots = row_dots(a, b, np.empty_like(a))
    np.testing.assert_allclose(dots, (exact * b).sum(axis=1), rtol=rtol)
    np.testing.assert_array_equal(row_max(a), a.max(axis=1))
    # strided (not C-contiguous) rows give the same sums
    np.testing.assert_allclose(row_sums(np.asfortranarray(a)), sums, rtol=rtol)


@pytest.mark.parametrize("c", [10, 1000, 4096, 32_000, 100_000])
def test_row_sums_keep_small_terms_next_to_a_large_one(c: int) -> None:
    # a confident row: one term 1, the others each ~2 ulps of 1. Added one by one to
    # the 1, each rounds off; a float32 running sum of chunks would lose whole chunks.
    rng = np.random.default_rng(c)
    n = max(4, 200_000 // c)
    a = np.full((n, c), np.float32(4 * 0.99 * 2.0**-24))
    a[np.arange(n), rng.integers(0, c, n)] = 1
    np.testing.assert_allclose(row_sums(a), a.astype(np.float64).sum(axis=1), rtol=2.5e-7)


# ---- categorical losses on big batches ----------------------------------------------------


@pytest.mark.parametrize(("n", "c"), SHAPES)
def test_losses_at_labels_from_logits_match_float64(kernel_threads: str, n: int, c: int) -> None:
    labels, z = batch(n, c)
    expected = -ref_log_softmax(z)[np.arange(n), labels]
    for got in (
        kernels.sparse_categorical_crossentropy(labels, z, from_logits=True),
        kernels.categorical_crossentropy_from_indices(labels, z, from_logits=True),
        kernels.categorical_crossentropy(one_hot(labels, c), z, from_logits=True),
    ):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("n", "c"), SHAPES)
def test_losses_from_probabilities_match_float64(kernel_threads: str, n: int, c: int) -> None:
    labels, z = batch(n, c)
    p = softmax32(z)
    expected = ref_cce(one_hot(labels, c), p, from_logits=False)
    np.testing.assert_allclose(
        kernels.categorical_crossentropy_from_indices(labels, p), expected, rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        kernels.categorical_crossentropy(one_hot(labels, c), p), expected, rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        kernels.sparse_categorical_crossentropy(labels, p),
        ref_scce_probs(labels, p),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize(("n", "c"), SHAPES)
@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("s", [0.0, 0.1])
def test_soft_and_smoothed_targets_match_float64(
    kernel_threads: str, n: int, c: int, from_logits: bool, s: float
) -> None:
    labels, z = batch(n, c)
    rng = np.random.default_rng(1)
    soft = softmax32(rng.standard_normal((n, c)))
    soft[::3] = one_hot(labels[::3], c)  # one-hot and soft rows in the same blocks
    pred = z if from_logits else softmax32(z)
    np.testing.assert_allclose(
        kernels.categorical_crossentropy(soft, pred, from_logits=from_logits, label_smoothing=s),
        ref_cce(soft, pred, from_logits, s),
        rtol=RTOL,
        atol=ATOL,
    )
    np.testing.assert_allclose(
        kernels.categorical_crossentropy_from_indices(
            labels, pred, from_logits=from_logits, label_smoothing=s
        ),
        ref_cce(one_hot(labels, c), pred, from_logits, s),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("c", [10, 1000])
@pytest.mark.parametrize("from_logits", [True, False])
def test_dense_targets_almost_one_hot_count_every_class(c: int, from_logits: bool) -> None:
    # blocks of one-hot rows but for one row each: the one-hot shortcut must see it
    labels, z = batch(3000, c, scale=20.0)
    pred = z if from_logits else softmax32(z)
    cases = {
        "two halves": (0, [0.5, 0.5]),
        "a 1 and a tiny weight": (1, [1.0, 1e-6]),
        "a 1 and a second 1": (2, [1.0, 1.0]),
        "all zeros": (3, [0.0, 0.0]),
        "a 1 and a negative weight": (4, [1.0, -0.25]),
        "a 1 and weights summing to 0": (5, [1.0, 0.5, -0.5]),
    }
    for name, (row, weights) in cases.items():
        y = one_hot(labels, c)
        y[row] = 0
        y[row, : len(weights)] = weights
        expected = ref_cce(y, pred, from_logits)
        got = kernels.categorical_crossentropy(y, pred, from_logits=from_logits)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=name)
    # and a row of zeros with a row of two 1s elsewhere: as many nonzeros as rows
    y = one_hot(labels, c)
    y[5] = 0
    y[6, (labels[6] + 1) % c] = 1
    expected = ref_cce(y, pred, from_logits)
    got = kernels.categorical_crossentropy(y, pred, from_logits=from_logits)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("offset", [0.0, 30.0, -30.0])
@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_logits_far_from_zero_keep_their_precision(offset: float, scale: float) -> None:
    # the unshifted exponentials must give the shifted form's precision
    labels, z = batch(4000, 50, scale=scale)
    z += np.float32(offset)
    z[::2, 0] = z[::2].max(axis=1) + 20  # confident rows: a loss near 0, labels on them
    labels[::4] = 0
    expected = -ref_log_softmax(z)[np.arange(len(labels)), labels]
    for got in (
        kernels.sparse_categorical_crossentropy(labels, z, from_logits=True),
        kernels.categorical_crossentropy(one_hot(labels, 50), z, from_logits=True),
    ):
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_rows_out_of_the_exponentials_range_are_recomputed(kernel_threads: str) -> None:
    # overflowing rows, rows whose target logit underflows, and ordinary rows, in one block;
    # no overflow or underflow warning escapes (warnings are errors here)
    labels, z = batch(30_000, 10)
    z[1] = [1e4, -1e4, 0, 5, 1, 2, 3, 4, 5, 6]
    z[2, :] = -200.0
    z[2, 3] = -150.0
    labels[2] = 3
    z[3, labels[3]] = -120.0
    z[4, :] = 90.0  # e^90 overflows float32
    z[5, (labels[5] + 1) % 10] = -1e30  # a masked class
    expected = -ref_log_softmax(z)[np.arange(len(labels)), labels]
    for got in (
        kernels.sparse_categorical_crossentropy(labels, z, from_logits=True),
        kernels.categorical_crossentropy_from_indices(labels, z, from_logits=True),
        kernels.categorical_crossentropy(one_hot(labels, 10), z, from_logits=True),
    ):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    # with labels, a class masked by -inf costs nothing (a dense 0 · -inf would be NaN)
    z[6, (labels[6] + 1) % 10] = -np.inf
    expected = -ref_log_softmax(z)[np.arange(len(labels)), labels]
    got = kernels.sparse_categorical_crossentropy(labels, z, from_logits=True)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_float64_batches_keep_float64_precision(kernel_threads: str) -> None:
    labels, z32 = batch(40_000, 10)
    z = z32.astype(np.float64) * 7
    expected = -ref_log_softmax(z)[np.arange(len(labels)), labels]
    got = kernels.sparse_categorical_crossentropy(labels, z, from_logits=True)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    got = kernels.categorical_crossentropy(
        one_hot(labels, 10).astype(np.float64), z, from_logits=True
    )
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_non_contiguous_predictions() -> None:
    labels, z = batch(2000, 40)
    wide = np.zeros((2000, 80), dtype=np.float32)
    wide[:, ::2] = z
    view = wide[:, ::2]  # strided rows
    expected = -ref_log_softmax(z)[np.arange(2000), labels]
    np.testing.assert_allclose(
        kernels.sparse_categorical_crossentropy(labels, view, from_logits=True),
        expected,
        rtol=RTOL,
        atol=ATOL,
    )
    p = softmax32(z)
    np.testing.assert_allclose(
        kernels.categorical_crossentropy_from_indices(labels, np.asfortranarray(p)),
        ref_cce(one_hot(labels, 40), p, False),
        rtol=RTOL,
        atol=ATOL,
    )


# ---- binary losses on big batches ---------------------------------------------------------


def binary_batches() -> Iterator[tuple[int, int]]:
    yield from SHAPES


@pytest.mark.parametrize(("n", "c"), list(binary_batches()))
@pytest.mark.parametrize("s", [0.0, 0.1])
def test_bce_matches_float64(kernel_threads: str, n: int, c: int, s: float) -> None:
    _, x = batch(n, c, scale=5.0)
    rng = np.random.default_rng(2)
    y = (rng.random((n, c)) < 0.1).astype(np.float32)
    y[::5] = rng.random((len(y[::5]), c))  # soft targets too
    x[::7] *= 10  # confident rows, right and wrong
    p = (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32)
    cases: list[tuple[Callable[..., np.ndarray], np.ndarray, bool]] = [
        (kernels.binary_crossentropy, x, True),
        (kernels.binary_crossentropy, p, False),
    ]
    for fn, pred, from_logits in cases:
        got = fn(y, pred, from_logits=from_logits, label_smoothing=s)
        assert got.dtype == np.float32
        expected = ref_bce(y, pred, from_logits, s)
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kernels_clip_is_numpys_clip(dtype: type[np.floating]) -> None:
    from service.kernels.categorical import _clip, _clip_bounds

    rng = np.random.default_rng(1)
    x = rng.random((64, 7)).astype(dtype)
    x.flat[:9] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, 1e-45, 1e-8, 1 - 1e-9]
    lo, hi = _clip_bounds(np.dtype(dtype))
    expected = np.clip(x, lo, hi)
    got = _clip(x, lo, hi)
    assert got.dtype == expected.dtype and got is not x
    np.testing.assert_array_equal(got.view(np.uint8), expected.view(np.uint8))
    out = np.empty_like(x)
    assert _clip(x, lo, hi, out=out) is out
    np.testing.assert_array_equal(out.view(np.uint8), expected.view(np.uint8))
