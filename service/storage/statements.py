"""The statements of a put's transaction, run on the database driver's own cursor.

The store's commit thread runs a handful of statements per group of puts. Through
SQLAlchemy's Core each costs ~0.1 ms of Python (compiling the parameters, events,
result wrapping), on a thread that shares the interpreter lock with the event loop: a
group's transaction took ~1 ms of processor time where the database needs ~0.4 ms. Here
the same statements are written once per dialect and run on the driver's cursor, each
value converted by SQLAlchemy's own processor for its column type (the ones Core would
apply), so that what they store reads back through Core exactly as if Core had written
it, and the other methods of the store go on using Core.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, cast

from sqlalchemy import Column, Dialect

from service.storage.schema import batches, evaluations

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
        #: On PostgreSQL that update and the insert of the batches are one statement,
        #: which run alone (autocommit) is a transaction of one round trip: the batches are
        #: inserted from the updated row, so none is if the row is gone.
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
        cursor: Any,
        evaluation_pk: int,
        written: Mapping[str, Any],
        changes: Mapping[str, Any],
        rows: Sequence[Mapping[str, Any]],
    ) -> int:
        """PostgreSQL: :meth:`update_written` and :meth:`insert` of ``rows`` (up to
        ``INSERT_ROWS``) as one statement, for a connection in autocommit: one round trip
        stores them. How many batches it inserted: none when the row is gone; it fails
        (``IntegrityError``, nothing written) when the row changed or a batch id is
        stored."""
        assert self.alone and 0 < len(rows) <= INSERT_ROWS
        update, params = self._written(evaluation_pk, written, changes)
        for row in rows:
            params += _convert(self._write_alone, [row[key] for key in self._alone_columns])
        statement = (
            f"WITH written AS ({update} RETURNING pk) {self._alone_insert}"
            + " UNION ALL ".join([self._alone_row] * len(rows))
        )
        cursor.execute(statement, params)
        return int(cursor.rowcount)
