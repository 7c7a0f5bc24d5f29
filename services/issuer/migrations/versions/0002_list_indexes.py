"""key list indexes: one per filter, each ending in seq

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 16:30:00.000000

A status or environment filter walked every key of the account in `seq` order (or, on PostgreSQL,
scanned the table and sorted) when few keys matched: 30-35 ms per page at 100,000 keys. With these
indexes each filter is an ordered index range that stops after a page. The single-column indexes on
`account_id` (a prefix of ix_issuer_keys_account_seq) and `status` (never selective alone) are
dropped: every key creation paid for them and no query needs them.
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("issuer_keys", schema=None) as batch_op:
        batch_op.create_index(
            "ix_issuer_keys_account_status_seq", ["account_id", "status", "seq"], unique=False
        )
        batch_op.create_index(
            "ix_issuer_keys_account_env_status_seq",
            ["account_id", "environment", "status", "seq"],
            unique=False,
        )
        batch_op.drop_index("ix_issuer_keys_status")
        batch_op.drop_index("ix_issuer_keys_account_id")


def downgrade() -> None:
    with op.batch_alter_table("issuer_keys", schema=None) as batch_op:
        batch_op.create_index("ix_issuer_keys_account_id", ["account_id"], unique=False)
        batch_op.create_index("ix_issuer_keys_status", ["status"], unique=False)
        batch_op.drop_index("ix_issuer_keys_account_env_status_seq")
        batch_op.drop_index("ix_issuer_keys_account_status_seq")
