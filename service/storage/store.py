"""The evaluation store: what the HTTP layer calls to keep streaming evaluations.

A :class:`Store` wraps one engine (:mod:`service.storage.engine`) and is safe
to share between threads; every method is one transaction, committed (and on
disk) before it returns. Several processes and hosts may use one database at
once.

Ownership: every method takes the ``owner`` of the caller, an opaque string
(a hash of the API key; ``None`` or ``""`` when the service runs without
keys). Another owner's evaluation behaves exactly as if it did not exist.

Concurrency of :meth:`Store.put_batch`: every put takes the evaluation's row
lock (``SELECT ... FOR UPDATE`` on PostgreSQL; the database's write lock, taken
by ``BEGIN IMMEDIATE``, on SQLite). Under that lock it reads which of its batch
ids are stored already (every writer of an evaluation's batches holds its lock, so
nobody adds one meanwhile; the unique ``(evaluation, batch_id)`` would refuse it),
inserts the new batches and updates the running totals and counts in the same
transaction. So of many concurrent puts of one batch id exactly one creates it, the
others read it back as a replay (or a conflict), and no update of the totals is
lost.

Group commits: puts are committed by the store's commit thread. While it commits,
new puts queue; its next transaction stores all of them (up to ``max_group``), each
evaluation's row locked, read and updated once, its new batches inserted by one
statement; one commit (one fsync) then acknowledges every one of them. No put is
answered before the commit that stored it. :meth:`Store.submit_batch` hands a put to
that thread and returns a future (an event loop awaits it without a thread of its
own); :meth:`Store.put_batch` waits for it.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from numpy.typing import ArrayLike
from sqlalchemy import Engine, PoolProxiedConnection, and_, bindparam, delete, select, update

from service.storage.blobs import decode_arrays, decode_totals, encode_arrays, encode_totals
from service.storage.engine import DEFAULT_BUSY_TIMEOUT, make_engine, writer
from service.storage.exact import ExactTotals
from service.storage.migrate import upgrade
from service.storage.rows import (
    BATCH_ID,
    BatchRow,
    EvaluationRow,
    Page,
    PutOutcome,
    PutResult,
    Setup,
    Totals,
    decode_cursor,
    encode_cursor,
)
from service.storage.schema import HASH_LENGTH, OWNER_LENGTH, batches, evaluations
from service.storage.statements import PutStatements

log = logging.getLogger(__name__)

#: Evaluations whose settings a store keeps in memory (see :meth:`Store.get_setup`).
DEFAULT_SETUP_CACHE = 1024
#: Puts that one transaction may commit together (see :meth:`Store.put_batch`).
DEFAULT_MAX_GROUP = 64
#: Largest page of a list.
MAX_LIMIT = 1000
#: Evaluations deleted per transaction by :meth:`Store.expire`.
EXPIRE_CHUNK = 500

_EVALUATION_COLUMNS = [c for c in evaluations.c if c.key != "totals"]
_BATCH_COLUMNS = [c for c in batches.c if c.key != "stats"]

# Statements built once (a put runs them all; building them costs more than running them),
# with parameters "key_owner" and "key_id" for the evaluation (see _key).
_MINE = and_(
    evaluations.c.id == bindparam("key_id"),
    evaluations.c.owner == bindparam("key_owner"),
)
_UPDATE_EVALUATION = update(evaluations).where(evaluations.c.pk == bindparam("row_pk"))
#: What a put changes of its evaluation's row, besides the totals.
_CHANGED = ("n_batches", "n_samples", "updated_at", "warnings", "facts")


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    """An evaluation id: 32 hex digits of 128 random bits."""
    return secrets.token_hex(16)


class Store:
    """Streaming evaluations and their batches in a database (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = utc_now,
        setup_cache: int = DEFAULT_SETUP_CACHE,
        max_group: int = DEFAULT_MAX_GROUP,
    ) -> None:
        if max_group < 1:
            raise ValueError(f"a commit takes at least one batch; received {max_group}")
        self.engine = engine
        self._writer = writer(engine)
        self._clock = clock
        # (owner, id) -> (config, facts) of evaluations whose facts are fixed: neither
        # changes after that, so a put needs no read of its own to evaluate a batch.
        self._setups: OrderedDict[tuple[str, str], Setup] = OrderedDict()
        self._setups_lock = threading.Lock()
        self._setup_cache = setup_cache
        # Puts waiting for the commit thread (see submit_batch), which holds _commit_lock
        # while it commits a group.
        self._queue: deque[_Put] = deque()
        self._wake = threading.Condition()
        self._commit_lock = threading.Lock()
        self._committer: threading.Thread | None = None
        self._committer_pid = 0
        self._disposed = False
        self._max_group = max_group
        # The commit thread's own connection (the driver's, from the engine's pool) and
        # statements; see service.storage.statements.
        self._connection: PoolProxiedConnection | None = None
        self._statements = PutStatements(engine.dialect)
        #: Transactions of puts committed so far (each holds one group).
        self.commits = 0

    @classmethod
    def open(
        cls,
        url: str | None,
        data_dir: Path,
        *,
        migrate: bool = True,
        clock: Callable[[], datetime] = utc_now,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        setup_cache: int = DEFAULT_SETUP_CACHE,
        max_group: int = DEFAULT_MAX_GROUP,
        **options: Any,
    ) -> Store:
        """A store on ``url`` (default: ``evaluations.sqlite3`` in ``data_dir``).

        With ``migrate`` the schema is upgraded to the latest revision first
        (safe when several processes start at once). ``setup_cache``: how many
        evaluations' settings :meth:`get_setup` keeps in memory; ``max_group``: how
        many puts one transaction may commit together. ``options`` go to
        :func:`sqlalchemy.create_engine`.
        """
        engine = make_engine(url, data_dir, busy_timeout=busy_timeout, **options)
        try:
            if migrate:
                upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, clock=clock, setup_cache=setup_cache, max_group=max_group)

    def dispose(self) -> None:
        """Commit the puts already handed over, stop the commit thread and close the
        engine's pooled connections. Puts handed over after this are refused."""
        with self._wake:
            self._disposed = True
            committer = self._committer
            self._wake.notify_all()
        if committer is not None and committer is not threading.current_thread():
            committer.join()
        if self._connection is not None and self._committer_pid == os.getpid():
            self._connection.close()
        self._connection = None
        self.engine.dispose()

    # -- evaluations ----------------------------------------------------------------

    def create_evaluation(
        self, owner: str | None, config: Mapping[str, Any], metadata: Mapping[str, Any]
    ) -> EvaluationRow:
        """A new, open evaluation with no batches, under a new unguessable id."""
        now = self._clock()
        values = {
            "id": new_id(),
            "owner": _owner(owner),
            "status": "open",
            "created_at": now,
            "updated_at": now,
            "n_batches": 0,
            "n_samples": 0,
            "config": _json(config, "configuration"),
            "meta": _json(metadata, "metadata"),
            "facts": None,
            "warnings": {},
            "totals": encode_totals(ExactTotals()),
        }
        with self._writer.begin() as connection:
            connection.execute(evaluations.insert().values(values))
        return _evaluation(values)

    def get_evaluation(self, owner: str | None, evaluation_id: str) -> EvaluationRow | None:
        """The evaluation (without its totals), or ``None``."""
        with self.engine.begin() as connection:
            row = connection.execute(
                select(*_EVALUATION_COLUMNS).where(_MINE), _key(owner, evaluation_id)
            ).first()
        return None if row is None else _evaluation(row._mapping)

    def get_setup(self, owner: str | None, evaluation_id: str) -> Setup | None:
        """The evaluation's settings and the facts its first batch fixed (``None`` before
        it), or ``None`` if there is no such evaluation of this owner.

        Once the facts are fixed neither changes, so they are kept in memory (the
        ``setup_cache`` most recently used); a put then evaluates its batch without a
        read of its own. An evaluation deleted since (by any process) is found out by
        :meth:`put_batch`, which checks under the lock and answers ``NOT_FOUND``.
        """
        known = self.known_setup(owner, evaluation_id)
        if known is not None:
            return known
        key = (_owner(owner), evaluation_id)
        row = self.get_evaluation(owner, evaluation_id)
        if row is None:
            return None
        setup = Setup(row.config, row.facts)
        if row.facts is not None and self._setup_cache > 0:
            with self._setups_lock:
                self._setups[key] = setup
                while len(self._setups) > self._setup_cache:
                    self._setups.popitem(last=False)
        return setup

    def known_setup(self, owner: str | None, evaluation_id: str) -> Setup | None:
        """:meth:`get_setup` if this store keeps the evaluation's setup in memory, else
        ``None`` (without asking the database: an event loop may call this)."""
        key = (_owner(owner), evaluation_id)
        with self._setups_lock:
            known = self._setups.get(key)
            if known is not None:
                self._setups.move_to_end(key)
            return known

    def _forget(self, owner: str | None, evaluation_id: str) -> None:
        with self._setups_lock:
            self._setups.pop((_owner(owner), evaluation_id), None)

    def get_totals(self, owner: str | None, evaluation_id: str) -> Totals | None:
        """The evaluation and its running totals, from one snapshot; ``None`` if not found.

        The totals are kept up to date by every put: this reads one row,
        whatever the number of batches.
        """
        with self.engine.begin() as connection:
            row = connection.execute(
                select(evaluations).where(_MINE), _key(owner, evaluation_id)
            ).first()
        if row is None:
            return None
        return Totals(_evaluation(row._mapping), decode_totals(row.totals).values())

    def list_evaluations(
        self, owner: str | None, limit: int = 50, cursor: str | None = None
    ) -> Page[EvaluationRow]:
        """The owner's evaluations, newest first, ``limit`` (1–1000) a page."""
        _check_limit(limit)
        query = select(*_EVALUATION_COLUMNS).where(evaluations.c.owner == _owner(owner))
        if cursor is not None:
            query = query.where(evaluations.c.pk < decode_cursor("evaluations", cursor))
        query = query.order_by(evaluations.c.pk.desc()).limit(limit + 1)
        with self.engine.begin() as connection:
            rows = connection.execute(query).all()
        following = None
        if len(rows) > limit:
            following = encode_cursor("evaluations", rows[limit - 1].pk)
        return Page([_evaluation(row._mapping) for row in rows[:limit]], following)

    def close_evaluation(self, owner: str | None, evaluation_id: str) -> EvaluationRow | None:
        """Accept no new batches (replays of accepted ones still answer); ``None`` if not found.

        Closing a closed evaluation changes nothing but ``updated_at``.
        """
        with self._writer.begin() as connection:
            row = connection.execute(
                update(evaluations)
                .where(_MINE)
                .values(status="closed", updated_at=self._clock())
                .returning(*_EVALUATION_COLUMNS),
                _key(owner, evaluation_id),
            ).first()
        return None if row is None else _evaluation(row._mapping)

    def delete_evaluation(self, owner: str | None, evaluation_id: str) -> bool:
        """Delete the evaluation and its batches; ``False`` if there was none."""
        with self._writer.begin() as connection:
            pk = connection.execute(
                select(evaluations.c.pk).where(_MINE).with_for_update(),
                _key(owner, evaluation_id),
            ).scalar()
            self._forget(owner, evaluation_id)
            if pk is None:
                return False
            connection.execute(delete(batches).where(batches.c.evaluation_pk == pk))
            connection.execute(delete(evaluations).where(evaluations.c.pk == pk))
        return True

    def expire(self, older_than: datetime) -> int:
        """Delete every evaluation (any owner) not updated since ``older_than``; how many.

        Works in transactions of up to 500 evaluations; an evaluation that a
        put is updating right now is left alone (it is being updated).
        """
        deleted = 0
        while True:
            with self._writer.begin() as connection:
                pks = list(
                    connection.execute(
                        select(evaluations.c.pk)
                        .where(evaluations.c.updated_at < older_than)
                        .order_by(evaluations.c.pk)
                        .limit(EXPIRE_CHUNK)
                        .with_for_update(skip_locked=True)
                    ).scalars()
                )
                if pks:
                    connection.execute(delete(batches).where(batches.c.evaluation_pk.in_(pks)))
                    connection.execute(delete(evaluations).where(evaluations.c.pk.in_(pks)))
            deleted += len(pks)
            if len(pks) < EXPIRE_CHUNK:
                return deleted

    # -- batches --------------------------------------------------------------------

    def put_batch(
        self,
        owner: str | None,
        evaluation_id: str,
        batch_id: str,
        content_hash: bytes,
        stats: Mapping[str, ArrayLike],
        answer: Mapping[str, Any],
        n_samples: int,
        *,
        facts: Mapping[str, Any] | None = None,
        warnings: Iterable[str] = (),
    ) -> PutResult:
        """Store one batch and count it into the evaluation's totals, exactly once.

        * First time: the batch (its hash, sample count, ``answer`` and ``stats``)
          is stored and its ``stats`` added to the evaluation's exact totals,
          ``n_samples`` to its count, each distinct code of ``warnings`` to the
          warning counts, all in one transaction, committed when this returns
          ``CREATED``.
        * The same ``batch_id`` with the same ``content_hash``: ``REPLAYED``,
          with the batch as first stored (its ``answer``); nothing is counted.
          With another hash: ``CONFLICT``. Both also for a closed evaluation.
        * A new batch for a closed evaluation: ``CLOSED``; an unknown evaluation,
          or another owner's: ``NOT_FOUND``.
        * ``facts``: what this batch fixes about the evaluation (classes, label
          encoding, heads, resolved losses and metrics). The first accepted
          batch stores them, atomically with itself; a later batch whose facts
          differ is not stored: ``MISMATCH``, with the stored facts in
          ``result.evaluation.facts``. ``None`` checks nothing.

        ``stats`` maps names to arrays: float arrays are summed exactly, integer
        and boolean ones as int64 counts (see :mod:`service.storage.exact`);
        each name keeps its shape and kind from batch to batch.
        """
        return self.submit_batch(
            owner,
            evaluation_id,
            batch_id,
            content_hash,
            stats,
            answer,
            n_samples,
            facts=facts,
            warnings=warnings,
        ).result()

    def submit_batch(
        self,
        owner: str | None,
        evaluation_id: str,
        batch_id: str,
        content_hash: bytes,
        stats: Mapping[str, ArrayLike],
        answer: Mapping[str, Any],
        n_samples: int,
        *,
        facts: Mapping[str, Any] | None = None,
        warnings: Iterable[str] = (),
    ) -> Future[PutResult]:
        """:meth:`put_batch` without waiting: the put goes to the commit thread, and the
        future is done once the transaction that stores it is committed, or has failed
        (then every put in it gets the error; a batch is idempotent, its caller sends it
        again). Invalid arguments raise here, in the caller's thread."""
        _owner(owner)
        if BATCH_ID.fullmatch(batch_id) is None:
            raise ValueError(
                f"a batch id is 1–128 characters of A-Z a-z 0-9 . _ : -; received {batch_id!r}"
            )
        if not 1 <= len(content_hash) <= HASH_LENGTH:
            raise ValueError(
                f"a content hash is 1–{HASH_LENGTH} bytes; received {len(content_hash)}"
            )
        if n_samples < 0:
            raise ValueError(f"n_samples is a count; received {n_samples}")
        # Everything that does not need the lock is done before taking it.
        put = _Put(
            owner,
            evaluation_id,
            batch_id,
            bytes(content_hash),
            n_samples,
            ExactTotals.from_stats(stats),
            encode_arrays(stats),
            _json(answer, "answer"),
            None if facts is None else _json(facts, "facts"),
            sorted(set(warnings)),
        )
        with self._wake:
            if self._disposed:
                raise RuntimeError("the store is disposed: it stores no more batches")
            self._queue.append(put)
            pid = os.getpid()
            if (
                self._committer is None
                or self._committer_pid != pid
                or not self._committer.is_alive()
            ):
                # The first put of this process (a forked child has no commit thread).
                self._committer = threading.Thread(
                    target=self._commit_queued, name="loss-service-commit", daemon=True
                )
                self._committer_pid = pid
                self._connection = None  # a parent process's connection is not this one's
                self._committer.start()
            self._wake.notify()
        return put.future

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
            with self._commit_lock:
                with self._wake:
                    group = [
                        self._queue.popleft() for _ in range(min(self._max_group, len(self._queue)))
                    ]
                self._commit(group)

    def _commit(self, group: list[_Put]) -> None:
        """One transaction for ``group``, its puts in the order of their evaluations' keys
        (so that processes sharing a database lock rows in one order); each put's future
        gets its result once committed, or the error."""
        ordered = sorted(group, key=_evaluation_key)
        try:
            try:
                results = self._transaction(ordered)
            except _BrokenConnection as broken:
                # The connection was lost (a database restarted, a network cut): once more
                # on a new one. Safe even if the lost commit had landed: the batches are
                # then found stored, and answered as replays, counted once.
                log.warning("the store's connection broke; the group is tried again: %s", broken)
                results = self._transaction(ordered)
        except BaseException as error:
            # Whatever this group met, the commit thread goes on with the next one.
            if isinstance(error, _BrokenConnection) and error.__cause__ is not None:
                error = error.__cause__
            for put in ordered:
                put.future.set_exception(error)
            return
        self.commits += 1
        for put, result in zip(ordered, results, strict=True):
            put.future.set_result(result)

    def _transaction(self, ordered: list[_Put]) -> list[PutResult]:
        """The group's transaction on the commit thread's connection; after a failure it
        is rolled back and that connection is not used again (a new one starts clean).
        ``_BrokenConnection`` (its cause the driver's error) when the connection itself
        was lost."""
        if self._connection is None:
            self._connection = self.engine.raw_connection()
        connection = self._connection
        cursor, other = connection.cursor(), connection.cursor()
        try:
            with self._statements.pipeline(connection):
                self._statements.begin(cursor)
                results = [
                    result
                    for _, puts in itertools.groupby(ordered, key=_evaluation_key)
                    for result in self._put_in(cursor, other, list(puts))
                ]
                connection.commit()
            return results
        except Exception as error:
            self._connection = None
            broken = bool(getattr(connection.driver_connection, "broken", False))
            with contextlib.suppress(Exception):
                connection.rollback()
            with contextlib.suppress(Exception):
                connection.invalidate()
            if broken:
                raise _BrokenConnection(str(error)) from error
            raise
        finally:
            for each in (cursor, other):
                with contextlib.suppress(Exception):
                    each.close()

    def _put_in(self, cursor: Any, other: Any, puts: list[_Put]) -> list[PutResult]:
        """The puts of one evaluation inside the group's transaction (see
        :meth:`put_batch`), each answered as if they had come one after the other: the
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
            _owner(first.owner),
            first.evaluation_id,
            sorted({put.batch_id for put in puts}),
        )
        if row is None:
            self._forget(first.owner, first.evaluation_id)
            return [PutResult(PutOutcome.NOT_FOUND, None, None) for _ in puts]
        state = {k: v for k, v in row.items() if k != "totals"}
        stored = {known["batch_id"]: known for known in found}
        new: list[dict[str, Any]] = []
        created: list[ExactTotals] = []
        results = [self._put_one(put, state, stored, new, created) for put in puts]
        if new:
            sql.insert(cursor, new)
            totals = decode_totals(row["totals"])
            totals.add_all(created)
            sql.update(
                cursor,
                row["pk"],
                {**{k: state[k] for k in _CHANGED}, "totals": encode_totals(totals)},
            )
        return results

    def _put_one(
        self,
        put: _Put,
        state: dict[str, Any],
        stored: dict[str, dict[str, Any]],
        new: list[dict[str, Any]],
        created: list[ExactTotals],
    ) -> PutResult:
        """One put against the evaluation as ``state`` holds it and the batches ``stored``
        under the group's ids; a new batch joins ``new`` (its row), ``created`` (its
        totals) and ``stored``, and updates ``state``."""
        current = _evaluation(state)
        known = stored.get(put.batch_id)
        if known is not None:
            # A batch it accepted is answered as first stored, closed evaluation or not.
            batch = _batch({**known, "stats": None})
            same = secrets.compare_digest(batch.content_hash, put.content_hash)
            outcome = PutOutcome.REPLAYED if same else PutOutcome.CONFLICT
            return PutResult(outcome, batch, current)
        if current.status == "closed":
            return PutResult(PutOutcome.CLOSED, None, current)
        if put.facts is not None and current.facts is not None and current.facts != put.facts:
            return PutResult(PutOutcome.MISMATCH, None, current)
        now = self._clock()
        batch_row = {
            "evaluation_pk": state["pk"],
            "seq": current.n_batches + 1,
            "batch_id": put.batch_id,
            "content_hash": put.content_hash,
            "n_samples": put.n_samples,
            "received_at": now,
            "answer": put.answer,
            "stats": put.stats_blob,
        }
        new.append(batch_row)
        created.append(put.totals)
        stored[put.batch_id] = batch_row
        counts = dict(current.warnings)
        for code in put.codes:
            counts[code] = counts.get(code, 0) + 1
        state.update(
            n_batches=current.n_batches + 1,
            n_samples=current.n_samples + put.n_samples,
            updated_at=now,
            warnings=counts,
            facts=current.facts if current.facts is not None else put.facts,
        )
        return PutResult(
            PutOutcome.CREATED, _batch({**batch_row, "stats": None}), _evaluation(state)
        )

    def list_batches(
        self,
        owner: str | None,
        evaluation_id: str,
        limit: int = 50,
        cursor: str | None = None,
        *,
        with_stats: bool = False,
    ) -> Page[BatchRow] | None:
        """The evaluation's batches in arrival order, ``limit`` (1–1000) a page.

        ``None`` if there is no such evaluation. ``with_stats`` also reads each
        batch's own statistics.
        """
        _check_limit(limit)
        after = 0 if cursor is None else decode_cursor("batches", cursor)
        columns = list(batches.c) if with_stats else _BATCH_COLUMNS
        with self.engine.begin() as connection:
            pk = connection.execute(
                select(evaluations.c.pk).where(_MINE), _key(owner, evaluation_id)
            ).scalar()
            if pk is None:
                return None
            rows = connection.execute(
                select(*columns)
                .where(batches.c.evaluation_pk == pk, batches.c.seq > after)
                .order_by(batches.c.seq)
                .limit(limit + 1)
            ).all()
        following = encode_cursor("batches", rows[limit - 1].seq) if len(rows) > limit else None
        return Page([_batch(row._mapping) for row in rows[:limit]], following)

    def rebuild_totals(self, owner: str | None, evaluation_id: str) -> Totals | None:
        """Recompute the totals and counts from the stored batches, and store them.

        The totals are kept up to date by every put, so this is for repairs and
        checks; it reads the batches a few at a time (memory does not grow with
        their number). ``None`` if there is no such evaluation.
        """
        with self._writer.begin() as connection:
            row = connection.execute(
                select(*_EVALUATION_COLUMNS).where(_MINE).with_for_update(),
                _key(owner, evaluation_id),
            ).first()
            if row is None:
                return None
            totals = ExactTotals()
            n_batches = n_samples = 0
            stream = connection.execute(
                select(batches.c.n_samples, batches.c.stats)
                .where(batches.c.evaluation_pk == row.pk)
                .order_by(batches.c.seq)
                .execution_options(yield_per=64)
            )
            for batch in stream:
                totals.add(ExactTotals.from_stats(decode_arrays(batch.stats)))
                n_batches += 1
                n_samples += batch.n_samples
            changes = {
                "n_batches": n_batches,
                "n_samples": n_samples,
                "totals": encode_totals(totals),
            }
            connection.execute(_UPDATE_EVALUATION, {"row_pk": row.pk, **changes})
        evaluation = _evaluation({**row._mapping, **changes})
        return Totals(evaluation, totals.values())


# -- helpers ------------------------------------------------------------------------------


class _BrokenConnection(Exception):
    """The commit thread's connection was lost during a transaction."""


@dataclass(eq=False)
class _Put:
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
    future: Future[PutResult] = field(default_factory=Future)


def _evaluation_key(put: _Put) -> tuple[str, str]:
    return _owner(put.owner), put.evaluation_id


def _owner(owner: str | None) -> str:
    owner = owner or ""
    if len(owner) > OWNER_LENGTH:
        raise ValueError(f"an owner is at most {OWNER_LENGTH} characters; received {len(owner)}")
    return owner


def _key(owner: str | None, evaluation_id: str) -> dict[str, str]:
    """The parameters of :data:`_MINE`."""
    return {"key_owner": _owner(owner), "key_id": evaluation_id}


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"a page holds 1–{MAX_LIMIT} items; received limit={limit}")


def _json(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    """A JSON object as the database gives it back (lists for tuples, string keys)."""
    try:
        loaded = json.loads(json.dumps(dict(value), allow_nan=False))
    except ValueError as error:
        raise ValueError(f"the {what} is stored as JSON, which has no NaN or infinity") from error
    except TypeError as error:
        raise TypeError(f"the {what} is stored as JSON: {error}") from error
    assert isinstance(loaded, dict)
    return loaded


def _evaluation(row: Mapping[Any, Any]) -> EvaluationRow:
    return EvaluationRow(
        id=row["id"],
        owner=row["owner"],
        status=row["status"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        n_batches=int(row["n_batches"]),
        n_samples=int(row["n_samples"]),
        config=row["config"],
        metadata=row["meta"],
        facts=row["facts"],
        warnings={str(code): int(count) for code, count in row["warnings"].items()},
    )


def _batch(row: Mapping[Any, Any]) -> BatchRow:
    stats = row.get("stats")
    return BatchRow(
        batch_id=row["batch_id"],
        seq=int(row["seq"]),
        content_hash=bytes(row["content_hash"]),
        n_samples=int(row["n_samples"]),
        received_at=row["received_at"],
        answer=row["answer"],
        stats=None if stats is None else decode_arrays(stats),
    )
