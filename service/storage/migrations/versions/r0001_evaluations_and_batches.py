"""Evaluations and their batches.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

Key = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Document = sa.JSON()


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("pk", Key, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n_batches", sa.BigInteger(), nullable=False),
        sa.Column("n_samples", sa.BigInteger(), nullable=False),
        sa.Column("config", Document, nullable=False),
        sa.Column("meta", Document, nullable=False),
        sa.Column("facts", Document, nullable=True),
        sa.Column("warnings", Document, nullable=False),
        sa.Column("totals", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_evaluations"),
        sa.UniqueConstraint("id", name="uq_evaluations_id"),
        sa.CheckConstraint("status IN ('open', 'closed')", name="ck_evaluations_status"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_evaluations_owner_pk", "evaluations", ["owner", "pk"])
    op.create_index("ix_evaluations_updated_at", "evaluations", ["updated_at"])
    op.create_table(
        "batches",
        sa.Column("evaluation_pk", Key, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("batch_id", sa.String(128), nullable=False),
        sa.Column("content_hash", sa.LargeBinary(64), nullable=False),
        sa.Column("n_samples", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answer", Document, nullable=False),
        sa.Column("stats", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("evaluation_pk", "seq", name="pk_batches"),
        sa.UniqueConstraint("evaluation_pk", "batch_id", name="uq_batches_evaluation_pk_batch_id"),
        sa.ForeignKeyConstraint(
            ["evaluation_pk"],
            ["evaluations.pk"],
            name="fk_batches_evaluation_pk_evaluations",
            ondelete="CASCADE",
        ),
    )


def downgrade() -> None:
    op.drop_table("batches")
    op.drop_index("ix_evaluations_updated_at", table_name="evaluations")
    op.drop_index("ix_evaluations_owner_pk", table_name="evaluations")
    op.drop_table("evaluations")
