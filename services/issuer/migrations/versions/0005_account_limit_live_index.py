"""account custom limit; index for the live-key quota

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00.000000

`issuer_accounts.rate_limit`: the custom limit platform.plans.changed gives an enterprise account,
the ceiling of its keys' own custom limits (no key is set above its account). Null elsewhere.

`ix_issuer_keys_account_status_expiry`: creating a key counts the account's keys that are not revoked
or expired (CNX_MAX_KEYS_PER_ACCOUNT); every column that count reads is in this index, so it reads no
table row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("issuer_accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rate_limit", sa.JSON(), nullable=True))
    with op.batch_alter_table("issuer_keys", schema=None) as batch_op:
        batch_op.create_index(
            "ix_issuer_keys_account_status_expiry",
            ["account_id", "status", "expires_at", "grace_until"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("issuer_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_issuer_keys_account_status_expiry")
    with op.batch_alter_table("issuer_accounts", schema=None) as batch_op:
        batch_op.drop_column("rate_limit")
