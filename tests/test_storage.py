"""The evaluation store on real databases (SQLite and PostgreSQL): puts, replays, conflicts,
closed evaluations, ownership, pagination, expiry, and reads that do not grow with batches."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import delete, event, func, insert, select, text, update
from storage_helpers import (
    BACKENDS,
    PG_URL,
    Database,
    answer_of,
    batch_stats,
    content_hash,
    database,
)

from service.errors import InvalidInput
from service.kernels.stats import STATISTIC_LIMIT
from service.storage import InvalidCursor, PutOutcome, PutResult, Store
from service.storage.blobs import encode_arrays, encode_totals
from service.storage.commits import _Written, _WrittenLast
from service.storage.exact import ExactTotals
from service.storage.rows import encode_cursor
from service.storage.schema import batches, evaluations
from service.storage.statements import PREPARED_KEY, PutStatements

OWNER = "owner-hash"


class Clock:
    """A clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with database(request.param, tmp_path) as fresh:
        yield fresh


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db: Database, clock: Clock) -> Iterator[Store]:
    opened = Store.open(db.url, db.data_dir, clock=clock)
    yield opened
    opened.dispose()


def put(
    store: Store,
    evaluation_id: str,
    batch_id: str,
    variant: int = 0,
    *,
    owner: str | None = OWNER,
    facts: Mapping[str, Any] | None = None,
    warnings: Sequence[str] = (),
) -> PutResult:
    """Put the batch that ``batch_id`` and ``variant`` stand for (see storage_helpers)."""
    return store.put_batch(
        owner,
        evaluation_id,
        batch_id,
        content_hash(batch_id, variant),
        batch_stats(batch_id, variant),
        answer_of(batch_id, variant),
        10,
        facts=facts,
        warnings=warnings,
    )


def bits(values: np.ndarray) -> list[int]:
    return np.ascontiguousarray(values, dtype=np.float64).view(np.int64).ravel().tolist()


def test_a_new_evaluation_is_open_and_empty(store: Store, clock: Clock) -> None:
    created = store.create_evaluation(OWNER, {"losses": ["log_loss"]}, {"run": "a"})
    assert len(created.id) == 32 and int(created.id, 16) >= 0
    assert created.status == "open" and created.n_batches == created.n_samples == 0
    assert created.created_at == created.updated_at == clock.now
    assert created.config == {"losses": ["log_loss"]} and created.metadata == {"run": "a"}
    assert created.facts is None and created.warnings == {}
    assert store.get_evaluation(OWNER, created.id) == created
    totals = store.get_totals(OWNER, created.id)
    assert totals is not None and totals.values == {} and totals.evaluation == created
    ids = {store.create_evaluation(OWNER, {}, {}).id for _ in range(20)}
    assert len(ids) == 20


def test_json_documents_come_back_as_given_keys_in_order(store: Store) -> None:
    config = {"outputs": {"zeta": {"losses": ["b", "a"]}, "alpha": {}}, "from_logits": True}
    metadata = {"z": "last first", "a": "é ✓"}
    evaluation = store.create_evaluation(OWNER, config, metadata)
    answer = {"losses": {"z_loss": 0.5, "a_loss": 0.25}, "warnings": []}
    store.put_batch(OWNER, evaluation.id, "b", b"h", {}, answer, 1, facts={"z": 1, "a": 2})
    stored = store.get_evaluation(OWNER, evaluation.id)
    assert stored is not None
    assert list(stored.config["outputs"]) == ["zeta", "alpha"]
    assert stored.config == config and list(stored.metadata) == ["z", "a"]
    assert stored.metadata == metadata and list(stored.facts or {}) == ["z", "a"]
    replay = store.put_batch(OWNER, evaluation.id, "b", b"h", {}, {}, 1)
    assert replay.answer == answer and list(replay.answer["losses"]) == ["z_loss", "a_loss"]


def test_a_batch_is_counted_once_and_replays_answer_the_first_answer(
    store: Store, clock: Clock
) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    clock.advance(seconds=1)
    first = put(store, evaluation.id, "batch-1")
    assert first.outcome is PutOutcome.CREATED
    assert first.answer == answer_of("batch-1")
    assert first.evaluation is not None and first.evaluation.n_batches == 1
    assert first.evaluation.n_samples == 10 and first.evaluation.updated_at == clock.now
    assert first.batch is not None and first.batch.seq == 1 and first.batch.received_at == clock.now

    clock.advance(seconds=1)
    again = store.put_batch(
        OWNER,
        evaluation.id,
        "batch-1",
        content_hash("batch-1"),
        {"loss_sum": np.ones(6)},
        {"another": "answer"},
        99,
    )
    assert again.outcome is PutOutcome.REPLAYED
    assert again.answer == answer_of("batch-1") and again.batch == first.batch
    totals = store.get_totals(OWNER, evaluation.id)
    assert totals is not None
    assert totals.evaluation.n_batches == 1 and totals.evaluation.n_samples == 10
    assert totals.evaluation.updated_at == first.evaluation.updated_at
    assert bits(totals.values["loss_sum"]) == bits(batch_stats("batch-1")["loss_sum"])


def test_the_samples_counted_through_a_batch_are_its_first_answers_count(store: Store) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    other = store.create_evaluation(OWNER, {}, {})
    for i in range(3):
        assert put(store, evaluation.id, f"b{i}").outcome is PutOutcome.CREATED
    assert put(store, other.id, "b0").outcome is PutOutcome.CREATED
    assert [store.samples_through(OWNER, evaluation.id, seq) for seq in (1, 2, 3)] == [10, 20, 30]
    # Kept with each batch, and given back with it on a replay.
    replay = put(store, evaluation.id, "b1")
    assert replay.outcome is PutOutcome.REPLAYED
    assert replay.batch is not None and replay.batch.samples_through == 20
    assert store.samples_through(OWNER, other.id, 1) == 10
    assert store.samples_through(OWNER, evaluation.id, 4) is None  # no such batch
    assert store.samples_through("another key", evaluation.id, 1) is None
    assert store.samples_through(OWNER, "0" * 32, 1) is None


def test_a_guard_reads_the_totals_with_the_batch_and_may_refuse_it(store: Store) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    seen: list[float] = []

    def at_most_12(read: Any) -> str | None:
        seen.append(float(read("w")))
        return None if seen[-1] <= 12 else "past 12"

    for batch_id in ("a", "b"):
        result = store.put_batch(
            OWNER,
            evaluation.id,
            batch_id,
            content_hash(batch_id),
            {"w": np.float64(5.0)},
            {},
            1,
            guard=at_most_12,
        )
        assert result.outcome is PutOutcome.CREATED
    with pytest.raises(InvalidInput, match="past 12"):
        store.put_batch(
            OWNER,
            evaluation.id,
            "c",
            content_hash("c"),
            {"w": np.float64(5.0)},
            {},
            1,
            guard=at_most_12,
        )
    # (asked again when the refused put is tried after a read of the evaluation)
    assert seen[:3] == [5.0, 10.0, 15.0] and set(seen[3:]) <= {15.0}
    totals = store.get_totals(OWNER, evaluation.id)
    assert totals is not None and totals.evaluation.n_batches == 2
    assert float(totals.values["w"]) == 10.0


def test_the_same_batch_id_with_other_content_is_a_conflict(store: Store) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    put(store, evaluation.id, "b")
    conflict = put(store, evaluation.id, "b", variant=1)
    assert conflict.outcome is PutOutcome.CONFLICT and conflict.answer is None
    assert conflict.batch is not None and conflict.batch.content_hash == content_hash("b")
    totals = store.get_totals(OWNER, evaluation.id)
    assert totals is not None and totals.evaluation.n_batches == 1
    assert bits(totals.values["loss_sum"]) == bits(batch_stats("b")["loss_sum"])


def test_a_closed_evaluation_takes_no_new_batch_but_still_answers_replays(
    store: Store, clock: Clock
) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    put(store, evaluation.id, "accepted")
    clock.advance(minutes=1)
    closed = store.close_evaluation(OWNER, evaluation.id)
    assert closed is not None and closed.status == "closed" and closed.updated_at == clock.now
    refused = put(store, evaluation.id, "new")
    assert refused.outcome is PutOutcome.CLOSED and refused.batch is None
    assert refused.evaluation is not None and refused.evaluation.status == "closed"
    assert put(store, evaluation.id, "accepted").outcome is PutOutcome.REPLAYED
    assert put(store, evaluation.id, "accepted", variant=1).outcome is PutOutcome.CONFLICT
    again = store.close_evaluation(OWNER, evaluation.id)
    assert again is not None and again.status == "closed" and again.n_batches == 1


def test_another_owners_evaluation_does_not_exist(store: Store) -> None:
    mine = store.create_evaluation(OWNER, {}, {"who": "me"})
    put(store, mine.id, "b1")
    theirs = store.create_evaluation("someone-else", {}, {})
    for other in ("someone-else", None, ""):
        assert store.get_evaluation(other, mine.id) is None
        assert store.get_totals(other, mine.id) is None
        assert store.list_batches(other, mine.id) is None
        assert store.rebuild_totals(other, mine.id) is None
        assert store.close_evaluation(other, mine.id) is None
        assert not store.delete_evaluation(other, mine.id)
        # Not even a replay of a batch it holds: an unknown evaluation.
        for variant in (0, 1):
            result = put(store, mine.id, "b1", variant, owner=other)
            assert result.outcome is PutOutcome.NOT_FOUND and result.batch is None
        assert put(store, mine.id, "new", owner=other).outcome is PutOutcome.NOT_FOUND
    assert [e.id for e in store.list_evaluations(OWNER).items] == [mine.id]
    assert [e.id for e in store.list_evaluations("someone-else").items] == [theirs.id]
    assert store.list_evaluations(None).items == []
    still = store.get_evaluation(OWNER, mine.id)
    assert still is not None and still.status == "open" and still.n_batches == 1


def test_without_api_keys_the_owner_is_none_or_empty_alike(store: Store) -> None:
    evaluation = store.create_evaluation(None, {}, {})
    assert evaluation.owner == ""
    assert store.get_evaluation("", evaluation.id) == evaluation
    assert put(store, evaluation.id, "b", owner=None).outcome is PutOutcome.CREATED
    assert put(store, evaluation.id, "b", owner="").outcome is PutOutcome.REPLAYED


def test_unknown_evaluations_are_not_found(store: Store) -> None:
    assert put(store, "0" * 32, "b").outcome is PutOutcome.NOT_FOUND
    assert store.get_evaluation(OWNER, "not-an-id") is None
    assert store.list_batches(OWNER, "0" * 32) is None
    assert not store.delete_evaluation(OWNER, "0" * 32)


def test_the_first_batch_fixes_the_facts_and_a_differing_batch_is_refused(store: Store) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    facts = {"n_classes": 3, "label_encoding": "sparse", "losses": ("log_loss",)}
    assert put(store, evaluation.id, "a", facts=facts).outcome is PutOutcome.CREATED
    stored = store.get_evaluation(OWNER, evaluation.id)
    assert stored is not None
    assert stored.facts == {"n_classes": 3, "label_encoding": "sparse", "losses": ["log_loss"]}
    assert put(store, evaluation.id, "b", facts=facts).outcome is PutOutcome.CREATED
    assert put(store, evaluation.id, "c").outcome is PutOutcome.CREATED  # facts=None: unchecked
    mismatch = put(store, evaluation.id, "d", facts={**facts, "n_classes": 4})
    assert mismatch.outcome is PutOutcome.MISMATCH and mismatch.batch is None
    assert mismatch.evaluation is not None and mismatch.evaluation.facts == stored.facts
    after = store.get_evaluation(OWNER, evaluation.id)
    assert after is not None and after.n_batches == 3 and after.facts == stored.facts
    # A refused batch id was not stored: it can come again with fitting facts.
    assert put(store, evaluation.id, "d", facts=facts).outcome is PutOutcome.CREATED


def test_settings_and_fixed_facts_are_kept_in_memory_until_the_evaluation_goes(
    db: Database, store: Store
) -> None:
    config = {"losses": ["log_loss"]}
    evaluation = store.create_evaluation(OWNER, config, {})
    facts = {"n_classes": 3}
    first = store.get_setup(OWNER, evaluation.id)
    assert first is not None and first.config == config and first.facts is None
    assert store.get_setup("someone-else", evaluation.id) is None
    assert put(store, evaluation.id, "a", facts=facts).outcome is PutOutcome.CREATED
    fixed = store.get_setup(OWNER, evaluation.id)
    assert fixed is not None and fixed.facts == facts
    assert store.get_setup("someone-else", evaluation.id) is None
    # Another process (another store on the same database) deletes it: this store still
    # remembers its settings, but a put checks under the lock, and then forgets them.
    other = Store.open(db.url, db.data_dir)
    try:
        assert other.delete_evaluation(OWNER, evaluation.id)
    finally:
        other.dispose()
    assert store.get_setup(OWNER, evaluation.id) == fixed
    assert put(store, evaluation.id, "b", facts=facts).outcome is PutOutcome.NOT_FOUND
    assert store.get_setup(OWNER, evaluation.id) is None
    # The store's own delete forgets at once.
    again = store.create_evaluation(OWNER, config, {})
    assert put(store, again.id, "a", facts=facts).outcome is PutOutcome.CREATED
    assert store.get_setup(OWNER, again.id) is not None
    assert store.delete_evaluation(OWNER, again.id)
    assert store.get_setup(OWNER, again.id) is None


def test_the_settings_kept_in_memory_are_bounded(db: Database) -> None:
    small = Store.open(db.url, db.data_dir, setup_cache=2)
    try:
        ids = [small.create_evaluation(OWNER, {}, {}).id for _ in range(4)]
        for evaluation_id in ids:
            assert put(small, evaluation_id, "a", facts={"n": 1}).outcome is PutOutcome.CREATED
            assert small.get_setup(OWNER, evaluation_id) is not None
        assert len(small._setups) == 2
        assert [key[1] for key in small._setups] == ids[2:]
    finally:
        small.dispose()


def test_warning_codes_count_the_batches_that_raised_them(store: Store) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    put(store, evaluation.id, "a", warnings=["w1", "w1", "w2"])
    put(store, evaluation.id, "b", warnings=["w1"])
    put(store, evaluation.id, "a", warnings=["w1", "w3"])  # a replay counts nothing
    put(store, evaluation.id, "c")
    stored = store.get_evaluation(OWNER, evaluation.id)
    assert stored is not None and stored.warnings == {"w1": 2, "w2": 1}


def test_totals_are_exact_and_do_not_depend_on_the_order_of_batches(store: Store) -> None:
    ids = [f"batch-{n}" for n in range(12)]
    forward = store.create_evaluation(OWNER, {}, {})
    backward = store.create_evaluation(OWNER, {}, {})
    for batch_id in ids:
        put(store, forward.id, batch_id)
    for batch_id in reversed(ids):
        put(store, backward.id, batch_id)
    a, b = store.get_totals(OWNER, forward.id), store.get_totals(OWNER, backward.id)
    assert a is not None and b is not None
    assert a.values.keys() == b.values.keys() == {"loss_sum", "weight_sum", "confusion"}
    for name in ("loss_sum", "weight_sum"):
        assert bits(a.values[name]) == bits(b.values[name])
        parts = [batch_stats(batch_id)[name] for batch_id in ids]
        expected = [math.fsum(p[i] for p in parts) for i in range(parts[0].size)]
        assert a.values[name].tolist() == expected
    assert a.values["confusion"].dtype == np.int64
    confusions = np.stack([batch_stats(batch_id)["confusion"] for batch_id in ids])
    assert a.values["confusion"].tolist() == confusions.sum(axis=0).tolist()
    rebuilt = store.rebuild_totals(OWNER, backward.id)
    assert rebuilt is not None and rebuilt.evaluation.n_batches == 12
    assert all(bits(rebuilt.values[n]) == bits(a.values[n]) for n in a.values)


def test_an_evaluation_is_stamped_once_it_holds_the_write_lock(tmp_path: Path) -> None:
    """SQLite: an evaluation created while another writer holds the lock is stamped when
    it gets the lock, so that the list's order (newest first, as stored) is also that of
    ``created_at`` for evaluations created at once."""
    store = Store.open(None, tmp_path / "data", clock=lambda: datetime.now(UTC))
    blocker = sqlite3.connect(tmp_path / "data" / "evaluations.sqlite3", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with ThreadPoolExecutor(1) as pool:
            creating = pool.submit(store.create_evaluation, OWNER, {}, {})
            time.sleep(0.3)
            released = datetime.now(UTC)
            blocker.execute("COMMIT")
            created = creating.result(timeout=30)
    finally:
        blocker.close()
        store.dispose()
    assert created.created_at >= released


def test_evaluations_are_listed_newest_first_a_page_at_a_time(store: Store, clock: Clock) -> None:
    created = []
    for number in range(7):
        clock.advance(seconds=1)
        created.append(store.create_evaluation(OWNER, {}, {"n": str(number)}).id)
    store.create_evaluation("someone-else", {}, {})
    pages, cursor = [], None
    while True:
        page = store.list_evaluations(OWNER, limit=3, cursor=cursor)
        pages.append([e.id for e in page.items])
        if page.next is None:
            break
        cursor = page.next
    assert pages == [created[6:3:-1], created[3:0:-1], created[:1]]
    assert store.list_evaluations(OWNER, limit=7).next is None
    with pytest.raises(InvalidCursor, match="cursor"):
        store.list_evaluations(OWNER, cursor="not-a-cursor")
    put(store, created[0], "a")
    put(store, created[0], "b")
    batch_page = store.list_batches(OWNER, created[0], limit=1)
    assert batch_page is not None and batch_page.next is not None
    with pytest.raises(InvalidCursor, match="evaluations"):
        store.list_evaluations(OWNER, cursor=batch_page.next)  # another list's cursor
    for limit in (0, 1001):
        with pytest.raises(ValueError, match="1–1000"):
            store.list_evaluations(OWNER, limit=limit)


def test_batches_are_listed_in_arrival_order_a_page_at_a_time(store: Store) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    ids = [f"b-{n}" for n in (5, 3, 9, 1, 7, 2, 8)]
    for batch_id in ids:
        put(store, evaluation.id, batch_id)
    seen, cursor = [], None
    while True:
        page = store.list_batches(OWNER, evaluation.id, limit=3, cursor=cursor, with_stats=True)
        assert page is not None and len(page.items) <= 3
        for batch in page.items:
            assert batch.answer == answer_of(batch.batch_id) and batch.n_samples == 10
            assert batch.content_hash == content_hash(batch.batch_id)
            assert batch.stats is not None
            expected = batch_stats(batch.batch_id)
            assert all(bits(batch.stats[n]) == bits(expected[n]) for n in ("loss_sum",))
            assert batch.stats["confusion"].tolist() == expected["confusion"].tolist()
        seen += [(b.seq, b.batch_id) for b in page.items]
        if page.next is None:
            break
        cursor = page.next
    assert seen == list(enumerate(ids, start=1))
    plain = store.list_batches(OWNER, evaluation.id, limit=1000)
    assert plain is not None and plain.next is None and plain.items[0].stats is None
    with pytest.raises(InvalidCursor, match="batches"):
        store.list_batches(OWNER, evaluation.id, cursor="b-3")
    # A well-formed cursor past the 64-bit keys was never handed out: refused, not sent
    # to the database (whose integers it overflows).
    for position in (2**63, 10**19 - 1):
        past = encode_cursor("batches", position)
        with pytest.raises(InvalidCursor, match="batches"):
            store.list_batches(OWNER, evaluation.id, cursor=past)
        with pytest.raises(InvalidCursor, match="evaluations"):
            store.list_evaluations(OWNER, cursor=encode_cursor("evaluations", position))
    last = store.list_batches(OWNER, evaluation.id, cursor=encode_cursor("batches", 2**63 - 1))
    assert last is not None and last.items == [] and last.next is None


def test_expiry_deletes_what_was_not_updated_since(
    store: Store, clock: Clock, db: Database
) -> None:
    stale = store.create_evaluation(OWNER, {}, {})
    put(store, stale.id, "s1")
    kept_alive = store.create_evaluation("someone-else", {}, {})
    clock.advance(days=10)
    fresh = store.create_evaluation(OWNER, {}, {})
    clock.advance(days=10)
    # A new batch restarts the time-to-live.
    assert put(store, kept_alive.id, "k1", owner="someone-else").outcome is PutOutcome.CREATED
    clock.advance(days=15)
    assert store.expire(clock.now - timedelta(days=30)) == 1
    assert store.get_evaluation(OWNER, stale.id) is None
    assert store.get_evaluation(OWNER, fresh.id) is not None
    assert store.get_evaluation("someone-else", kept_alive.id) is not None
    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(batches)).scalar() == 1
    assert store.expire(clock.now - timedelta(days=30)) == 0
    assert store.expire(clock.now) == 2


def test_deleting_an_evaluation_deletes_its_batches(store: Store) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    other = store.create_evaluation(OWNER, {}, {})
    for batch_id in ("a", "b"):
        put(store, evaluation.id, batch_id)
        put(store, other.id, batch_id)
    assert store.delete_evaluation(OWNER, evaluation.id)
    assert store.get_evaluation(OWNER, evaluation.id) is None
    assert put(store, evaluation.id, "a").outcome is PutOutcome.NOT_FOUND
    assert not store.delete_evaluation(OWNER, evaluation.id)
    with store.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(batches)).scalar() == 2


def test_malformed_arguments_are_refused(store: Store) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    for batch_id in ("", "x" * 129, "a b", "a/b", "é"):
        with pytest.raises(ValueError, match="batch id"):
            store.put_batch(OWNER, evaluation.id, batch_id, b"h", {}, {}, 1)
    with pytest.raises(ValueError, match="content hash"):
        store.put_batch(OWNER, evaluation.id, "b", b"", {}, {}, 1)
    with pytest.raises(ValueError, match="n_samples"):
        store.put_batch(OWNER, evaluation.id, "b", b"h", {}, {}, -1)
    with pytest.raises(ValueError, match="owner"):
        store.create_evaluation("o" * 129, {}, {})
    with pytest.raises(ValueError, match="NaN"):
        store.put_batch(OWNER, evaluation.id, "b", b"h", {}, {"loss": math.nan}, 1)
    assert store.put_batch(OWNER, evaluation.id, "A.z_0:9-" * 16, b"h", {}, {}, 1).outcome == (
        PutOutcome.CREATED
    )


def test_threads_sharing_a_store_count_every_batch_once(store: Store) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    ids = [f"t-{n}" for n in range(24)]
    outcomes: list[PutOutcome] = []

    def work(order: list[str]) -> None:
        for batch_id in order:
            outcomes.append(put(store, evaluation.id, batch_id).outcome)

    threads = [threading.Thread(target=work, args=(ids[k:] + ids[:k],)) for k in (0, 8, 16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(PutOutcome.CREATED) == 24 and outcomes.count(PutOutcome.REPLAYED) == 48
    totals = store.get_totals(OWNER, evaluation.id)
    assert totals is not None and totals.evaluation.n_batches == 24
    rebuilt = store.rebuild_totals(OWNER, evaluation.id)
    assert rebuilt is not None
    assert all(bits(rebuilt.values[n]) == bits(totals.values[n]) for n in totals.values)


@contextlib.contextmanager
def commit_running(store: Store) -> Iterator[None]:
    """As if a commit ran until the block ends: puts made meanwhile queue for the next."""
    with store._commits._lock:
        yield


def _queued_puts(
    store: Store, calls: list[tuple[str, str, int]]
) -> tuple[list[threading.Thread], dict[str, PutResult | BaseException]]:
    """Start a thread per (evaluation, batch id, variant) put while a commit runs (see
    commit_running), and return once every put waits in the queue."""
    results: dict[str, PutResult | BaseException] = {}

    def work(evaluation_id: str, batch_id: str, variant: int, name: str) -> None:
        try:
            results[name] = put(store, evaluation_id, batch_id, variant)
        except BaseException as error:
            results[name] = error

    threads = [
        threading.Thread(target=work, args=(*call, f"{n}:{call[1]}"))
        for n, call in enumerate(calls)
    ]
    _start_queued(store, threads)
    return threads, results


def _start_queued(store: Store, threads: list[threading.Thread]) -> None:
    """Start ``threads`` (one put each) and return once every put waits in the queue."""
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(store._commits._queue) < len(threads):
        assert time.monotonic() < deadline, "the puts did not queue"
        time.sleep(0.005)


def test_puts_waiting_together_are_committed_together(store: Store) -> None:
    first = store.create_evaluation(OWNER, {}, {})
    second = store.create_evaluation(OWNER, {}, {})
    # Twelve puts, one batch id twice with the same content and one with other content.
    calls = [(first.id, f"g-{n}", 0) for n in range(6)] + [
        (second.id, f"g-{n}", 0) for n in range(4)
    ]
    calls += [(first.id, "g-0", 0), (second.id, "g-1", 1)]
    commits = store.commits
    with commit_running(store):
        threads, results = _queued_puts(store, calls)
        assert not results, "a put was answered before its commit"
    for thread in threads:
        thread.join()
    assert store.commits - commits == 1
    outcomes = sorted(r.outcome.value for r in results.values() if isinstance(r, PutResult))
    assert outcomes.count("created") == 10
    assert outcomes.count("replayed") == 1 and outcomes.count("conflict") == 1
    for evaluation, n in ((first, 6), (second, 4)):
        totals = store.get_totals(OWNER, evaluation.id)
        assert totals is not None and totals.evaluation.n_batches == n
        rebuilt = store.rebuild_totals(OWNER, evaluation.id)
        assert rebuilt is not None
        assert all(bits(rebuilt.values[k]) == bits(totals.values[k]) for k in totals.values)


def test_a_commit_takes_at_most_max_group_puts(db: Database) -> None:
    store = Store.open(db.url, db.data_dir, max_group=2)
    try:
        evaluation = store.create_evaluation(OWNER, {}, {})
        with commit_running(store):
            threads, results = _queued_puts(store, [(evaluation.id, f"m-{n}", 0) for n in range(5)])
        for thread in threads:
            thread.join()
        assert store.commits == 3
        assert all(
            isinstance(r, PutResult) and r.outcome is PutOutcome.CREATED for r in results.values()
        )
    finally:
        store.dispose()


def test_a_failed_group_commit_fails_every_put_in_it_and_stores_none(store: Store) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    # A row the store did not write takes the place (evaluation, seq 1) of the next
    # batch: the group's INSERT breaks the primary key, as a broken database would.
    with store.engine.begin() as connection:
        pk = connection.execute(
            select(evaluations.c.pk).where(evaluations.c.id == evaluation.id)
        ).scalar_one()
        intruder = {
            "evaluation_pk": pk,
            "seq": 1,
            "batch_id": "intruder",
            "content_hash": b"x",
            "n_samples": 1,
            "received_at": datetime.now(UTC),
            "answer": {},
            "stats": encode_arrays({}),
        }
        connection.execute(insert(batches).values(intruder))
    with commit_running(store):
        threads, results = _queued_puts(store, [(evaluation.id, f"f-{n}", 0) for n in range(4)])
    for thread in threads:
        thread.join()
    assert len(results) == 4
    assert all(isinstance(r, Exception) and "UNIQUE" in str(r).upper() for r in results.values())
    totals = store.get_totals(OWNER, evaluation.id)
    assert totals is not None and totals.evaluation.n_batches == 0
    page = store.list_batches(OWNER, evaluation.id)
    assert page is not None and [b.batch_id for b in page.items] == ["intruder"]
    with store.engine.begin() as connection:
        connection.execute(delete(batches).where(batches.c.batch_id == "intruder"))
    # Sent again, each is stored once (on a new connection: the failed one is gone).
    assert all(put(store, evaluation.id, f"f-{n}").outcome is PutOutcome.CREATED for n in range(4))
    totals = store.get_totals(OWNER, evaluation.id)
    assert totals is not None and totals.evaluation.n_batches == 4


@contextlib.contextmanager
def statements(store: Store) -> Iterator[list[tuple[str, Any]]]:
    """The SQL statements (and their parameters) the store runs inside the block."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, sql: str, parameters: Any, *_: Any) -> None:
        seen.append((sql, parameters))

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", record)


def query_plan(store: Store, sql: str, parameters: Any) -> str:
    """How the database runs ``sql``: SQLite's or PostgreSQL's plan, as text."""
    with store.engine.connect() as connection:
        raw = connection.connection.driver_connection
        assert raw is not None
        cursor = raw.cursor()
        if store.engine.dialect.name == "sqlite":
            rows = cursor.execute("EXPLAIN QUERY PLAN " + sql, parameters).fetchall()
            return "\n".join(str(row[-1]) for row in rows)
        cursor.execute("EXPLAIN " + sql, parameters)
        return "\n".join(str(row[0]) for row in cursor.fetchall())


def test_reading_an_evaluation_of_10000_batches_stays_cheap(store: Store) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    # Real puts first: the stored totals have the size they keep from then on.
    for number in range(50):
        put(store, evaluation.id, f"b-{number}")
    sizes = [len(_totals_blob(store, evaluation.id))]
    for number in range(50, 100):
        put(store, evaluation.id, f"b-{number}")
    sizes.append(len(_totals_blob(store, evaluation.id)))
    # The totals do not grow per batch: at most a 32-bit limb per float element when the
    # sums outgrow their top limb (a 2**32-fold growth), here 8 float elements.
    slack = 4 * 8
    assert sizes[1] <= sizes[0] + slack, "the running totals grow with the batches"
    # 9,900 more batch rows as put_batch stores them (put one by one they would take
    # the whole test budget); the running totals and counts are set to match.
    totals = ExactTotals()
    rows = []
    for number in range(10_000):
        stats = batch_stats(f"b-{number}")
        totals.add(ExactTotals.from_stats(stats))
        if number >= 100:
            rows.append(_batch_row(number, stats))
    with store.engine.begin() as connection:
        pk = connection.execute(select(evaluations.c.pk).where(evaluations.c.id == evaluation.id))
        evaluation_pk = pk.scalar_one()
        connection.execute(insert(batches), [{**r, "evaluation_pk": evaluation_pk} for r in rows])
        connection.execute(
            update(evaluations)
            .where(evaluations.c.pk == evaluation_pk)
            .values(n_batches=10_000, n_samples=100_000, totals=encode_totals(totals))
        )
    assert len(_totals_blob(store, evaluation.id)) <= sizes[0] + slack

    # What the reads cost is what they ask the database (no wall-clock limits: machines
    # are shared): the evaluation's results read its one row, never the batches; a page
    # of batches is read by the primary key (evaluation, seq), a page's worth of rows.
    with statements(store) as reading:
        store.get_totals(OWNER, evaluation.id)
    queries = [sql for sql, _ in reading if sql.startswith("SELECT")]
    assert len(queries) == 1 and " batches" not in queries[0], queries
    with statements(store) as paging:
        first = store.list_batches(OWNER, evaluation.id, limit=100)
    assert first is not None and len(first.items) == 100
    sql, parameters = next((q, p) for q, p in paging if "FROM batches" in q)
    assert "LIMIT" in sql
    plan = query_plan(store, sql, parameters)
    # An index search on (evaluation, seq), never a scan of every batch.
    sqlite_search = "SEARCH batches USING" in plan and "(evaluation_pk=? AND seq>?)" in plan
    postgres_search = "Index Cond: ((evaluation_pk = " in plan and "(seq > " in plan
    assert sqlite_search or postgres_search, plan
    read_back = store.get_totals(OWNER, evaluation.id)
    assert read_back is not None and read_back.evaluation.n_batches == 10_000
    assert bits(read_back.values["loss_sum"]) == bits(totals.values()["loss_sum"])
    # The next put adds to the kept totals, it does not go through the 10,000 batches.
    assert put(store, evaluation.id, "one-more").outcome is PutOutcome.CREATED
    page = store.list_batches(OWNER, evaluation.id, limit=1000)
    assert page is not None and page.next is not None


def _totals_blob(store: Store, evaluation_id: str) -> bytes:
    with store.engine.connect() as connection:
        blob = connection.execute(
            select(evaluations.c.totals).where(evaluations.c.id == evaluation_id)
        ).scalar_one()
    return bytes(blob)


def _batch_row(number: int, stats: dict[str, np.ndarray]) -> dict[str, object]:
    batch_id = f"b-{number}"
    return {
        "seq": number + 1,
        "batch_id": batch_id,
        "content_hash": content_hash(batch_id),
        "n_samples": 10,
        "received_at": datetime(2026, 1, 1, tzinfo=UTC),
        "answer": answer_of(batch_id),
        "stats": encode_arrays(stats),
    }


def test_a_group_larger_than_one_insert_is_inserted_in_parts(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.storage import statements

    monkeypatch.setattr(statements, "INSERT_ROWS", 3)
    evaluation = store.create_evaluation(OWNER, {}, {})
    commits = store.commits
    with commit_running(store):
        threads, results = _queued_puts(store, [(evaluation.id, f"p-{n}", 0) for n in range(7)])
    for thread in threads:
        thread.join()
    assert store.commits - commits == 1
    assert all(
        isinstance(r, PutResult) and r.outcome is PutOutcome.CREATED for r in results.values()
    )
    page = store.list_batches(OWNER, evaluation.id, limit=10)
    assert page is not None
    assert sorted(b.batch_id for b in page.items) == [f"p-{n}" for n in range(7)]
    assert [b.seq for b in page.items] == list(range(1, 8))


@contextlib.contextmanager
def _postgres_store(tmp_path: Path, **options: Any) -> Iterator[Store]:
    """A store on a fresh PostgreSQL schema (``options`` go to :meth:`Store.open`)."""
    with database("postgresql", tmp_path) as db:
        store = Store.open(db.url, db.data_dir, **options)
        try:
            yield store
        finally:
            store.dispose()


def _prepared_puts(store: Store) -> list[tuple[str, str]]:
    """The put statements prepared on the store's commit connection: name and text."""
    connection = store._commits._connection
    assert connection is not None
    rows = connection.driver_connection.execute(
        "SELECT name, statement FROM pg_prepared_statements WHERE name LIKE 'loss_service_put_%'"
    ).fetchall()
    connection.commit()
    return [(name, statement) for name, statement in rows]


def test_a_lost_postgresql_connection_is_replaced_and_the_group_committed(
    tmp_path: Path,
) -> None:
    import psycopg

    with _postgres_store(tmp_path) as store:
        evaluation = store.create_evaluation(OWNER, {}, {})
        assert put(store, evaluation.id, "before").outcome is PutOutcome.CREATED
        assert store._commits._connection is not None
        backend = store._commits._connection.driver_connection.info.backend_pid
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        # The commit thread's connection is gone: the next put is committed on a new one
        # (its statement prepared there).
        assert put(store, evaluation.id, "after").outcome is PutOutcome.CREATED
        assert store._commits._connection.driver_connection.info.backend_pid != backend
        # Gone again, now that its statement is prepared: the prepared run fails, the
        # put is committed on a third connection, which prepares it anew.
        backend = store._commits._connection.driver_connection.info.backend_pid
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        assert put(store, evaluation.id, "again").outcome is PutOutcome.CREATED
        assert store._commits._connection.driver_connection.info.backend_pid != backend
        totals = store.get_totals(OWNER, evaluation.id)
        assert totals is not None and totals.evaluation.n_batches == 3


def test_a_batch_stored_alone_reads_back_as_one_stored_after_a_read(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first put is stored after a read; the next ones (the evaluation written last)
    # alone: on PostgreSQL by libpq, with the parameters in its wire formats.
    evaluation = store.create_evaluation(OWNER, {}, {})
    alone = _alone(monkeypatch)
    answer = {"losses": {"z": 0.1, "a": 1e-300}, "warnings": [{"code": "é ✓"}], "n": 2**62}
    stats = batch_stats("x")
    stored = []
    for batch_id in ("read", "alone-1", "alone-2"):
        clock.advance(microseconds=123457)
        result = store.put_batch(
            OWNER, evaluation.id, batch_id, bytes(range(32)), stats, answer, 7, warnings=["w"]
        )
        assert result.outcome is PutOutcome.CREATED
        stored.append(clock.now)
    assert alone == ([1, 1] if store.engine.dialect.name == "postgresql" else [])
    page = store.list_batches(OWNER, evaluation.id, with_stats=True)
    assert page is not None and [b.batch_id for b in page.items] == ["read", "alone-1", "alone-2"]
    for batch, when in zip(page.items, stored, strict=True):
        assert batch.received_at == when and batch.content_hash == bytes(range(32))
        assert batch.n_samples == 7 and batch.answer == answer
        assert list(batch.answer["losses"]) == ["z", "a"]
        assert batch.stats is not None
        assert all(bits(batch.stats[k]) == bits(v) for k, v in stats.items())
    row = store.get_evaluation(OWNER, evaluation.id)
    assert row is not None and row.updated_at == stored[-1]
    assert row.warnings == {"w": 3} and row.n_samples == 21
    _exact(store, evaluation.id, 3)


def test_a_put_alone_whose_prepared_statement_went_prepares_it_again(tmp_path: Path) -> None:
    with _postgres_store(tmp_path) as store:
        evaluation = store.create_evaluation(OWNER, {}, {})
        for batch_id in ("a", "b"):
            assert put(store, evaluation.id, batch_id).outcome is PutOutcome.CREATED
        connection = store._commits._connection
        assert connection is not None and connection.info[PREPARED_KEY]
        # As psycopg does when one of its plans goes stale.
        connection.driver_connection.execute("DEALLOCATE ALL")
        connection.commit()
        assert put(store, evaluation.id, "c").outcome is PutOutcome.CREATED
        assert store._commits._connection is connection  # no failure: the same one
        _exact(store, evaluation.id, 3)


def test_a_put_alone_statement_deallocated_alone_is_prepared_again_the_others_kept(
    tmp_path: Path,
) -> None:
    with _postgres_store(tmp_path) as store:
        evaluation = store.create_evaluation(OWNER, {}, {})
        # Two statements prepared: one for a put that changes the warning counts.
        for batch_id, codes in (("a", ()), ("b", ()), ("w", ("w",))):
            outcome = put(store, evaluation.id, batch_id, warnings=codes).outcome
            assert outcome is PutOutcome.CREATED
        connection = store._commits._connection
        assert connection is not None and len(connection.info[PREPARED_KEY]) == 2
        (plain,) = [name for name, sql in _prepared_puts(store) if "warnings" not in sql]
        connection.driver_connection.execute(f'DEALLOCATE "{plain}"')
        connection.commit()
        assert put(store, evaluation.id, "c").outcome is PutOutcome.CREATED
        assert put(store, evaluation.id, "x", warnings=["w"]).outcome is PutOutcome.CREATED
        assert store._commits._connection is connection  # no failure: the same one
        _exact(store, evaluation.id, 5)


def test_a_put_alone_rolls_back_a_transaction_left_open_on_its_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _postgres_store(tmp_path) as store:
        evaluation = store.create_evaluation(OWNER, {}, {})
        alone = _alone(monkeypatch)
        for batch_id in ("a", "b"):
            assert put(store, evaluation.id, batch_id).outcome is PutOutcome.CREATED
        connection = store._commits._connection
        assert connection is not None
        # A transaction left open (as a failure between two statements would leave it):
        # inside it the statement would not commit on its own.
        connection.driver_connection.execute("SELECT 1")
        assert connection.driver_connection.pgconn.transaction_status != 0
        assert put(store, evaluation.id, "c").outcome is PutOutcome.CREATED
        assert alone == [1, 1]
        assert connection.driver_connection.pgconn.transaction_status == 0
        assert store._commits._connection is connection  # no failure: the same one
        # Committed: another connection reads it.
        _exact(store, evaluation.id, 3)


def test_a_connection_that_prepares_nothing_sends_every_put_alone_unnamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # psycopg's prepare_threshold=None: what a pooler that moves sessions needs.
    with _postgres_store(tmp_path, connect_args={"prepare_threshold": None}) as store:
        evaluation = store.create_evaluation(OWNER, {}, {})
        alone = _alone(monkeypatch)
        for batch_id in ("a", "b", "c"):
            assert put(store, evaluation.id, batch_id).outcome is PutOutcome.CREATED
        assert alone == [1, 1]
        connection = store._commits._connection
        assert connection is not None and not connection.info.get(PREPARED_KEY)
        assert _prepared_puts(store) == []
        _exact(store, evaluation.id, 3)


def test_a_put_alone_writes_json_with_the_engines_serializer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unescaped(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    with _postgres_store(tmp_path, json_serializer=unescaped) as store:
        evaluation = store.create_evaluation(OWNER, {}, {})
        alone = _alone(monkeypatch)
        for batch_id in ("read", "alone"):
            result = store.put_batch(
                OWNER, evaluation.id, batch_id, b"h", {}, {"é": [1, 2]}, 1, warnings=["é"]
            )
            assert result.outcome is PutOutcome.CREATED
        assert alone == [1]
        with store.engine.connect() as connection:
            texts = connection.execute(text("SELECT answer::text FROM batches ORDER BY seq")).all()
            warnings = connection.execute(text("SELECT warnings::text FROM evaluations"))
        # Stored as Core stores it (after a read) and as the serializer writes it.
        assert [t for (t,) in texts] == ['{"é":[1,2]}', '{"é":[1,2]}']
        assert warnings.scalar_one() == '{"é":2}'


def test_a_connection_prepares_the_statement_of_one_put_and_sends_groups_unnamed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _postgres_store(tmp_path) as store:
        evaluation = store.create_evaluation(OWNER, {}, {})
        alone = _alone(monkeypatch)
        assert put(store, evaluation.id, "first").outcome is PutOutcome.CREATED
        # Statements of 1, 2, 3 and 1 batches, then of 1 with the warnings changed.
        for size in (1, 2, 3, 1):
            with commit_running(store):
                threads, results = _queued_puts(
                    store, [(evaluation.id, f"{size}-{n}-{len(alone)}", 0) for n in range(size)]
                )
            for thread in threads:
                thread.join()
            assert all(r.outcome is PutOutcome.CREATED for r in results.values())
        assert put(store, evaluation.id, "w", warnings=["w"]).outcome is PutOutcome.CREATED
        assert alone == [1, 2, 3, 1, 1]
        # One prepared statement per set of changed columns, whatever the groups.
        connection = store._commits._connection
        assert connection is not None and len(connection.info[PREPARED_KEY]) == 2
        assert sorted(name for name, _ in _prepared_puts(store)) == sorted(
            n.decode() for n in connection.info[PREPARED_KEY]
        )
        _exact(store, evaluation.id, 9)


def test_a_commit_thread_that_died_is_started_again(store: Store) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    assert put(store, evaluation.id, "first").outcome is PutOutcome.CREATED
    # End the commit thread (as dispose does), then open the store again: it holds a
    # thread that is no longer alive.
    commits = store._commits
    dead, connection = commits._thread, commits._connection
    assert dead is not None and connection is not None
    with commits._wake:
        commits._disposed = True
        commits._wake.notify_all()
    dead.join(timeout=10)
    assert not dead.is_alive()
    with commits._wake:
        commits._disposed = False
    future = store.submit_batch(
        OWNER,
        evaluation.id,
        "second",
        content_hash("second", 0),
        batch_stats("second", 0),
        answer_of("second", 0),
        10,
    )
    assert future.result(timeout=30).outcome is PutOutcome.CREATED
    assert commits._thread is not dead and commits._thread.is_alive()
    # The connection outlives the thread in one process (a caller may be committing on
    # it): the new thread commits on it too.
    assert commits._connection is connection


def test_a_caller_that_may_wait_commits_its_own_put_when_no_commit_runs(store: Store) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})

    def submit(batch_id: str) -> Future[PutResult]:
        return store.submit_batch(
            OWNER,
            evaluation.id,
            batch_id,
            content_hash(batch_id, 0),
            batch_stats(batch_id, 0),
            answer_of(batch_id, 0),
            10,
            lead=True,
        )

    # No commit runs: the caller's own thread commits, the future is done on return.
    commits = store.commits
    assert submit("led").done()
    assert store.commits == commits + 1
    # A commit runs: the put waits in the queue for the commit thread.
    with commit_running(store):
        waiting = submit("queued")
        assert not waiting.done()
    assert waiting.result(timeout=30).outcome is PutOutcome.CREATED
    totals = store.get_totals(OWNER, evaluation.id)
    assert totals is not None and totals.evaluation.n_batches == 2


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The evaluations whose row a put's transaction locked and read, in order."""
    reads: list[str] = []
    locked = PutStatements.locked

    def counted(self: PutStatements, *args: Any) -> Any:
        reads.append(args[3])  # cursor, other cursor, owner, evaluation id, batch ids
        return locked(self, *args)

    monkeypatch.setattr(PutStatements, "locked", counted)
    return reads


def _alone(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batches of each PostgreSQL statement that stored an evaluation's puts alone."""
    alone: list[int] = []
    put_alone = PutStatements.put_alone

    def counted(self: PutStatements, *args: Any) -> int:
        alone.append(len(args[-1]))
        return put_alone(self, *args)

    monkeypatch.setattr(PutStatements, "put_alone", counted)
    return alone


def _exact(store: Store, evaluation_id: str, n_batches: int) -> None:
    totals = store.get_totals(OWNER, evaluation_id)
    assert totals is not None and totals.evaluation.n_batches == n_batches
    rebuilt = store.rebuild_totals(OWNER, evaluation_id)
    assert rebuilt is not None
    assert all(bits(rebuilt.values[k]) == bits(totals.values[k]) for k in totals.values)


def test_an_evaluation_the_store_wrote_last_takes_its_next_batches_without_a_read(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    reads = _reads(monkeypatch)
    for batch_id in ("a", "b", "c"):
        assert put(store, evaluation.id, batch_id).outcome is PutOutcome.CREATED
    assert reads == [evaluation.id]
    # A batch sent again breaks the insert: nothing is written, and the put is answered
    # after a read, as without the memory of the evaluation.
    assert put(store, evaluation.id, "b").outcome is PutOutcome.REPLAYED
    assert put(store, evaluation.id, "b", 1).outcome is PutOutcome.CONFLICT
    assert len(reads) == 3
    _exact(store, evaluation.id, 3)


@pytest.mark.parametrize("change", ["put", "close", "delete", "rebuild"])
def test_an_evaluation_another_process_changed_is_read_before_its_next_batch(
    db: Database, clock: Clock, change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two stores on one database, as two processes; the clock stands still, so only the
    # row's counts and status (and a rebuild's later time) tell a change.
    first = Store.open(db.url, db.data_dir, clock=clock)
    other = Store.open(db.url, db.data_dir, clock=clock, migrate=False)
    try:
        evaluation = first.create_evaluation(OWNER, {}, {})
        if change == "rebuild":
            # Totals damaged on disk: the first store reads them, and keeps what it wrote
            # on top of them in memory; the other store's rebuild repairs them.
            with first.engine.begin() as connection:
                connection.execute(
                    update(evaluations)
                    .where(evaluations.c.id == evaluation.id)
                    .values(totals=encode_totals(ExactTotals.from_stats(batch_stats("x", 0))))
                )
        assert put(first, evaluation.id, "a").outcome is PutOutcome.CREATED
        reads = _reads(monkeypatch)
        expected, batches = PutOutcome.CREATED, 2
        if change == "put":
            assert put(other, evaluation.id, "b").outcome is PutOutcome.CREATED
            expected, batches = PutOutcome.CREATED, 3
        elif change == "close":
            assert other.close_evaluation(OWNER, evaluation.id) is not None
            expected, batches = PutOutcome.CLOSED, 1
        elif change == "delete":
            assert other.delete_evaluation(OWNER, evaluation.id)
            expected = PutOutcome.NOT_FOUND
        else:
            assert other.rebuild_totals(OWNER, evaluation.id) is not None
        del reads[:]
        assert put(first, evaluation.id, "c").outcome is expected
        assert reads == [evaluation.id]
        if change != "delete":
            _exact(first, evaluation.id, batches)
    finally:
        first.dispose()
        other.dispose()


def test_the_memory_of_written_evaluations_keeps_to_its_bytes(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = Store.open(db.url, db.data_dir)
    try:
        sizing = probe.create_evaluation(OWNER, {}, {})
        put(probe, sizing.id, "a")
        with probe.engine.connect() as connection:
            size = len(
                connection.execute(
                    select(evaluations.c.totals).where(evaluations.c.id == sizing.id)
                ).scalar_one()
            )
    finally:
        probe.dispose()
    # (Totals grow a little with their batches: room for two is more than twice one.)
    for budget, evaluations_kept in ((0, 0), (size, 1), (4 * size, 2)):
        store = Store.open(db.url, db.data_dir, written_bytes=budget, migrate=False)
        try:
            first, second = (store.create_evaluation(OWNER, {}, {}) for _ in range(2))
            put(store, first.id, "a")
            put(store, second.id, "a")
            reads = _reads(monkeypatch)
            put(store, first.id, "b")
            put(store, second.id, "b")
            # The most recently written are kept; the first goes when one fits.
            assert len(reads) == {0: 2, 1: 1, 2: 0}[evaluations_kept], budget
            monkeypatch.undo()
        finally:
            store.dispose()


def test_queued_puts_of_an_evaluation_written_last_are_stored_together(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    assert put(store, evaluation.id, "first").outcome is PutOutcome.CREATED
    reads = _reads(monkeypatch)
    alone = _alone(monkeypatch)
    commits = store.commits
    with commit_running(store):
        threads, results = _queued_puts(store, [(evaluation.id, f"q-{n}", 0) for n in range(4)])
    for thread in threads:
        thread.join()
    assert store.commits - commits == 1 and reads == []
    # On PostgreSQL one statement, in autocommit, stores the four (one round trip).
    assert alone == ([4] if store.engine.dialect.name == "postgresql" else [])
    outcomes = [r.outcome if isinstance(r, PutResult) else r for r in results.values()]
    assert outcomes == [PutOutcome.CREATED] * 4
    _exact(store, evaluation.id, 5)


def test_a_group_of_several_evaluations_written_last_is_counted_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = (store.create_evaluation(OWNER, {}, {}) for _ in range(2))
    for evaluation in (first, second):
        assert put(store, evaluation.id, "a").outcome is PutOutcome.CREATED
    reads = _reads(monkeypatch)
    alone = _alone(monkeypatch)
    # Both evaluations in one commit, with a batch sent again and one with other content.
    calls = [(first.id, "b", 0), (second.id, "b", 0), (first.id, "a", 0), (second.id, "a", 1)]
    with commit_running(store):
        threads, results = _queued_puts(store, calls)
    for thread in threads:
        thread.join()
    outcomes = {name: r.outcome if isinstance(r, PutResult) else r for name, r in results.items()}
    assert outcomes == {
        "0:b": PutOutcome.CREATED,
        "1:b": PutOutcome.CREATED,
        "2:a": PutOutcome.REPLAYED,
        "3:a": PutOutcome.CONFLICT,
    }
    if store.engine.dialect.name == "postgresql":
        # One statement per evaluation only for a group of one: here each is read.
        assert alone == [] and sorted(set(reads)) == sorted([first.id, second.id])
    _exact(store, first.id, 2)
    _exact(store, second.id, 2)


def test_groups_of_several_evaluations_under_load_store_every_batch(store: Store) -> None:
    """Several evaluations fed at once by threads whose puts the commit thread groups. On
    PostgreSQL a group's statements are pipelined: the next evaluation's lock, read on
    the cursor that had sent this one's update, was answered with the update's result
    when that arrived meanwhile ("the last operation didn't produce records": every put
    of the group failed, a 500). Statistics as large as an AUC's make it likely."""
    rng = np.random.default_rng(12)
    evaluations = [store.create_evaluation(OWNER, {}, {}) for _ in range(4)]
    n_puts = 250
    failures: list[BaseException] = []

    def feed(evaluation_id: str) -> None:
        futures = []
        for k in range(n_puts):
            stats = {"tp": rng.random(200), "fp": rng.random(200), "n": np.int64(3)}
            digest = hashlib.sha256(f"{evaluation_id}{k}".encode()).digest()
            futures.append(store.submit_batch(OWNER, evaluation_id, f"b{k}", digest, stats, {}, 3))
        for future in futures:
            try:
                future.result()
            except BaseException as error:
                failures.append(error)

    threads = [threading.Thread(target=feed, args=(e.id,)) for e in evaluations]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    assert store.commits < 4 * n_puts  # some groups held several puts
    for evaluation in evaluations:
        _exact(store, evaluation.id, n_puts)


def test_the_memory_of_written_evaluations_drops_a_state_it_does_not_keep() -> None:
    memory = _WrittenLast(budget=100)
    key = ("owner", "evaluation")

    def state(size: int) -> _Written:
        return _Written({"pk": 1}, ExactTotals(), size)

    memory.remember(key, state(10))
    # A later write whose state is not kept (unknown, or over the budget) leaves nothing
    # of the earlier one: that state is no longer the row's.
    memory.remember(key, None)
    assert memory.recall(key) is None
    memory.remember(key, state(10))
    memory.remember(key, state(101))
    assert memory.recall(key) is None
    kept = state(60)
    memory.remember(key, state(50))
    memory.remember(("owner", "other"), kept)
    # The least recently written goes first when the budget is passed.
    assert memory.recall(key) is None
    assert memory.recall(("owner", "other")) is kept


def _put_total(store: Store, evaluation_id: str, batch_id: str, total: float) -> PutResult:
    """A batch whose statistics are a weighted sum ``w`` of ``total``, a count, and a
    per-class vector."""
    stats = {
        "w": np.float64(total),
        "n": np.int64(1),
        "per_class": np.array([total / 4, total / 4, total / 2]),
    }
    return store.put_batch(
        OWNER, evaluation_id, batch_id, content_hash(batch_id, 0), stats, {"b": batch_id}, 1
    )


def test_a_batch_that_would_take_a_running_total_past_the_limit_is_refused_unstored(
    store: Store,
) -> None:
    limit = STATISTIC_LIMIT  # 2**1000 ≈ 1.07e301
    evaluation = store.create_evaluation(OWNER, {}, {})
    assert _put_total(store, evaluation.id, "a", 6e300).outcome is PutOutcome.CREATED
    # A batch within the limit by itself, but not added to the first: a 422, nothing stored.
    with pytest.raises(InvalidInput) as refused:
        _put_total(store, evaluation.id, "b", 6e300)
    detail = refused.value.detail
    assert "running total `w` to 1.2e+301" in detail and "it was not stored" in detail
    assert "adding 6e+300 to a total of 6e+300" in detail and f"{limit:.3g}" in detail
    # The accepted batch is still answered as a replay; a batch that fits is stored.
    assert _put_total(store, evaluation.id, "a", 6e300).outcome is PutOutcome.REPLAYED
    assert _put_total(store, evaluation.id, "c", 4e300).outcome is PutOutcome.CREATED
    totals = store.get_totals(OWNER, evaluation.id)
    assert totals is not None and totals.evaluation.n_batches == 2
    assert totals.values["w"] == math.fsum([6e300, 4e300]) and int(totals.values["n"]) == 2
    _exact(store, evaluation.id, 2)
    # Batches of finite weights whose totals would overflow float64 never get in: the
    # totals are never read as infinity.
    huge = store.create_evaluation(OWNER, {}, {})
    for batch_id in ("x", "y"):
        with pytest.raises(InvalidInput, match="running total `w` to 1e\\+308"):
            _put_total(store, huge.id, batch_id, 1e308)
    totals = store.get_totals(OWNER, huge.id)
    assert totals is not None and totals.evaluation.n_batches == 0 and totals.values == {}


def test_puts_committed_together_are_each_checked_against_the_ones_before(
    store: Store,
) -> None:
    evaluation = store.create_evaluation(OWNER, {}, {})
    assert _put_total(store, evaluation.id, "first", 1e300).outcome is PutOutcome.CREATED
    results: dict[str, PutResult | BaseException] = {}

    def work(batch_id: str) -> None:
        try:
            results[batch_id] = _put_total(store, evaluation.id, batch_id, 4e300)
        except BaseException as error:
            results[batch_id] = error

    commits = store.commits
    with commit_running(store):
        threads = [threading.Thread(target=work, args=(f"g-{n}",)) for n in range(5)]
        _start_queued(store, threads)
    for thread in threads:
        thread.join()
    # One commit: 1e300 + 2 × 4e300 fit under 1.07e301, a third does not; the group goes
    # on past each refused put.
    assert store.commits - commits == 1
    created = [r for r in results.values() if isinstance(r, PutResult)]
    refused = [r for r in results.values() if isinstance(r, InvalidInput)]
    assert len(created) == 2 and len(refused) == 3, results
    assert all(r.outcome is PutOutcome.CREATED for r in created)
    totals = store.get_totals(OWNER, evaluation.id)
    assert totals is not None and totals.evaluation.n_batches == 3
    assert totals.values["w"] == math.fsum([1e300, 4e300, 4e300])
    _exact(store, evaluation.id, 3)


def test_a_batch_answer_is_serialized_once_and_stored_as_json_dumps_writes_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    import service.storage.engine as engine_module

    evaluation = store.create_evaluation(OWNER, {}, {})
    answer = {"losses": {"é": 0.25}, "n": 2**70 + 1, "pair": (1, 2)}
    assert put(store, evaluation.id, "first").outcome is PutOutcome.CREATED
    serialized: list[Any] = []
    real = engine_module.json.dumps

    def counted(value: Any, **options: Any) -> str:
        serialized.append(value)
        return real(value, **options)

    monkeypatch.setattr(engine_module.json, "dumps", counted)
    result = store.put_batch(OWNER, evaluation.id, "second", b"h", {}, answer, 1)
    monkeypatch.undo()
    assert result.outcome is PutOutcome.CREATED and result.batch is not None
    # Its text was made once, when the put was checked: the statement wrote that text.
    assert serialized == []
    assert result.batch.answer == {"losses": {"é": 0.25}, "n": 2**70 + 1, "pair": [1, 2]}
    with store.engine.connect() as connection:
        stored = connection.execute(
            text("SELECT answer FROM batches WHERE batch_id = 'second'")
        ).scalar_one()
    assert (json.loads(stored) if isinstance(stored, str) else stored) == result.batch.answer
    page = store.list_batches(OWNER, evaluation.id)
    assert page is not None and page.items[-1].answer == result.batch.answer
