"""measurement quarantine, host approval, indexes matching the measurement filters

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07 22:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("measurements", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quarantine_reason", sa.Text(), nullable=True))
        batch_op.create_index(
            "ix_measurements_model_stage",
            ["model_id", "stage", "gpu_family_id", "recipe_id", "batch", "height", "width"],
            unique=False,
        )
        batch_op.create_index("ix_measurements_status", ["status"], unique=False)

    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("approved", sa.Boolean(), server_default=sa.text("true"), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("approved")

    with op.batch_alter_table("measurements", schema=None) as batch_op:
        batch_op.drop_index("ix_measurements_status")
        batch_op.drop_index("ix_measurements_model_stage")
        batch_op.drop_column("quarantine_reason")
