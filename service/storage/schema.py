"""The evaluation store's tables (SQLAlchemy Core), as the latest migration leaves them.

``evaluations``: one row per streaming evaluation.

* ``pk``: surrogate key, in creation order (lists go newest first by it);
* ``id``: the public id, 32 hex digits of 128 random bits; ``owner``: an
  opaque string (a hash of the API key; ``""`` without keys);
* ``status`` ``open`` or ``closed``; ``created_at``, ``updated_at`` (UTC; the
  time-to-live counts from ``updated_at``);
* ``n_batches``, ``n_samples``: the running counts;
* ``config``, ``meta``: JSON as given at creation (``meta`` is the caller's
  ``metadata``); ``facts``: JSON fixed atomically with the first accepted
  batch (classes, label encoding, heads, resolved losses and metrics), null
  before it; ``warnings``: JSON ``{code: number of batches that raised it}``;
* ``totals``: the exact running totals of the batches' statistics
  (:mod:`service.storage.blobs`), updated in the transaction that stores
  each batch, so reading an evaluation never goes through its batches.

``batches``: one row per accepted batch, keyed by ``(evaluation_pk, seq)``
where ``seq`` counts 1, 2, ... in arrival (commit) order; ``batch_id`` is
unique per evaluation, with its ``content_hash``, ``n_samples``,
``received_at``, the ``answer`` (JSON) that was given for it and its own
``stats``, from which the totals can be rebuilt; ``samples_through``, the
evaluation's sample count once the batch was counted (its answer's running count;
null for batches stored before revision 0002, whose count is summed on demand).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    TypeDecorator,
    UniqueConstraint,
)

#: Constraint names are fixed so that later migrations can refer to them.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

#: 64-bit keys; on SQLite an INTEGER PRIMARY KEY (the rowid) is already 64 bits.
Key = BigInteger().with_variant(Integer(), "sqlite")
#: JSON documents, kept as text on both databases: PostgreSQL's binary JSON (jsonb) would
#: reorder the keys, and the order of heads, losses and metrics is the caller's.
Document = JSON()

ID_LENGTH = 32
OWNER_LENGTH = 128
BATCH_ID_LENGTH = 128
HASH_LENGTH = 64


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out: timestamptz on PostgreSQL, UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("the evaluation store takes aware datetimes (with a time zone)")
        value = value.astimezone(UTC)
        # SQLite keeps text without an offset: every stored time is UTC.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


evaluations = Table(
    "evaluations",
    metadata,
    Column("pk", Key, primary_key=True, autoincrement=True),
    Column("id", String(ID_LENGTH), nullable=False),
    Column("owner", String(OWNER_LENGTH), nullable=False),
    Column("status", String(8), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    Column("n_batches", BigInteger(), nullable=False),
    Column("n_samples", BigInteger(), nullable=False),
    Column("config", Document, nullable=False),
    Column("meta", Document, nullable=False),
    Column("facts", Document, nullable=True),
    Column("warnings", Document, nullable=False),
    Column("totals", LargeBinary(), nullable=False),
    UniqueConstraint("id"),
    CheckConstraint("status IN ('open', 'closed')", name="status"),
    Index(None, "owner", "pk"),
    Index(None, "updated_at"),
    sqlite_autoincrement=True,
)

batches = Table(
    "batches",
    metadata,
    Column(
        "evaluation_pk",
        Key,
        ForeignKey("evaluations.pk", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("seq", BigInteger(), nullable=False),
    Column("batch_id", String(BATCH_ID_LENGTH), nullable=False),
    Column("content_hash", LargeBinary(HASH_LENGTH), nullable=False),
    Column("n_samples", BigInteger(), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("answer", Document, nullable=False),
    Column("stats", LargeBinary(), nullable=False),
    Column("samples_through", BigInteger(), nullable=True),
    PrimaryKeyConstraint("evaluation_pk", "seq"),
    UniqueConstraint("evaluation_pk", "batch_id"),
)
