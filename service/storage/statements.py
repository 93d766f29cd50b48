"""The statements of a put's transaction, run on the database driver's own cursor.

The store's commit thread runs a handful of statements per group of puts. Through
SQLAlchemy's Core each costs ~0.1 ms of Python (compiling the parameters, events,
result wrapping), on a thread that shares the interpreter lock with the event loop: a
group's transaction took ~1 ms of processor time where the database needs ~0.4 ms. Here
the same statements are written once per dialect and run on the driver's cursor, each
value converted by SQLAlchemy's own processor for its column type (the ones Core would
apply), so that what they store reads back through Core exactly as if Core had written
it, and the other methods of the store go on using Core.

On PostgreSQL the statement that stores an evaluation's puts alone (see
:meth:`PutStatements.put_alone`) goes one level lower still: it runs through libpq
(psycopg's ``pgconn``; for one batch, prepared once per connection), its parameters
turned into PostgreSQL's wire formats here, from the values those processors give.
psycopg's own path (adapting each parameter, its prepared-statement cache, results) cost
~0.05–0.1 ms of interpreter time per put, as much as the rest of the statement's
preparation; libpq waits for the commit with the interpreter lock released.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import JSON, BigInteger, Column, Dialect, Integer, LargeBinary, String

from service.storage.schema import UTCDateTime, batches, evaluations

Processor = Callable[[Any], Any] | None

#: What a put changes of its evaluation's row, besides the totals.
CHANGED = ("n_batches", "n_samples", "updated_at", "warnings", "facts")
#: Rows one multi-row INSERT takes (8 columns: far under SQLite's and PostgreSQL's limits
#: on bound parameters).
INSERT_ROWS = 500


def _bind(dialect: Dialect, columns: Iterable[Column[Any]]) -> list[Processor]:
    return [c.type.dialect_impl(dialect).bind_processor(dialect) for c in columns]


def _result(dialect: Dialect, columns: Iterable[Column[Any]]) -> list[Processor]:
    return [c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]


def _convert(processors: Sequence[Processor], values: Sequence[Any]) -> list[Any]:
    return [v if p is None else p(v) for p, v in zip(processors, values, strict=True)]


#: Put-alone statements a store keeps built (one per set of changed columns and number
#: of batches), the least recently used going first.
STATEMENTS_KEPT = 64
#: The key of the names of a connection's prepared statements in its pool record's
#: ``info``.
PREPARED_KEY = "loss_service_prepared"
#: PostgreSQL's result status of a command that returns no rows, and its error codes for a
#: prepared statement the connection does not have (one deallocated behind our back), and
#: for one it has already.
_COMMAND_OK = 1
_NO_SUCH_STATEMENT = "26000"
_ALREADY_PREPARED = "42P05"
#: libpq's transaction status of a connection with no transaction open.
_IDLE = 0
#: libpq's field code of an error's SQLSTATE (PG_DIAG_SQLSTATE, "C").
_SQLSTATE_FIELD = ord("C")

#: A parameter in PostgreSQL's wire format: its type's oid, 0 (text) or 1 (binary), and
#: how a value (as SQLAlchemy's bind processor of its column gives it) becomes its bytes.
Wire = tuple[int, int, Callable[[Any], bytes]]


def _int8(value: int) -> bytes:
    # operator.index refuses a float rather than truncating it.
    return b"%d" % operator.index(value)


def _timestamptz(value: datetime) -> bytes:
    # UTCDateTime's processor gives an aware UTC datetime; ISO 8601 text keeps its
    # microseconds, as psycopg's own dumper does.
    return value.isoformat().encode()


def _bytea(value: Any) -> bytes:
    # SQLAlchemy's LargeBinary processor wraps the bytes in psycopg's Binary.
    return bytes(getattr(value, "obj", value))


def _json_text(dumps: Callable[[Any], Any]) -> Callable[[Any], bytes]:
    """JSON as text, by ``dumps``: the engine's serializer (``json_serializer``), which
    psycopg's dumper uses for the document that SQLAlchemy's JSON processor wraps in its
    Json (whose own ``dumps`` is then None)."""

    def encode(value: Any) -> bytes:
        text = (value.dumps or dumps)(value.obj)
        return text.encode() if isinstance(text, str) else bytes(text)

    return encode


def _wire(column: Column[Any], json_dumps: Callable[[Any], Any]) -> Wire:
    """How a value of ``column`` goes over the wire to PostgreSQL."""
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return 1184, 0, _timestamptz
    if isinstance(kind, (BigInteger, Integer)):
        return 20, 0, _int8
    if isinstance(kind, LargeBinary):
        return 17, 1, _bytea
    if isinstance(kind, JSON):
        return 114, 0, _json_text(json_dumps)
    if isinstance(kind, String):
        return 1043, 0, str.encode
    raise TypeError(f"no wire format for column {column.key} of type {kind!r}")


def _numbered(statement: str) -> str:
    """``statement`` with libpq's numbered parameters ($1, $2...) for the driver's %s."""
    parts = statement.split("%s")
    return "".join(
        part if n == len(parts) else f"{part}${n}" for n, part in enumerate(parts, start=1)
    )


class _Raw:
    """A put-alone statement as libpq runs it: its text, the types, formats and encoders
    of its parameters, and the name it is prepared under on a connection (``None``: sent
    unnamed)."""

    __slots__ = ("encoders", "formats", "name", "sql", "types")

    def __init__(
        self,
        sql: str,
        columns: Sequence[Column[Any]],
        name: bytes | None,
        json_dumps: Callable[[Any], Any],
    ) -> None:
        wires = [_wire(column, json_dumps) for column in columns]
        self.sql = _numbered(sql).encode()
        self.types = [oid for oid, _, _ in wires]
        self.formats = [form for _, form, _ in wires]
        self.encoders = [encode for _, _, encode in wires]
        self.name = name

    def values(self, params: Sequence[Any]) -> list[bytes]:
        return [encode(v) for encode, v in zip(self.encoders, params, strict=True)]


class PutStatements:
    """A put's statements for one dialect (SQLite or PostgreSQL with psycopg)."""

    def __init__(self, dialect: Dialect) -> None:
        self.sqlite = dialect.name == "sqlite"
        mark = "?" if self.sqlite else "%s"
        self._mark = mark
        self.evaluation_columns = list(evaluations.c)
        self.batch_columns = [c for c in batches.c if c.key != "stats"]
        self._insert_columns = list(batches.c)
        self._changed = [*CHANGED, "totals"]
        names = ", ".join(c.key for c in self.evaluation_columns)
        lock = " FOR UPDATE" if not self.sqlite else ""
        self._lock = f"SELECT {names} FROM evaluations WHERE id = {mark} AND owner = {mark}{lock}"
        # By the evaluation's id, not its key: on PostgreSQL it is sent with the lock, before
        # the lock's answer (and key) came back.
        self._stored = (
            f"SELECT {', '.join(c.key for c in self.batch_columns)} FROM batches "
            f"WHERE evaluation_pk = (SELECT pk FROM evaluations WHERE id = {mark} "
            f"AND owner = {mark}) AND batch_id IN "
        )
        self._alone_insert = (
            f"INSERT INTO batches ({', '.join(c.key for c in self._insert_columns)}) "
        )
        self._insert = self._alone_insert + "VALUES "
        self._row = "(" + ", ".join([mark] * len(self._insert_columns)) + ")"
        self._update = (
            "UPDATE evaluations SET "
            + ", ".join(f"{key} = {mark}" for key in self._changed)
            + f" WHERE pk = {mark}"
        )
        # The same update for an evaluation as this process last wrote it, with no read
        # before: it asserts that the row is still as written (its batch count and time,
        # open); were it not, n_batches would be set to NULL, which its NOT NULL
        # constraint refuses, and the transaction fails without writing anything.
        # It sets what changed: the counts, time and totals always, the warnings and the
        # facts when they did (one statement for each set of columns).
        self._check_written = (
            "UPDATE evaluations SET n_batches = CASE WHEN n_batches = "
            f"{mark} AND updated_at = {mark} AND status = 'open' THEN CAST({mark} AS BIGINT) "
            "END"
        )
        self._updates_written: dict[tuple[str, ...], str] = {}
        self._write_column = dict(
            zip(
                self._changed,
                _bind(dialect, (evaluations.c[k] for k in self._changed)),
                strict=True,
            )
        )
        self._write_changes = [self._write_column[key] for key in self._changed]
        self._read_evaluation = _result(dialect, self.evaluation_columns)
        self._read_batch = _result(dialect, self.batch_columns)
        self._write_batch = _bind(dialect, self._insert_columns)
        #: On PostgreSQL that update and the insert of the batches are one statement, which
        #: run with no transaction open is a transaction of one round trip: the batches
        #: are inserted from the updated row, so none is if the row is gone.
        self.alone = not self.sqlite
        self._alone_row = (
            "SELECT "
            + ", ".join(
                "written.pk" if c.key == "evaluation_pk" else mark for c in self._insert_columns
            )
            + " FROM written"
        )
        self._alone_columns = [c.key for c in self._insert_columns if c.key != "evaluation_pk"]
        self._write_alone = [
            p
            for c, p in zip(self._insert_columns, self._write_batch, strict=True)
            if c.key != "evaluation_pk"
        ]
        # The put-alone statements built, by changed columns and number of batches, the
        # most recently used last.
        self._raws: OrderedDict[tuple[tuple[str, ...], int], _Raw] = OrderedDict()
        self._json_dumps: Callable[[Any], Any] = (
            getattr(dialect, "_json_serializer", None) or json.dumps
        )

    def begin(self, cursor: Any) -> None:
        """Open the transaction: on SQLite, with the write lock taken up front (PostgreSQL's
        driver opens one at the first statement)."""
        if self.sqlite:
            cursor.execute("BEGIN IMMEDIATE")

    def pipeline(self, connection: Any) -> AbstractContextManager[Any]:
        """On PostgreSQL, psycopg's pipeline mode for the transaction on ``connection`` (a
        connection of the engine's pool): statements go out without waiting for the
        answers of those before, and a transaction of puts takes one round trip per
        evaluation and one for the commit instead of five. Nothing on SQLite (no network)."""
        if self.sqlite:
            return contextlib.nullcontext()
        return cast(AbstractContextManager[Any], connection.driver_connection.pipeline())

    def locked(
        self,
        cursor: Any,
        stored_cursor: Any,
        owner: str,
        evaluation_id: str,
        batch_ids: Sequence[str],
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The evaluation's row, locked (``FOR UPDATE``; SQLite's write lock is already
        held), or ``None``; and its batches stored under ``batch_ids`` (without their
        statistics), read by a statement of its own after the lock: on PostgreSQL a
        statement sees what was committed before it began, and a put that waited for
        the lock must see the batches of the transaction it waited for."""
        cursor.execute(self._lock, (evaluation_id, owner))
        marks = "(" + ", ".join([self._mark] * len(batch_ids)) + ")"
        stored_cursor.execute(self._stored + marks, (evaluation_id, owner, *batch_ids))
        row = cursor.fetchone()
        stored = [
            {
                c.key: v
                for c, v in zip(self.batch_columns, _convert(self._read_batch, found), strict=True)
            }
            for found in stored_cursor.fetchall()
        ]
        if row is None:
            return None, []
        values = _convert(self._read_evaluation, row)
        return {c.key: v for c, v in zip(self.evaluation_columns, values, strict=True)}, stored

    def insert(self, cursor: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        """The batches ``rows`` (every column), one statement each ``INSERT_ROWS`` of them."""
        for start in range(0, len(rows), INSERT_ROWS):
            chunk = rows[start : start + INSERT_ROWS]
            values: list[Any] = []
            for row in chunk:
                values += _convert(self._write_batch, [row[c.key] for c in self._insert_columns])
            cursor.execute(self._insert + ", ".join([self._row] * len(chunk)), values)

    def update(self, cursor: Any, evaluation_pk: int, changes: Mapping[str, Any]) -> None:
        """Write the evaluation's counts, time, warnings, facts and totals."""
        values = _convert(self._write_changes, [changes[key] for key in self._changed])
        cursor.execute(self._update, (*values, evaluation_pk))

    def update_written(
        self,
        cursor: Any,
        evaluation_pk: int,
        written: Mapping[str, Any],
        changes: Mapping[str, Any],
    ) -> None:
        """:meth:`update`, with no lock or read before, of an evaluation that this process
        wrote last as ``written`` (its ``n_batches`` and ``updated_at``), of the columns in
        ``changes`` (the counts, time and totals, and the warnings and facts if they
        changed): the statement
        fails with the driver's ``IntegrityError`` if the row changed since (a batch
        from another process, closed, its totals rebuilt), and does nothing if the row
        is gone (then the batches' foreign key fails)."""
        statement, params = self._written(evaluation_pk, written, changes)
        cursor.execute(statement, params)

    def _written(
        self, evaluation_pk: int, written: Mapping[str, Any], changes: Mapping[str, Any]
    ) -> tuple[str, list[Any]]:
        """The update of an evaluation written last (see :meth:`update_written`): its SQL
        for the columns in ``changes`` (``n_batches`` first), and its parameters."""
        keys = tuple(key for key in self._changed if key in changes)
        assert keys[0] == "n_batches"
        statement = self._updates_written.get(keys)
        if statement is None:
            statement = self._updates_written[keys] = (
                self._check_written
                + "".join(f", {key} = {self._mark}" for key in keys[1:])
                + f" WHERE pk = {self._mark}"
            )
        checked = ("n_batches", "updated_at")
        params = _convert(
            [self._write_column[key] for key in (*checked, *keys)],
            [*(written[key] for key in checked), *(changes[key] for key in keys)],
        )
        params.append(evaluation_pk)
        return statement, params

    def put_alone(
        self,
        connection: Any,
        evaluation_pk: int,
        written: Mapping[str, Any],
        changes: Mapping[str, Any],
        rows: Sequence[Mapping[str, Any]],
    ) -> int:
        """PostgreSQL: :meth:`update_written` and :meth:`insert` of ``rows`` (up to
        ``INSERT_ROWS``) as one statement, run with no transaction open on ``connection``
        (a connection of the engine's pool), so that it commits alone: one round trip
        stores them. How many batches it inserted: none when the row is gone; it fails
        (the driver's ``IntegrityError``, nothing written) when the row changed or a
        batch id is stored."""
        assert self.alone and 0 < len(rows) <= INSERT_ROWS
        update, params = self._written(evaluation_pk, written, changes)
        for row in rows:
            params += _convert(self._write_alone, [row[key] for key in self._alone_columns])
        keys = tuple(key for key in self._changed if key in changes)
        raw = self._raw_statement(keys, len(rows), update)
        driver = connection.driver_connection
        pgconn = driver.pgconn
        if self.in_transaction(connection):
            # Inside a transaction the statement would not commit on its own.
            raise RuntimeError("a put alone runs with no transaction open on its connection")
        values = raw.values(params)
        if raw.name is None or driver.prepare_threshold is None:
            # A group: its statement, sent unnamed, is parsed and run in one round trip. So
            # is every statement on a connection told to prepare none (psycopg's
            # prepare_threshold=None, for a pooler that moves sessions between servers).
            result = pgconn.exec_params(raw.sql, values, raw.types, raw.formats)
        else:
            result = _run_prepared(connection, raw, values)
        if result.status != _COMMAND_OK:
            raise _error(driver, result)
        return int(result.command_tuples)

    @staticmethod
    def in_transaction(connection: Any) -> bool:
        """PostgreSQL: whether a transaction is open on ``connection`` (a connection of the
        engine's pool), as libpq tells, with no round trip."""
        return bool(connection.driver_connection.pgconn.transaction_status != _IDLE)

    def _raw_statement(self, keys: tuple[str, ...], n_rows: int, update: str) -> _Raw:
        """The put-alone statement of ``n_rows`` batches updating the columns ``keys``:
        prepared on each connection for one batch (a put that came alone, whose latency
        counts), sent unnamed for more (a group, whose parse is shared by its puts, and
        whose sizes vary: prepared, they would pile up on the connection)."""
        raw = self._raws.get((keys, n_rows))
        if raw is not None:
            self._raws.move_to_end((keys, n_rows))
            return raw
        statement = (
            f"WITH written AS ({update} RETURNING pk) {self._alone_insert}"
            + " UNION ALL ".join([self._alone_row] * n_rows)
        )
        columns = [
            *(evaluations.c[key] for key in ("n_batches", "updated_at", *keys)),
            evaluations.c.pk,
            *[batches.c[key] for key in self._alone_columns] * n_rows,
        ]
        # Named after its text: built again, it takes the name it had.
        name = None
        if n_rows == 1:
            name = (
                b"loss_service_put_"
                + hashlib.blake2b(statement.encode(), digest_size=8).hexdigest().encode()
            )
        raw = self._raws[keys, n_rows] = _Raw(statement, columns, name, self._json_dumps)
        while len(self._raws) > STATEMENTS_KEPT:
            self._raws.popitem(last=False)
        return raw


def _run_prepared(connection: Any, raw: _Raw, values: list[bytes]) -> Any:
    """``raw`` run as the connection's prepared statement, prepared first if it is not
    (one name per statement: a connection holds one per set of changed columns)."""
    pgconn = connection.driver_connection.pgconn
    assert raw.name is not None
    prepared: set[bytes] = connection.info.setdefault(PREPARED_KEY, set())
    if raw.name in prepared:
        result = pgconn.exec_prepared(raw.name, values, raw.formats)
        if result.status == _COMMAND_OK or _sqlstate(result) != _NO_SUCH_STATEMENT:
            return result
        # Deallocated meanwhile (psycopg deallocates its own statements with DEALLOCATE
        # ALL after a rollback, or when a plan goes stale): prepared again.
        prepared.discard(raw.name)
    made = pgconn.prepare(raw.name, raw.sql, raw.types)
    # Already prepared (by this service: the name is the text's) is as good as prepared.
    if made.status != _COMMAND_OK and _sqlstate(made) != _ALREADY_PREPARED:
        raise _error(connection.driver_connection, made)
    prepared.add(raw.name)
    return pgconn.exec_prepared(raw.name, values, raw.formats)


def _sqlstate(result: Any) -> str | None:
    code = result.error_field(_SQLSTATE_FIELD)
    return None if code is None else bytes(code).decode()


def _error(driver: Any, result: Any) -> Exception:
    """psycopg's exception for a failed result by its SQLSTATE (``IntegrityError`` for a
    constraint). A lost connection's result has none (a plain ``DatabaseError``, where
    psycopg's ``execute`` raises an ``OperationalError``): the driver is then ``broken``,
    which is what the committer looks at."""
    import psycopg.errors

    return psycopg.errors.error_from_result(result, encoding=driver.info.encoding)
