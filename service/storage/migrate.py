"""Bring the evaluation store's schema to the latest revision, safely from many processes.

:func:`upgrade` runs ``alembic upgrade head`` inside one write transaction:

* on PostgreSQL it first takes a transaction-level advisory lock
  (``pg_advisory_xact_lock``), so replicas starting together upgrade one at a
  time; the others then find the schema at head and do nothing. PostgreSQL's
  DDL is transactional: a failed upgrade changes nothing;
* on SQLite the transaction is ``BEGIN IMMEDIATE`` (:func:`engine.writer`),
  which takes the database's write lock before alembic even reads its version
  table, with the same effect.

As a command (:mod:`service.storage.__main__`): ``python -m service.storage upgrade [URL]``
and ``python -m service.storage revision "message"``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from service.storage.engine import writer

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: PostgreSQL advisory lock key of the store's migrations (any fixed 64-bit number).
ADVISORY_LOCK_KEY = 0x6C6F_7373_6576_616C


def alembic_config() -> Config:
    """Alembic's configuration for the store's migrations (no ini file needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    # Module names of revisions start with a letter (r0001_...), so they can be imported.
    config.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
    return config


def head_revision() -> str:
    """The latest revision in ``migrations/versions``."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migration revisions found in {MIGRATIONS}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; ``None`` before the first upgrade."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Upgrade the database to the latest revision; a no-op when it is there already."""
    config = alembic_config()
    with writer(engine).begin() as connection:
        if connection.dialect.name == "postgresql":
            lock = text("SELECT pg_advisory_xact_lock(:key)")
            connection.execute(lock, {"key": ADVISORY_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
