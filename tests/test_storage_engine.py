"""Database URLs, SQLite's durability and locking settings, and the schema migrations."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import storage_helpers
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import OperationalError
from storage_helpers import BACKENDS, Database, database

from service.storage import Store, current_revision, database_url, head_revision, make_engine
from service.storage.engine import writer
from service.storage.migrate import alembic_config, upgrade
from service.storage.schema import metadata


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with database(request.param, tmp_path) as fresh:
        yield fresh


def test_the_default_database_is_an_sqlite_file_in_the_data_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet"
    url = database_url(None, data_dir)
    assert url.drivername == "sqlite+pysqlite"
    assert url.database == str(data_dir / "evaluations.sqlite3")
    assert data_dir.is_dir()
    assert database_url("", data_dir) == url


def test_postgresql_urls_use_psycopg_3(tmp_path: Path) -> None:
    for scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        url = database_url(f"{scheme}://u:secret@db.example:5433/evals?sslmode=require", tmp_path)
        assert url.drivername == "postgresql+psycopg"
        assert (url.host, url.port, url.database) == ("db.example", 5433, "evals")
        assert url.password == "secret" and url.query == {"sslmode": "require"}


def test_an_sqlite_url_names_a_file_whose_directory_is_created(tmp_path: Path) -> None:
    url = database_url(f"sqlite:///{tmp_path}/deep/dir/store.db", tmp_path)
    assert url.database == f"{tmp_path}/deep/dir/store.db"
    assert (tmp_path / "deep" / "dir").is_dir()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "in-memory"),
        ("sqlite:///:memory:", "in-memory"),
        ("mysql://user:hunter2@host/db", "uses 'mysql'"),
        ("postgresql+psycopg2://user:hunter2@host/db", "uses 'postgresql\\+psycopg2'"),
        ("not a url", "not a URL"),
        # What libpq would refuse at every connection (a 503 for good), refused at once.
        ("postgresql://user:hunter2@host:99999/db", "has port 99999; expected a port in 1–65535"),
        ("postgresql://user:hunter2@host/db?sslmode=bogus", "has sslmode='bogus'; expected one"),
        ("postgresql://user:hunter2@host/db?bogus=1", "parameter 'bogus', which libpq does not"),
    ],
)
def test_other_urls_are_refused_without_showing_the_password(
    tmp_path: Path, url: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        database_url(url, tmp_path)
    assert "hunter2" not in str(caught.value)


def test_postgresql_connections_bound_their_waits_on_the_network(tmp_path: Path) -> None:
    """Connecting, data the network does not acknowledge and a silent peer end within about
    the timeout (then a 503), instead of hanging on a lost network."""
    with database("postgresql", tmp_path) as db:
        engine = make_engine(db.url, db.data_dir, busy_timeout=12)
        try:
            with engine.connect() as connection:
                parameters = connection.connection.driver_connection.info.get_parameters()
        finally:
            engine.dispose()
        assert engine.pool.timeout() == 12
    assert {k: parameters[k] for k in parameters if k.startswith(("connect", "tcp", "keep"))} == {
        "connect_timeout": "12",
        "tcp_user_timeout": "12000",
        "keepalives": "1",
        "keepalives_idle": "4",
        "keepalives_interval": "2",
        "keepalives_count": "2",
    }


def test_sqlite_connections_are_durable_and_wait_for_the_lock(tmp_path: Path) -> None:
    engine = make_engine(None, tmp_path, busy_timeout=12.5)
    try:
        with engine.connect() as connection:
            pragma = connection.exec_driver_sql
            assert pragma("PRAGMA journal_mode").scalar() == "wal"
            assert pragma("PRAGMA synchronous").scalar() == 2  # FULL
            assert pragma("PRAGMA busy_timeout").scalar() == 12_500
            assert pragma("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_sqlite_write_transactions_take_the_lock_up_front(tmp_path: Path) -> None:
    first = make_engine(None, tmp_path)
    impatient = make_engine(None, tmp_path, busy_timeout=0.2)
    try:
        with writer(first).begin() as holding:
            holding.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        with writer(first).begin() as holding:
            # Only a read so far, yet the write lock is held: another writer must wait.
            holding.exec_driver_sql("SELECT count(*) FROM t").scalar()
            started = time.monotonic()
            locked = pytest.raises(OperationalError, match="database is locked")
            with locked, writer(impatient).begin():
                pass
            assert time.monotonic() - started >= 0.15  # it waited for the busy timeout
            # Readers are not blocked by the writer (write-ahead logging).
            with impatient.begin() as reading:
                assert reading.exec_driver_sql("SELECT count(*) FROM t").scalar() == 0
            holding.exec_driver_sql("INSERT INTO t VALUES (1)")
        with writer(impatient).begin() as later:
            later.exec_driver_sql("INSERT INTO t VALUES (2)")
    finally:
        first.dispose()
        impatient.dispose()


def test_a_waiting_sqlite_writer_proceeds_once_the_lock_is_free(tmp_path: Path) -> None:
    first, second = make_engine(None, tmp_path), make_engine(None, tmp_path)
    try:
        with writer(first).begin() as setup:
            setup.exec_driver_sql("CREATE TABLE t (x INTEGER)")
        holding = threading.Event()

        def hold() -> None:
            with writer(first).begin() as connection:
                connection.exec_driver_sql("INSERT INTO t VALUES (1)")
                holding.set()
                time.sleep(0.3)

        thread = threading.Thread(target=hold)
        thread.start()
        assert holding.wait(10)
        started = time.monotonic()
        with writer(second).begin() as connection:
            connection.exec_driver_sql("INSERT INTO t VALUES (2)")
        waited = time.monotonic() - started
        thread.join()
        assert waited >= 0.1
        with second.connect() as connection:
            assert connection.exec_driver_sql("SELECT count(*) FROM t").scalar() == 2
    finally:
        first.dispose()
        second.dispose()


def test_the_migrations_build_exactly_the_schema_of_the_tables(db: Database) -> None:
    engine = make_engine(db.url, db.data_dir)
    try:
        assert current_revision(engine) is None
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), metadata)
        assert differences == []
        upgrade(engine)  # at head already: nothing to do
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_the_migrations_go_down_and_up_again(db: Database) -> None:
    engine = make_engine(db.url, db.data_dir)
    try:
        upgrade(engine)
        config = alembic_config()
        with writer(engine).begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine)
        assert {"evaluations", "batches"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_opening_a_store_migrates_unless_told_not_to(db: Database) -> None:
    store = Store.open(db.url, db.data_dir, migrate=False)
    try:
        assert current_revision(store.engine) is None
    finally:
        store.dispose()
    store = Store.open(db.url, db.data_dir)
    try:
        assert current_revision(store.engine) == head_revision()
        with store.engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM evaluations")).scalar() == 0
    finally:
        store.dispose()


def test_postgresql_tests_skip_saying_why_or_fail_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Nothing listens on port 1: what the tests do when PostgreSQL is down.
    monkeypatch.setattr(storage_helpers, "PG_URL", "postgresql://postgres@127.0.0.1:1/test")
    monkeypatch.delenv("CI", raising=False)
    down = r"does not answer at postgresql://postgres@127\.0\.0\.1:1/test .*run \.ci/pg"
    with pytest.raises(pytest.skip.Exception, match=down):
        storage_helpers.require_postgres()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        storage_helpers.require_postgres()


def test_batches_stored_before_revision_0002_have_no_running_count(db: Database) -> None:
    engine = make_engine(db.url, db.data_dir)
    config = alembic_config()
    try:
        with writer(engine).begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
            connection.execute(
                text(
                    "INSERT INTO evaluations (id, owner, status, created_at, updated_at, "
                    "n_batches, n_samples, config, meta, warnings, totals) VALUES ('e', '', "
                    "'open', :t, :t, 1, 5, '{}', '{}', '{}', :b)"
                ),
                {"t": "2026-12-01 00:00:00", "b": b""},
            )
            connection.execute(
                text(
                    "INSERT INTO batches (evaluation_pk, seq, batch_id, content_hash, "
                    "n_samples, received_at, answer, stats) SELECT pk, 1, 'a', :h, 5, :t, "
                    "'{}', :b FROM evaluations"
                ),
                {"h": b"h", "t": "2026-12-01 00:00:00", "b": b""},
            )
        upgrade(engine)
        with engine.connect() as connection:
            kept = connection.execute(text("SELECT samples_through FROM batches")).all()
        assert kept == [(None,)]
    finally:
        engine.dispose()
    store = Store.open(db.url, db.data_dir)
    try:
        assert store.samples_through(None, "e", 1) == 5
    finally:
        store.dispose()
