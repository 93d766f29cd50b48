"""``PutStatements``: a put's statements on the driver's cursor store exactly what
SQLAlchemy's Core writes and reads, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from storage_helpers import BACKENDS, database

from service.storage import Store
from service.storage.schema import batches, evaluations
from service.storage.statements import PutStatements

WHEN = datetime(2026, 11, 30, 23, 59, 58, 123456, tzinfo=UTC)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with database(request.param, tmp_path) as db:
        opened = Store.open(db.url, db.data_dir)
        try:
            yield opened
        finally:
            opened.dispose()


def _batch(pk: int, seq: int, batch_id: str) -> dict[str, Any]:
    return {
        "evaluation_pk": pk,
        "seq": seq,
        "batch_id": batch_id,
        "content_hash": bytes(range(32)),
        "n_samples": 7,
        "received_at": WHEN,
        # Key order kept, unicode and nesting as given.
        "answer": {"z": 1, "a": [0.5, None], "é": {"k": "v"}},
        "stats": b"\x00\x01stats",
        "samples_through": 7 * seq,
    }


def test_what_the_driver_writes_core_reads_back_and_the_other_way(store: Store) -> None:
    evaluation = store.create_evaluation("owner", {"metrics": ["accuracy"]}, {"m": "1"})
    sql = PutStatements(store.engine.dialect)
    connection = store.engine.raw_connection()
    try:
        cursor, other = connection.cursor(), connection.cursor()
        sql.begin(cursor)
        row, none_stored = sql.locked(cursor, other, "owner", evaluation.id, ["a"])
        assert row is not None and none_stored == []
        with store.engine.connect() as core:
            expected = core.execute(
                select(evaluations).where(evaluations.c.id == evaluation.id)
            ).one()
        assert row == dict(expected._mapping)
        assert sql.locked(cursor, other, "someone else", evaluation.id, ["a"]) == (None, [])
        assert sql.locked(cursor, other, "owner", "no such evaluation", ["a"]) == (None, [])
        sql.insert(cursor, [_batch(row["pk"], 1, "a"), _batch(row["pk"], 2, "b")])
        sql.update(
            cursor,
            row["pk"],
            {
                "n_batches": 2,
                "n_samples": 14,
                "updated_at": WHEN,
                "warnings": {"w": 2},
                "facts": {"heads": {"": {"n_classes": 3}}},
                "totals": b"totals",
            },
        )
        again, stored = sql.locked(cursor, other, "owner", evaluation.id, ["b", "c"])
        assert again is not None and again["n_batches"] == 2
        connection.commit()
    finally:
        connection.close()
    assert [s["batch_id"] for s in stored] == ["b"]
    assert {k: v for k, v in _batch(row["pk"], 2, "b").items() if k != "stats"} == stored[0]
    with store.engine.connect() as core:
        read = [
            dict(r._mapping) for r in core.execute(select(batches).order_by(batches.c.seq)).all()
        ]
        after = core.execute(select(evaluations).where(evaluations.c.pk == row["pk"])).one()
    assert read == [_batch(row["pk"], 1, "a"), _batch(row["pk"], 2, "b")]
    assert list(read[0]["answer"]) == ["z", "a", "é"]
    assert (after.n_batches, after.n_samples, after.updated_at) == (2, 14, WHEN)
    assert (after.warnings, after.facts, after.totals) == (
        {"w": 2},
        {"heads": {"": {"n_classes": 3}}},
        b"totals",
    )


def test_rows_written_by_core_are_read_by_the_driver_alike(store: Store) -> None:
    evaluation = store.create_evaluation(None, {}, {})
    with store.engine.begin() as core:
        pk = core.execute(
            select(evaluations.c.pk).where(evaluations.c.id == evaluation.id)
        ).scalar_one()
        core.execute(insert(batches).values(_batch(pk, 1, "x")))
    sql = PutStatements(store.engine.dialect)
    connection = store.engine.raw_connection()
    try:
        cursor, other = connection.cursor(), connection.cursor()
        with sql.pipeline(connection):
            sql.begin(cursor)
            _, stored = sql.locked(cursor, other, "", evaluation.id, ["x", "y"])
            connection.rollback()
    finally:
        connection.close()
    assert stored == [{k: v for k, v in _batch(pk, 1, "x").items() if k != "stats"}]


@pytest.fixture
def pg_store(tmp_path: Path) -> Iterator[Store]:
    with database("postgresql", tmp_path) as db:
        opened = Store.open(db.url, db.data_dir)
        try:
            yield opened
        finally:
            opened.dispose()


def test_a_put_alone_through_libpq_stores_what_core_reads_back(pg_store: Store) -> None:
    import psycopg

    evaluation = pg_store.create_evaluation("owner", {}, {})
    sql = PutStatements(pg_store.engine.dialect)
    with pg_store.engine.connect() as core:
        first = core.execute(select(evaluations).where(evaluations.c.id == evaluation.id)).one()
    pk = first.pk
    later = WHEN.replace(microsecond=654321)
    connection = pg_store.engine.raw_connection()
    try:
        # One batch (a prepared statement), with the warnings and facts changed.
        changes = {
            "n_batches": 1,
            "n_samples": 7,
            "updated_at": WHEN,
            "warnings": {"w": 1},
            "facts": {"heads": {"": {"n_classes": 3, "classes": ["é", "✓"]}}},
            "totals": b"\x00totals\xff",
        }
        written = {"n_batches": 0, "updated_at": first.updated_at}
        assert sql.put_alone(connection, pk, written, changes, [_batch(pk, 1, "a")]) == 1
        # Two batches (sent unnamed), counts, time and totals only.
        changes = {"n_batches": 3, "n_samples": 21, "updated_at": later, "totals": b"t2"}
        rows = [_batch(pk, 2, "b"), _batch(pk, 3, "c")]
        written = {"n_batches": 1, "updated_at": WHEN}
        assert sql.put_alone(connection, pk, written, changes, rows) == 2
        # Not as written any more (another process wrote it): nothing written.
        with pytest.raises(psycopg.IntegrityError):
            sql.put_alone(connection, pk, written, changes, [_batch(pk, 4, "d")])
        # A batch id already stored: nothing written either.
        written = {"n_batches": 3, "updated_at": later}
        stale = {**changes, "n_batches": 4}
        with pytest.raises(psycopg.IntegrityError):
            sql.put_alone(connection, pk, written, stale, [_batch(pk, 4, "a")])
        # The row gone: nothing inserted.
        assert sql.put_alone(connection, pk + 1, written, stale, [_batch(pk + 1, 4, "d")]) == 0
        # Each statement committed alone: nothing left open on the connection.
        assert connection.driver_connection.pgconn.transaction_status == 0
    finally:
        connection.close()
    with pg_store.engine.connect() as core:
        read = [
            dict(r._mapping) for r in core.execute(select(batches).order_by(batches.c.seq)).all()
        ]
        after = core.execute(select(evaluations).where(evaluations.c.pk == pk)).one()
    assert read == [_batch(pk, 1, "a"), _batch(pk, 2, "b"), _batch(pk, 3, "c")]
    assert list(read[0]["answer"]) == ["z", "a", "é"]
    assert (after.n_batches, after.n_samples, after.updated_at) == (3, 21, later)
    assert after.warnings == {"w": 1} and after.totals == b"t2"
    assert after.facts == {"heads": {"": {"n_classes": 3, "classes": ["é", "✓"]}}}


def test_wire_formats_refuse_values_and_types_they_would_store_wrong() -> None:
    import json

    from sqlalchemy import Column, Integer, TypeDecorator

    from service.storage.statements import _int8, _wire

    class Other(TypeDecorator[int]):
        impl = Integer
        cache_ok = True

    assert _int8(-(2**63)) == b"-9223372036854775808"
    with pytest.raises(TypeError):
        _int8(2.9)  # type: ignore[arg-type]  # a float is not truncated into a count
    # A type decorator other than UTCDateTime is not taken for a timestamp.
    with pytest.raises(TypeError, match="no wire format"):
        _wire(Column("x", Other()), json.dumps)
    assert _wire(evaluations.c.updated_at, json.dumps)[0] == 1184
