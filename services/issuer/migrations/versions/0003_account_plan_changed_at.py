"""account: when its plan last changed

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00.000000

The issuer applies platform.plans.changed to the account and its keys. Core NATS gives no order
across publishers or redeliveries, so the account keeps the `occurred_at` of the last change applied
and ignores one older than it. Null on existing accounts: no change has been applied to them yet.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("issuer_accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("plan_changed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("issuer_accounts", schema=None) as batch_op:
        batch_op.drop_column("plan_changed_at")
