"""account: the previous webhook secret and until when it still signs

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00.000000

A rotation of the account's webhook secret no longer cuts receivers off: the secret it replaces keeps
signing beside the new one for CNX_WEBHOOK_SECRET_OVERLAP (Standard Webhooks allows several
signatures). The account keeps that previous secret, sealed like the current one, and the end of its
overlap. Null on existing accounts: nothing has been rotated under this rule yet.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("issuer_accounts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("webhook_secret_previous_sealed", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("webhook_secret_previous_until", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("issuer_accounts", schema=None) as batch_op:
        batch_op.drop_column("webhook_secret_previous_until")
        batch_op.drop_column("webhook_secret_previous_sealed")
