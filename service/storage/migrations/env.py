"""Alembic's environment for the evaluation store: online, on a connection handed over.

:func:`service.storage.migrate.upgrade` opens the transaction (serialized across
processes) and passes its connection as ``config.attributes["connection"]``;
the migrations run inside that transaction, so a failed upgrade leaves the
schema as it was. There is no offline (``--sql``) mode.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from service.storage.schema import metadata

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError(
        "the evaluation store's migrations run through service.storage.migrate.upgrade, "
        "which hands over a database connection; none was given"
    )
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
