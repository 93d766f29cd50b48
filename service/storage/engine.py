"""Database engines for the evaluation store: an SQLite file by default, or PostgreSQL.

``database_url(None, data_dir)`` is ``sqlite:///<data_dir>/evaluations.sqlite3``
(the directory is created); ``postgresql://`` and ``postgres://`` URLs are
driven by psycopg 3 (``postgresql+psycopg://``). Nothing else is accepted: an
in-memory SQLite database would lose every evaluation on restart, and other
drivers are not installed.

SQLite connections are set up for several worker processes sharing one file,
and for durability:

* ``journal_mode=WAL``: readers never wait for the writer, nor it for them;
* ``synchronous=FULL``: a commit returns only once the write-ahead log is on
  disk, so an acknowledged batch survives ``kill -9`` and, as far as SQLite can
  promise, a power loss (``NORMAL`` would lose the last commits on power loss);
* a busy timeout (30 s by default): a writer waits for the lock, it does not
  fail with "database is locked";
* ``foreign_keys=ON``, so that deleting an evaluation takes its batches along.

Transactions: the sqlite3 module's own transaction handling is turned off and
SQLAlchemy emits ``BEGIN`` itself (the recipe of SQLAlchemy's pysqlite
documentation, "Enabling Non-Legacy SQLite Transactional Modes"). On the engine
returned by :func:`writer`, that is ``BEGIN IMMEDIATE``: the write lock is taken
up front, so a read-then-write transaction never has to upgrade its lock
(which would fail at once with ``SQLITE_BUSY`` instead of waiting), and write
transactions run one at a time across all processes. Read transactions use a
plain (deferred) ``BEGIN`` and a WAL snapshot, and take no lock.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import ArgumentError

#: The SQLite file's name inside the service's data directory.
DEFAULT_FILE = "evaluations.sqlite3"
#: Execution option that makes SQLite's ``BEGIN`` a ``BEGIN IMMEDIATE``.
WRITE_OPTION = "loss_service_write"
#: Seconds an SQLite connection waits for another process's write lock.
DEFAULT_BUSY_TIMEOUT = 30.0

#: The errors that may say the database cannot serve a request now (see
#: :func:`unavailable`), by their classes.
UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sqlite3.OperationalError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
#: SQLite's primary result codes of a database that cannot serve now (busy or locked past
#: the busy timeout, out of memory, read-only, I/O error, disk full, file not openable,
#: lock protocol): the same statement may succeed later. sqlite3 raises its
#: ``OperationalError`` for a statement's own errors too (no such table, a syntax error).
_SQLITE_UNAVAILABLE = frozenset({5, 6, 7, 8, 10, 13, 14, 15})


def unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database cannot serve now, rather than that a statement
    is wrong: PostgreSQL unreachable, refusing connections or gone mid-statement, the
    pool out of connections, SQLite's file unreadable, its disk full or a lock held past
    the busy timeout (DB-API's ``OperationalError`` and ``InterfaceError``, a connection
    already closed). The same request may succeed later: a batch sent again under its id
    is counted once."""
    if isinstance(error, sa_exc.TimeoutError):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        return error.connection_invalidated or (
            error.orig is not None and error.orig is not error and unavailable(error.orig)
        )
    if isinstance(error, sqlite3.OperationalError):
        code = getattr(error, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _SQLITE_UNAVAILABLE
    return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError)


def parse_database_url(url: str) -> URL:
    """``url`` as the store connects to it (psycopg 3 for PostgreSQL), with nothing made on
    disk. Raises ``ValueError`` for a URL that is not ``sqlite:///<file>`` or
    ``postgresql://...``; its message never shows the password."""
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise ValueError(
            "the database URL is not a URL; expected sqlite:///<path> or "
            "postgresql://user@host:port/database"
        ) from error
    scheme = parsed.drivername
    shown = parsed.render_as_string(hide_password=True)
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        _check_libpq_url(parsed, shown)
        return parsed.set(drivername="postgresql+psycopg")
    if scheme in ("sqlite", "sqlite+pysqlite"):
        database = parsed.database or ""
        if database in ("", ":memory:") or "mode=memory" in str(parsed.query):
            raise ValueError(
                f"the database URL {shown!r} is an in-memory SQLite database, which would "
                "lose every evaluation on restart; expected sqlite:///<path to a file>"
            )
        return parsed.set(drivername="sqlite+pysqlite")
    raise ValueError(
        f"the database URL {shown!r} uses {scheme!r}; expected sqlite:///<path> or "
        "postgresql://user@host:port/database"
    )


#: libpq's values of ``sslmode``.
_SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


def _check_libpq_url(parsed: URL, shown: str) -> None:
    """What libpq would refuse of a PostgreSQL URL at every connection (a port out of
    range, a parameter it does not know, an ``sslmode`` it has not), refused now."""
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ValueError(
            f"the database URL {shown!r} has port {parsed.port}; expected a port in 1–65535"
        )
    for key, value in parsed.query.items():
        values = value if isinstance(value, tuple) else (value,)
        try:
            make_conninfo("", **{key: values[-1]})
        except psycopg.ProgrammingError:
            raise ValueError(
                f"the database URL {shown!r} has the parameter {key!r}, which libpq does not "
                "know; expected libpq's connection parameters (sslmode, options, "
                "application_name...)"
            ) from None
        if key == "sslmode" and values[-1] not in _SSLMODES:
            raise ValueError(
                f"the database URL {shown!r} has sslmode={values[-1]!r}; expected one of "
                f"{sorted(_SSLMODES)}"
            )


def database_url(url: str | None, data_dir: Path) -> URL:
    """The URL to connect to: ``url`` (see :func:`parse_database_url`) or the default
    file; an SQLite file's directory is created.

    Raises ``ValueError`` for a URL that is not ``sqlite:///<file>`` or
    ``postgresql://...``; its message never shows the password.
    """
    if not url:
        data_dir.mkdir(parents=True, exist_ok=True)
        return URL.create("sqlite+pysqlite", database=str(data_dir / DEFAULT_FILE))
    parsed = parse_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
    return parsed


class JsonObject(dict[str, Any]):
    """A JSON object as the database gives it back (lists for tuples, string keys), with
    the text that stores it (``json.dumps``'s, the engine's serializer unless another is
    given): written by :func:`dumps` without serializing it again. Made by the store;
    not to be changed (its text would no longer say it)."""

    __slots__ = ("text",)

    text: str


def dumps(value: Any) -> str:
    """The store's engines' JSON serializer: ``json.dumps``, or a :class:`JsonObject`'s
    own text."""
    if type(value) is JsonObject:
        return value.text
    return json.dumps(value)


def make_engine(
    url: str | None,
    data_dir: Path,
    *,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    **options: Any,
) -> Engine:
    """An engine for ``url`` (see :func:`database_url`), set up as this module says.
    ``busy_timeout``: seconds a statement waits for SQLite's write lock; on PostgreSQL,
    for a connection (of the pool, or made), and for the network (see
    :func:`_libpq_timeouts`).

    ``options`` go to :func:`sqlalchemy.create_engine` (``pool_size``, ``echo``...);
    JSON is written by :func:`dumps` unless ``json_serializer`` says otherwise.
    Create engines in the process that uses them (after a fork, not before).
    """
    target = database_url(url, data_dir)
    options.setdefault("json_serializer", dumps)
    if target.get_backend_name() == "sqlite":
        engine = create_engine(target, connect_args={"timeout": busy_timeout}, **options)
        _set_up_sqlite(engine, busy_timeout)
        return engine
    options.setdefault("pool_pre_ping", True)
    # A connection's waits are bounded too: ``busy_timeout`` for connecting, for data sent
    # that the network does not acknowledge, and for an idle connection whose peer is gone
    # (keepalive probes); for a connection of the pool.
    options.setdefault("pool_timeout", busy_timeout)
    connect_args = _libpq_timeouts(busy_timeout)
    connect_args.update(options.pop("connect_args", {}))
    return create_engine(target, connect_args=connect_args, **options)


def _libpq_timeouts(seconds: float) -> dict[str, int]:
    """libpq's parameters that bound a connection's waits to about ``seconds``: connecting
    (``connect_timeout``, whole seconds, at least 2: libpq's least), data the network does
    not acknowledge (``tcp_user_timeout``), and a peer gone silent (keepalive probes after
    a third of it, two more a sixth of it apart)."""
    return {
        "connect_timeout": max(2, math.ceil(seconds)),
        "tcp_user_timeout": max(1, round(seconds * 1000)),
        "keepalives": 1,
        "keepalives_idle": max(1, round(seconds / 3)),
        "keepalives_interval": max(1, round(seconds / 6)),
        "keepalives_count": 2,
    }


def writer(engine: Engine) -> Engine:
    """The same engine (same pool), whose transactions take SQLite's write lock up front."""
    return engine.execution_options(**{WRITE_OPTION: True})


def _journal_mode_wal(cursor: sqlite3.Cursor, busy_timeout: float) -> object:
    """Switch to write-ahead logging. On a new file that several processes open at
    once, the switch can answer "database is locked" at once instead of waiting (SQLite
    does not always call its busy handler for it): it is tried again until the busy
    timeout."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            (mode,) = cursor.execute("PRAGMA journal_mode = WAL").fetchone()
            return mode
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _set_up_sqlite(engine: Engine, busy_timeout: float) -> None:
    milliseconds = round(busy_timeout * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(connection: sqlite3.Connection, _record: object) -> None:
        # SQLAlchemy emits BEGIN itself (_on_begin): the sqlite3 module must not.
        connection.isolation_level = None
        cursor = connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {milliseconds}")
            mode = _journal_mode_wal(cursor, busy_timeout)
            if str(mode).lower() != "wal":
                raise RuntimeError(
                    f"SQLite cannot use write-ahead logging for this database (journal "
                    f"mode stays {mode!r}); the evaluation store needs a database file "
                    "on a local file system"
                )
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
