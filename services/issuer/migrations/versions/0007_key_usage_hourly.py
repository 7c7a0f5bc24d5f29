"""key usage per hour: issuer_key_usage

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10 10:00:00.000000

`issuer_key_usage` adds up the validators' KeyUsed reports per key and hour by outcome (allowed, and
refused: the key was found but turned away), for `GET /v2/keys/{id}/usage` and the console's usage
chart. The primary key (key_id, hour) serves both the upsert and the chart's range read.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "issuer_key_usage",
        sa.Column("key_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("allowed", sa.Integer(), nullable=False),
        sa.Column("refused", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "hour"),
    )


def downgrade() -> None:
    op.drop_table("issuer_key_usage")
