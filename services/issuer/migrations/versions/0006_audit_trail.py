"""audit trail: issuer_audit and the indexes of its listing

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 10:00:00.000000

`issuer_audit` records every change through the management API and every platform action (who, what,
on which key, from which address), each row written in the transaction of the change it records, and
the management calls refused (`auth.denied`). Append-only: nothing updates or deletes a row.

GET /v2/audit reads one account's entries newest first by `seq` (keyset pagination); each filter has an
index whose equality columns come before `seq` (action, target key, actor key), and `since` reads
(account_id, at). `seq` is 64 bits on PostgreSQL; on SQLite it stays INTEGER, the rowid alias.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "issuer_audit",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("account_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("actor_key_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("target_key_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("ip", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("user_agent", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    with op.batch_alter_table("issuer_audit", schema=None) as batch_op:
        batch_op.create_index("ix_issuer_audit_account_seq", ["account_id", "seq"], unique=False)
        batch_op.create_index(
            "ix_issuer_audit_account_action_seq", ["account_id", "action", "seq"], unique=False
        )
        batch_op.create_index(
            "ix_issuer_audit_account_target_seq", ["account_id", "target_key_id", "seq"], unique=False
        )
        batch_op.create_index(
            "ix_issuer_audit_account_actor_seq", ["account_id", "actor_key_id", "seq"], unique=False
        )
        batch_op.create_index("ix_issuer_audit_account_at", ["account_id", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("issuer_audit", schema=None) as batch_op:
        batch_op.drop_index("ix_issuer_audit_account_at")
        batch_op.drop_index("ix_issuer_audit_account_actor_seq")
        batch_op.drop_index("ix_issuer_audit_account_target_seq")
        batch_op.drop_index("ix_issuer_audit_account_action_seq")
        batch_op.drop_index("ix_issuer_audit_account_seq")
    op.drop_table("issuer_audit")
