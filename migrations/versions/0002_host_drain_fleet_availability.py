"""host drain and fleet availability from hosts

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 20:21:59.203103
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import planner.db.base

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fleets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("availability_from_hosts", sa.Boolean(), server_default=sa.text("false"), nullable=False)
        )

    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("drained_at", planner.db.base.UtcDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("drained_at")

    with op.batch_alter_table("fleets", schema=None) as batch_op:
        batch_op.drop_column("availability_from_hosts")
