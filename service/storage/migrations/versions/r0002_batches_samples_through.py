"""Each batch keeps the evaluation's sample count once it was counted.

A replay answers the first answer again, its running counts included: with this
column, without summing the batches before it. Batches stored before keep null
(their count is summed when they are replayed).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("batches", sa.Column("samples_through", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("samples_through")
