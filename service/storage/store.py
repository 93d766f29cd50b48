"""The evaluation store: what the HTTP layer calls to keep streaming evaluations.

A :class:`Store` wraps one engine (:mod:`service.storage.engine`) and is safe
to share between threads; every method is one transaction, committed (and on
disk) before it returns. Several processes and hosts may use one database at
once.

Ownership: every method takes the ``owner`` of the caller, an opaque string
(a hash of the API key; ``None`` or ``""`` when the service runs without
keys). Another owner's evaluation behaves exactly as if it did not exist.

Concurrency of :meth:`Store.put_batch`: every put holds the evaluation's row
lock (``SELECT ... FOR UPDATE``, or the update of the row, on PostgreSQL; the
database's write lock, taken by ``BEGIN IMMEDIATE``, on SQLite) while it finds which
of its batch ids are stored already (every writer of an evaluation's batches holds
its lock, so nobody adds one meanwhile; the unique ``(evaluation, batch_id)`` refuses
it), inserts the new batches and updates the running totals and counts in the same
transaction. So of many concurrent puts of one batch id exactly one creates it, the
others read it back as a replay (or a conflict), and no update of the totals is
lost. An evaluation this store wrote last is written without a read, by an update
that fails unless the row is still as written (then the put is stored after a read).

Group commits: puts are committed by the store's committer
(:mod:`service.storage.commits`): by the caller itself when it may block and no commit
runs, else by the commit thread, whose next transaction stores every put that queued
meanwhile (up to ``max_group``); one commit (one fsync) acknowledges every one of
them. No put is answered before the commit that stored it. :meth:`Store.submit_batch`
hands a put over and returns a future (an event loop awaits it without a thread of its
own); :meth:`Store.put_batch` waits for it.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from numpy.typing import ArrayLike
from sqlalchemy import Engine, and_, bindparam, delete, func, select, update

from service.storage.blobs import decode_arrays, decode_totals, encode_arrays, encode_totals
from service.storage.commits import Committer, Guard, Put
from service.storage.engine import DEFAULT_BUSY_TIMEOUT, JsonObject, make_engine, writer
from service.storage.exact import ExactTotals
from service.storage.migrate import upgrade
from service.storage.rows import (
    BATCH_ID,
    BatchRow,
    EvaluationRow,
    Page,
    PutResult,
    Setup,
    Totals,
    batch_row,
    decode_cursor,
    encode_cursor,
    evaluation_row,
    owner_key,
)
from service.storage.schema import HASH_LENGTH, batches, evaluations

#: Evaluations whose settings a store keeps in memory (see :meth:`Store.get_setup`).
DEFAULT_SETUP_CACHE = 1024
#: Puts that one transaction may commit together (see :meth:`Store.put_batch`).
DEFAULT_MAX_GROUP = 64
#: Bytes of running totals kept in memory for the evaluations a store wrote last.
DEFAULT_WRITTEN_BYTES = 64 * 1024 * 1024
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
        written_bytes: int = DEFAULT_WRITTEN_BYTES,
    ) -> None:
        self.engine = engine
        self._writer = writer(engine)
        self._clock = clock
        # (owner, id) -> (config, facts) of evaluations whose facts are fixed: neither
        # changes after that, so a put needs no read of its own to evaluate a batch.
        self._setups: OrderedDict[tuple[str, str], Setup] = OrderedDict()
        self._setups_lock = threading.Lock()
        self._setup_cache = setup_cache
        self._commits = Committer(
            engine,
            max_group=max_group,
            clock=clock,
            forget=self._forget,
            written_bytes=written_bytes,
        )

    @property
    def commits(self) -> int:
        """Transactions of puts committed so far (each holds one group)."""
        return self._commits.commits

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
        written_bytes: int = DEFAULT_WRITTEN_BYTES,
        **options: Any,
    ) -> Store:
        """A store on ``url`` (default: ``evaluations.sqlite3`` in ``data_dir``).

        With ``migrate`` the schema is upgraded to the latest revision first
        (safe when several processes start at once). ``setup_cache``: how many
        evaluations' settings :meth:`get_setup` keeps in memory; ``max_group``: how
        many puts one transaction may commit together; ``written_bytes``: how many bytes
        of running totals the store keeps for the evaluations it wrote last, whose next
        batches are then written with no read before. ``options`` go to
        :func:`sqlalchemy.create_engine`.
        """
        engine = make_engine(url, data_dir, busy_timeout=busy_timeout, **options)
        try:
            if migrate:
                upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(
            engine,
            clock=clock,
            setup_cache=setup_cache,
            max_group=max_group,
            written_bytes=written_bytes,
        )

    def dispose(self) -> None:
        """Commit the puts already handed over, stop the commit thread and close the
        engine's pooled connections. Puts handed over after this are refused."""
        self._commits.dispose()
        self.engine.dispose()

    # -- evaluations ----------------------------------------------------------------

    def create_evaluation(
        self, owner: str | None, config: Mapping[str, Any], metadata: Mapping[str, Any]
    ) -> EvaluationRow:
        """A new, open evaluation with no batches, under a new unguessable id.

        Stamped in its transaction: on SQLite, which takes the write lock up front, once
        it holds the lock, so that evaluations created at once are listed (newest first,
        in the order they were stored) in the order of their ``created_at`` too. On
        PostgreSQL inserts do not wait for one another, and two created at once may be
        stored in the other order than they were stamped, by the time between reading
        the clock and inserting."""
        values = {
            "id": new_id(),
            "owner": owner_key(owner),
            "status": "open",
            "n_batches": 0,
            "n_samples": 0,
            "config": _json(config, "configuration"),
            "meta": _json(metadata, "metadata"),
            "facts": None,
            "warnings": {},
            "totals": encode_totals(ExactTotals()),
        }
        with self._writer.begin() as connection:
            now = self._clock()
            values.update(created_at=now, updated_at=now)
            connection.execute(evaluations.insert().values(values))
        return evaluation_row(values)

    def get_evaluation(self, owner: str | None, evaluation_id: str) -> EvaluationRow | None:
        """The evaluation (without its totals), or ``None``."""
        with self.engine.begin() as connection:
            row = connection.execute(
                select(*_EVALUATION_COLUMNS).where(_MINE), _key(owner, evaluation_id)
            ).first()
        return None if row is None else evaluation_row(row._mapping)

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
        key = (owner_key(owner), evaluation_id)
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
        key = (owner_key(owner), evaluation_id)
        with self._setups_lock:
            known = self._setups.get(key)
            if known is not None:
                self._setups.move_to_end(key)
            return known

    def _forget(self, owner: str | None, evaluation_id: str) -> None:
        """Keep nothing of the evaluation in memory (it is gone, or about to change)."""
        with self._setups_lock:
            self._setups.pop((owner_key(owner), evaluation_id), None)
        self._commits.forget(owner_key(owner), evaluation_id)

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
        return Totals(evaluation_row(row._mapping), decode_totals(row.totals).values())

    def list_evaluations(
        self, owner: str | None, limit: int = 50, cursor: str | None = None
    ) -> Page[EvaluationRow]:
        """The owner's evaluations, newest first, ``limit`` (1–1000) a page."""
        _check_limit(limit)
        query = select(*_EVALUATION_COLUMNS).where(evaluations.c.owner == owner_key(owner))
        if cursor is not None:
            query = query.where(evaluations.c.pk < decode_cursor("evaluations", cursor))
        query = query.order_by(evaluations.c.pk.desc()).limit(limit + 1)
        with self.engine.begin() as connection:
            rows = connection.execute(query).all()
        following = None
        if len(rows) > limit:
            following = encode_cursor("evaluations", rows[limit - 1].pk)
        return Page([evaluation_row(row._mapping) for row in rows[:limit]], following)

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
        # A closed evaluation's fixed facts stay valid; its next put must read the row.
        self._commits.forget(owner_key(owner), evaluation_id)
        return None if row is None else evaluation_row(row._mapping)

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
        guard: Guard | None = None,
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
        * A new batch that would take a float statistic's running total to a size
          (``Σ |x|`` over its elements) of ``STATISTIC_LIMIT`` (2**1000, see
          :mod:`service.kernels.stats`) or more is not stored: this raises
          :class:`~service.errors.InvalidInput` (a 422) saying which total, so that
          the evaluation's results stay finite and right. The check is made in the
          transaction that would store it, against the totals it would be added to;
          so is ``guard``'s (see :data:`~service.storage.commits.Guard`), whose
          message is then the 422's.

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
            guard=guard,
            lead=True,
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
        guard: Guard | None = None,
        lead: bool = False,
    ) -> Future[PutResult]:
        """:meth:`put_batch` without waiting: the put goes to the commit thread, and the
        future is done once the transaction that stores it is committed, or has failed
        (then every put in it gets the error; a batch is idempotent, its caller sends it
        again). Invalid arguments raise here, in the caller's thread.

        ``lead``: the caller may block (it is not an event loop's thread); when no
        commit is running it commits the put itself, with those queued, before this
        returns (see :meth:`Committer.submit <service.storage.commits.Committer.submit>`)."""
        owner_key(owner)
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
        put = Put(
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
            guard,
        )
        return self._commits.submit(put, lead=lead)

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
        return Page([batch_row(row._mapping) for row in rows[:limit]], following)

    def samples_through(self, owner: str | None, evaluation_id: str, seq: int) -> int | None:
        """The evaluation's sample count once its batch ``seq`` was counted (the running
        count its first answer gave: batches are only ever added, so it stays what it
        was); ``None`` if there is no such evaluation or batch."""
        with self.engine.connect() as connection:
            pk = connection.execute(
                select(evaluations.c.pk).where(_MINE), _key(owner, evaluation_id)
            ).scalar()
            if pk is None:
                return None
            through = select(func.count(), func.sum(batches.c.n_samples)).where(
                batches.c.evaluation_pk == pk, batches.c.seq <= seq
            )
            count, total = connection.execute(through).one()
        return None if count != seq else int(total)

    def rebuild_totals(self, owner: str | None, evaluation_id: str) -> Totals | None:
        """Recompute the totals and counts from the stored batches, and store them.

        The totals are kept up to date by every put, so this is for repairs and
        checks; it reads the batches a few at a time (memory does not grow with
        their number). It counts as an update: ``updated_at`` moves forward.
        ``None`` if there is no such evaluation.
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
                # A later time tells a process that wrote the evaluation last that its
                # totals were rewritten here (see Committer._put_written): later than
                # the row's, whatever the clock says.
                "updated_at": max(self._clock(), row.updated_at + timedelta(microseconds=1)),
            }
            connection.execute(_UPDATE_EVALUATION, {"row_pk": row.pk, **changes})
        self._commits.forget(owner_key(owner), evaluation_id)
        evaluation = evaluation_row({**row._mapping, **changes})
        return Totals(evaluation, totals.values())


# -- helpers ------------------------------------------------------------------------------


def _key(owner: str | None, evaluation_id: str) -> dict[str, str]:
    """The parameters of :data:`_MINE`."""
    return {"key_owner": owner_key(owner), "key_id": evaluation_id}


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"a page holds 1–{MAX_LIMIT} items; received limit={limit}")


#: ``json.dumps``'s own settings (the text is what it writes), NaN and infinity refused.
_ENCODER = json.JSONEncoder(allow_nan=False)


def _json(value: Mapping[str, Any], what: str) -> JsonObject:
    """A JSON object as the database gives it back (lists for tuples, string keys), with
    its text (see :class:`~service.storage.engine.JsonObject`)."""
    try:
        text = _ENCODER.encode(dict(value))
    except ValueError as error:
        raise ValueError(f"the {what} is stored as JSON, which has no NaN or infinity") from error
    except TypeError as error:
        raise TypeError(f"the {what} is stored as JSON: {error}") from error
    # Read back as the database's rows are (json.loads: orjson would read an integer
    # beyond 64 bits as a float).
    document = JsonObject(json.loads(text))
    document.text = text
    return document
