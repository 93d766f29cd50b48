"""Group commits of puts: a store's committer (see :mod:`service.storage.store`).

A put is handed to the committer (:meth:`Committer.submit` returns a future). A caller
that may block (a pool thread, not an event loop's) commits it itself when no commit
runs; otherwise the commit thread does: while one commit runs, new puts queue, and the
next transaction stores all of them (up to ``max_group``), in the order of their
evaluations' keys (so that processes sharing a database lock rows in one order). One
commit (one fsync) acknowledges every put in it. No put is answered before the commit
that stored it; if the transaction fails, each of its puts gets the error (a batch is
idempotent: its caller sends it again). A new batch that would take one of its
evaluation's running totals past ``STATISTIC_LIMIT`` (checked against the totals as the
group's batches before it leave them, see :class:`~service.storage.exact.Headroom`) is
not stored: its put alone gets the 422, the group goes on.

Each evaluation of a group is written one of two ways (:mod:`service.storage.statements`,
on the driver's cursor):

* after a read: its row locked and read, the batches stored under the group's ids read,
  the new ones inserted, the row's totals and counts updated;
* as written last: when this committer wrote the evaluation last and keeps it as it left
  it (:class:`_WrittenLast`), the row is updated by a statement that fails unless the
  row is still as written, and the new batches inserted; on PostgreSQL both are one
  statement, run with no transaction open, so that it commits alone (one round trip).
  If the row changed (another process wrote it, it was closed, rebuilt or deleted) or a
  batch id is stored, nothing is written and the group is stored after a read.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NoReturn, cast

from sqlalchemy import Engine, PoolProxiedConnection

from service.errors import FieldError, InvalidInput
from service.kernels.stats import STATISTIC_LIMIT
from service.storage.blobs import decode_totals, encode_totals
from service.storage.exact import ExactTotals, Headroom, Overflow
from service.storage.rows import (
    BatchRow,
    PutOutcome,
    PutResult,
    batch_row,
    evaluation_row,
    owner_key,
)
from service.storage.statements import CHANGED, INSERT_ROWS, PutStatements

log = logging.getLogger(__name__)

#: What a put comes to: its result, or the 422 of a batch that would take the
#: evaluation's totals past :data:`STATISTIC_LIMIT` (nothing stored).
Answer = PutResult | InvalidInput
#: What a put checks of the running totals with its batch, beyond their size (see
#: :class:`Put`): given a reader of each float statistic's total, a refusal's message
#: (the batch is then not stored) or ``None``.
Guard = Callable[[Callable[[str], Any]], str | None]


@dataclass(eq=False)
class Put:
    """A batch ready to be stored, waiting for the transaction that commits it."""

    owner: str | None
    evaluation_id: str
    batch_id: str
    content_hash: bytes
    n_samples: int
    totals: ExactTotals
    stats_blob: bytes
    answer: dict[str, Any]
    facts: dict[str, Any] | None
    codes: list[str]
    #: Whether the running totals with this batch still give results that can be read
    #: (a message if not): given a reader of each statistic's total with the batch.
    guard: Guard | None = None
    future: Future[PutResult] = field(default_factory=Future)


@dataclass(eq=False)
class _Written:
    """An evaluation as this process's last commit left it: its row's columns but the
    totals, and the totals decoded (``size``: their bytes as stored)."""

    state: dict[str, Any]
    totals: ExactTotals
    size: int


class _WrittenLast:
    """The evaluations a committer wrote last, as it left them, the most recent last,
    within ``budget`` bytes of totals as stored (held in memory they take up to about
    twice that; the least recently written go first). A transaction takes an
    evaluation out (:meth:`recall`) and puts it back once committed (:meth:`remember`);
    :meth:`forget` comes from any thread."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._size = 0
        self._kept: OrderedDict[tuple[str, str], _Written] = OrderedDict()
        self._lock = threading.Lock()

    def _pop(self, key: tuple[str, str]) -> _Written | None:
        gone = self._kept.pop(key, None)
        if gone is not None:
            self._size -= gone.size
        return gone

    def forget(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._pop(key)

    def recall(self, key: tuple[str, str]) -> _Written | None:
        with self._lock:
            return self._pop(key)

    def remember(self, key: tuple[str, str], left: _Written | None) -> None:
        """Keep ``left`` as the evaluation's state (``None``: keep nothing of it)."""
        with self._lock:
            self._pop(key)
            if left is None or left.size > self._budget:
                return
            self._kept[key] = left
            self._size += left.size
            while self._size > self._budget:
                _, oldest = self._kept.popitem(last=False)
                self._size -= oldest.size


class _Stale(Exception):
    """A transaction that wrote an evaluation as last written found it changed."""


def _changes(before: dict[str, Any], after: dict[str, Any], totals: bytes) -> dict[str, Any]:
    """What puts changed of an evaluation written last: counts, time and totals, and its
    warnings and facts if they changed (not written again: each is a JSON document)."""
    changes = {key: after[key] for key in ("n_batches", "n_samples", "updated_at")}
    for key in ("warnings", "facts"):
        if after[key] is not before[key] and after[key] != before[key]:
            changes[key] = after[key]
    changes["totals"] = totals
    return changes


def _added(
    state: dict[str, Any], totals: ExactTotals, created: list[ExactTotals]
) -> tuple[_Written, bytes]:
    """The evaluation as its new batches leave it (``created`` added to ``totals``), and
    its totals as stored."""
    totals.add_all(created)
    blob = encode_totals(totals)
    return _Written(state, totals, len(blob)), blob


def _refusal(overflow: Overflow) -> InvalidInput:
    """The 422 of a batch that :class:`Headroom` did not admit."""
    reach = f"to {overflow.size:.3g}" if math.isfinite(overflow.size) else "past float64's range"
    message = (
        f"The batch would take the evaluation's running total `{overflow.name}` {reach} "
        f"(the sum of its elements' magnitudes), past the {STATISTIC_LIMIT:.3g} (2**1000) "
        "within which the evaluation's results are computed without float64 overflowing; "
        "it was not stored. Expected batches whose weighted sums (`sample_weight` times "
        f"the batch's values) keep every running total below {STATISTIC_LIMIT:.3g}; "
        f"received a batch adding {overflow.added:.3g} to a total of "
        f"{overflow.before:.3g} from the batches accepted before it."
    )
    return InvalidInput(message, [FieldError(("body",), message)])


def _evaluation_key(put: Put) -> tuple[str, str]:
    return owner_key(put.owner), put.evaluation_id


class _BrokenConnection(Exception):
    """The commit thread's connection was lost during a transaction."""


class Committer:
    """The commit thread of one store, started by the first put (of each process), and
    its connection: one of the engine's pool, kept while it works, replaced after any
    failure. ``forget(owner, evaluation_id)`` is called for an evaluation found gone."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_group: int,
        clock: Callable[[], datetime],
        forget: Callable[[str | None, str], None],
        written_bytes: int = 0,
    ) -> None:
        if max_group < 1:
            raise ValueError(f"a commit takes at least one batch; received {max_group}")
        self.engine = engine
        self._max_group = max_group
        self._clock = clock
        self._forget = forget
        # Puts waiting for the thread, which holds _lock while it commits a group.
        self._queue: deque[Put] = deque()
        self._wake = threading.Condition()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._disposed = False
        self._connection: PoolProxiedConnection | None = None
        self._statements = PutStatements(engine.dialect)
        # Evaluations this process wrote last: their next group is written with no lock
        # or read before (see _put_written).
        self._written = _WrittenLast(written_bytes)
        #: Transactions of puts committed so far (each holds one group).
        self.commits = 0

    def submit(self, put: Put, *, lead: bool = False) -> Future[PutResult]:
        """Queue ``put``; its future is done once committed.

        With ``lead`` (a caller that may block: never an event loop's thread), when no
        commit is running the caller commits the queue itself, its own put with it, and
        finds the future done on return: no hand-over to the commit thread and back, and
        no waking of a thread that slept. Otherwise the commit thread stores it, with
        the puts that queued meanwhile."""
        with self._wake:
            if self._disposed:
                raise RuntimeError("the store is disposed: it stores no more batches")
            self._queue.append(put)
            pid = os.getpid()
            if self._thread is None or self._pid != pid or not self._thread.is_alive():
                # The first put of this process (a forked child has no commit thread), or
                # the thread ended.
                self._thread = threading.Thread(
                    target=self._commit_queued, name="loss-service-commit", daemon=True
                )
                if self._pid != pid:
                    # A parent process's connection is not this one's (a forked child has
                    # no other thread: nobody is using it here). After a thread ended,
                    # the connection stays: a caller may be committing on it.
                    self._connection = None
                self._pid = pid
                self._thread.start()
            if not lead:
                self._wake.notify()
        if lead:
            if self._lock.acquire(blocking=False):
                try:
                    self._commit(self._take())
                finally:
                    self._lock.release()
            with self._wake:
                # A commit was running (its holder leaves the queue to the thread), or
                # more puts queued than one group takes.
                if self._queue:
                    self._wake.notify()
        return put.future

    def _take(self) -> list[Put]:
        """The next group: up to ``max_group`` queued puts, in their order of arrival."""
        with self._wake:
            return [self._queue.popleft() for _ in range(min(self._max_group, len(self._queue)))]

    def dispose(self) -> None:
        """Commit the puts already queued, stop the thread, give its connection back."""
        with self._wake:
            self._disposed = True
            thread = self._thread
            self._wake.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
            # A leading caller may still be committing on the connection.
            with self._lock:
                self._close()
        else:
            self._close()

    def _close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.close()
        self._connection = None

    def _commit_queued(self) -> None:
        """The commit thread: take up to ``max_group`` queued puts, store them in one
        transaction, answer them; again, until the store is disposed and the queue is
        empty."""
        while True:
            with self._wake:
                while not self._queue and not self._disposed:
                    self._wake.wait()
                if not self._queue:
                    return
            with self._lock:
                # A leading caller may have committed the puts that woke the thread.
                self._commit(self._take())

    def _commit(self, group: list[Put]) -> None:
        """One transaction for ``group``, its puts in the order of their evaluations' keys
        (so that processes sharing a database lock rows in one order); each put's future
        gets its result once committed, or the error. Called with ``_lock`` held."""
        if not group:
            return
        ordered = sorted(group, key=_evaluation_key)
        try:
            try:
                results = self._attempt(ordered)
            except _BrokenConnection as broken:
                # The connection was lost (a database restarted, a network cut): once more
                # on a new one. Safe even if the lost commit had landed: the batches are
                # then found stored, and answered as replays, counted once.
                log.warning("the store's connection broke; the group is tried again: %s", broken)
                results = self._attempt(ordered)
        except BaseException as error:
            # Whatever this group met, the commit thread goes on with the next one.
            if isinstance(error, _BrokenConnection) and error.__cause__ is not None:
                error = error.__cause__
            for put in ordered:
                put.future.set_exception(error)
            return
        self.commits += 1
        for put, result in zip(ordered, results, strict=True):
            if isinstance(result, InvalidInput):
                put.future.set_exception(result)
            else:
                put.future.set_result(result)

    def _attempt(self, ordered: list[Put]) -> list[Answer]:
        """The group's transaction, the evaluations this process wrote last written as it
        left them; if one of them had changed since (another process wrote it, or it was
        closed, deleted, rebuilt, or a batch id was stored), nothing is written and the
        group runs again, every evaluation locked and read first."""
        key = _evaluation_key(ordered[0])
        if self._statements.alone:
            # PostgreSQL: a group of one evaluation (the group is sorted by key) written
            # last is one statement. A group of several is stored after a read: in its
            # pipeline, a failed assertion would abort every statement after it.
            known = self._written.recall(key) if _evaluation_key(ordered[-1]) == key else None
            if known is not None:
                done = self._put_alone(ordered, known)
                if done is not None:
                    return done
            return self._transaction(ordered, written=False)
        try:
            return self._transaction(ordered, written=True)
        except _Stale:
            return self._transaction(ordered, written=False)

    def _put_alone(self, puts: list[Put], known: _Written) -> list[Answer] | None:
        """PostgreSQL: the puts of one evaluation that this process wrote last, as
        :meth:`_put_written` writes them, by one statement that commits alone (one round
        trip, its commit included). ``None`` when nothing was written: not every put is a
        new batch, the row changed or is gone, a batch id is stored (then the group is
        stored after a read). Up to ``INSERT_ROWS`` puts (more go the other way)."""
        applied = None if len(puts) > INSERT_ROWS else self._apply_written(puts, known)
        if applied is None:
            return None
        results, new, left, changes = applied
        if self._connection is None:
            self._connection = self.engine.raw_connection()
        connection = self._connection
        try:
            # The statement commits alone when no transaction is open: one left open (by a
            # failure) is rolled back first. Asked of libpq: the driver's own rollback
            # costs tens of µs of interpreter time even when it has nothing to send.
            if self._statements.in_transaction(connection):
                connection.rollback()
            stored = self._statements.put_alone(
                connection, left.state["pk"], known.state, changes, new
            )
        except Exception as failure:
            integrity = self._integrity_error
            if integrity is not None and isinstance(failure, integrity):
                return None  # the statement failed whole: nothing was written
            self._lost(connection, failure)
        if stored != len(new):
            return None  # the evaluation is gone
        self._written.remember(_evaluation_key(puts[0]), left)
        return results

    def _lost(self, connection: PoolProxiedConnection, error: Exception) -> NoReturn:
        """After a failure on the connection: roll back, and never use it again (a new one
        starts clean); ``_BrokenConnection`` (its cause ``error``) when it was lost."""
        self._connection = None
        broken = bool(getattr(connection.driver_connection, "broken", False))
        with contextlib.suppress(Exception):
            connection.rollback()
        with contextlib.suppress(Exception):
            connection.invalidate()
        if broken:
            raise _BrokenConnection(str(error)) from error
        raise error

    def _transaction(self, ordered: list[Put], *, written: bool) -> list[Answer]:
        """The group's transaction on the commit thread's connection; after a failure it
        is rolled back and that connection is not used again (a new one starts clean),
        unless an evaluation written as last written had changed (``_Stale``: the
        connection is fine). ``_BrokenConnection`` (its cause the driver's error) when the
        connection itself was lost."""
        if self._connection is None:
            self._connection = self.engine.raw_connection()
        connection = self._connection
        cursors: list[Any] = []

        def fresh() -> Any:
            cursors.append(connection.cursor())
            return cursors[-1]

        leaving: dict[tuple[str, str], _Written | None] = {}
        as_written = False
        try:
            with self._statements.pipeline(connection):
                self._statements.begin(fresh())
                results: list[Answer] = []
                for key, each in itertools.groupby(ordered, key=_evaluation_key):
                    puts = list(each)
                    known = self._written.recall(key) if written else None
                    leaving[key] = None
                    as_written = as_written or known is not None
                    # Cursors of its own for each evaluation: in PostgreSQL's pipeline mode
                    # a cursor's results arrive in the order its statements were sent, and
                    # the lock of the next evaluation, read on the cursor that sent this
                    # one's update, could be answered with that update's result.
                    cursor, other = fresh(), fresh()
                    fast = None if known is None else self._put_written(cursor, puts, known)
                    done, left = fast if fast is not None else self._put_in(cursor, other, puts)
                    results += done
                    leaving[key] = left
                connection.commit()
        except Exception as error:
            for key in leaving:
                self._written.forget(key)
            integrity = self._integrity_error
            if as_written and integrity is not None and isinstance(error, integrity):
                try:
                    connection.rollback()
                except Exception:
                    pass  # then the connection goes, as after any other failure
                else:
                    raise _Stale() from error
            self._lost(connection, error)
        finally:
            for each_cursor in cursors:
                with contextlib.suppress(Exception):
                    each_cursor.close()
        for key, left in leaving.items():
            self._written.remember(key, left)
        return results

    # -- evaluations written last ------------------------------------------------------

    @property
    def _integrity_error(self) -> type[Exception] | None:
        dbapi = self.engine.dialect.dbapi
        return None if dbapi is None else cast(type[Exception], dbapi.IntegrityError)

    def forget(self, owner: str, evaluation_id: str) -> None:
        """Write the evaluation's next group after a lock and a read (it changed, or is
        about to, elsewhere than in this committer). ``owner``: its key."""
        self._written.forget((owner, evaluation_id))

    def _put_written(
        self, cursor: Any, puts: list[Put], known: _Written
    ) -> tuple[list[Answer], _Written] | None:
        """The puts of an evaluation that this process wrote last, as ``known`` holds it,
        written with no lock or read before: new batches inserted, the totals added and
        the row updated by a statement that fails if the row is no longer as written
        (see :meth:`PutStatements.update_written`), as does the insert of a batch id
        stored since. ``None`` (nothing written) unless every put is a new batch (see
        :meth:`_apply_written`)."""
        applied = self._apply_written(puts, known)
        if applied is None:
            return None
        results, new, left, changes = applied
        sql = self._statements
        # The row first: its update locks it. Inserting first would take the share lock
        # of the batches' foreign key, and two processes holding it would each wait for
        # the other's to update the row (PostgreSQL: a deadlock).
        sql.update_written(cursor, left.state["pk"], known.state, changes)
        sql.insert(cursor, new)
        return results, left

    def _apply_written(
        self, puts: list[Put], known: _Written
    ) -> tuple[list[Answer], list[dict[str, Any]], _Written, dict[str, Any]] | None:
        """The puts applied to their evaluation as this process wrote it last: their
        results, the batches' new rows, the evaluation as they leave it, and what they
        change of its row. ``None`` unless each is a new batch (and each id comes once):
        the others are answered after a read."""
        if len({put.batch_id for put in puts}) != len(puts):
            return None
        state = dict(known.state)
        new: list[dict[str, Any]] = []
        created: list[ExactTotals] = []
        room = Headroom(known.totals, STATISTIC_LIMIT)
        results = [self._put_one(put, state, {}, new, created, room) for put in puts]
        if any(
            not isinstance(result, PutResult) or result.outcome is not PutOutcome.CREATED
            for result in results
        ):
            return None
        # known was taken out of the memory of written evaluations: if its transaction
        # fails, what is added here is forgotten with it.
        left, blob = _added(state, known.totals, created)
        return results, new, left, _changes(known.state, state, blob)

    def _put_in(
        self, cursor: Any, other: Any, puts: list[Put]
    ) -> tuple[list[Answer], _Written | None]:
        """The puts of one evaluation inside the group's transaction (see
        :meth:`Store.put_batch`), each answered as if they had come one after the other: the
        evaluation's row is locked and read once, the batches stored under the group's
        ids read by one statement, the new ones inserted by one, and the evaluation's
        totals and counts written by one (``other``: a second cursor, for the stored
        batches). Few statements matter: each gives the interpreter lock away while the
        database works, and waits to get it back."""
        first = puts[0]
        sql = self._statements
        row, found = sql.locked(
            cursor,
            other,
            owner_key(first.owner),
            first.evaluation_id,
            sorted({put.batch_id for put in puts}),
        )
        if row is None:
            self._forget(first.owner, first.evaluation_id)
            return [PutResult(PutOutcome.NOT_FOUND, None, None) for _ in puts], None
        state = {k: v for k, v in row.items() if k != "totals"}
        stored = {known["batch_id"]: known for known in found}
        new: list[dict[str, Any]] = []
        created: list[ExactTotals] = []
        # The totals are decoded only if a batch is new.
        room = Headroom(lambda: decode_totals(row["totals"]), STATISTIC_LIMIT)
        results = [self._put_one(put, state, stored, new, created, room) for put in puts]
        if not new:
            return results, None
        sql.insert(cursor, new)
        left, blob = _added(state, room.totals(), created)
        sql.update(cursor, row["pk"], {**{k: state[k] for k in CHANGED}, "totals": blob})
        # Written, and open (it took new batches): its next group needs no lock or read.
        return results, left

    def _put_one(
        self,
        put: Put,
        state: dict[str, Any],
        stored: dict[str, dict[str, Any]],
        new: list[dict[str, Any]],
        created: list[ExactTotals],
        room: Headroom,
    ) -> Answer:
        """One put against the evaluation as ``state`` holds it and the batches ``stored``
        under the group's ids; a new batch joins ``new`` (its row), ``created`` (its
        totals) and ``stored``, and updates ``state``. A new batch that would take a
        running total past :data:`STATISTIC_LIMIT` (its evaluation's totals plus the
        group's batches before it, as ``room`` counts them) is refused, not stored."""
        known = stored.get(put.batch_id)
        if known is not None:
            # A batch it accepted is answered as first stored, closed evaluation or not.
            batch = batch_row({**known, "stats": None})
            same = secrets.compare_digest(batch.content_hash, put.content_hash)
            outcome = PutOutcome.REPLAYED if same else PutOutcome.CONFLICT
            return PutResult(outcome, batch, evaluation_row(state))
        if state["status"] == "closed":
            return PutResult(PutOutcome.CLOSED, None, evaluation_row(state))
        facts = state["facts"]
        if put.facts is not None and facts is not None and facts != put.facts:
            return PutResult(PutOutcome.MISMATCH, None, evaluation_row(state))
        if put.guard is not None:
            problem = put.guard(lambda name: room.read(name, put.totals))
            if problem is not None:
                return InvalidInput(problem, [FieldError(("body",), problem)])
        overflow = room.admit(put.totals)
        if overflow is not None:
            return _refusal(overflow)
        now = self._clock()
        seq = int(state["n_batches"]) + 1
        through = int(state["n_samples"]) + put.n_samples
        row = {
            "evaluation_pk": state["pk"],
            "seq": seq,
            "batch_id": put.batch_id,
            "content_hash": put.content_hash,
            "n_samples": put.n_samples,
            "received_at": now,
            "answer": put.answer,
            "stats": put.stats_blob,
            "samples_through": through,
        }
        new.append(row)
        created.append(put.totals)
        stored[put.batch_id] = row
        counts = dict(state["warnings"])
        for code in put.codes:
            counts[code] = counts.get(code, 0) + 1
        state.update(
            n_batches=seq,
            n_samples=through,
            updated_at=now,
            warnings=counts,
            facts=facts if facts is not None else put.facts,
        )
        batch = BatchRow(
            put.batch_id,
            seq,
            put.content_hash,
            int(put.n_samples),
            now,
            put.answer,
            samples_through=through,
        )
        return PutResult(PutOutcome.CREATED, batch, evaluation_row(state))
