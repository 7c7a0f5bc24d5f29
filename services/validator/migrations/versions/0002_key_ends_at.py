"""validator_keys: when each key ended for good, to take it out after the retention

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 10:00:00.000000

`ends_at` (epoch seconds; null: never, an active key without expiry) is what the validator prunes by
(CNX_PROJECTION_RETENTION after it) and what hydration skips by; indexed for the prune's range delete.
Existing rows are filled from their views (`projection.ends_at`): a key already revoked or expired
whose event time this store never kept counts from the migration, so it answers REVOKED/EXPIRED one
retention longer, then goes.
"""

import time
from collections.abc import Sequence

import orjson
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 5000


def upgrade() -> None:
    with op.batch_alter_table("validator_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ends_at", sa.Float(), nullable=True))
        batch_op.create_index(batch_op.f("ix_validator_keys_ends_at"), ["ends_at"], unique=False)
    from services.validator.projection import INF, ends_at

    def timestamp(value: str | None) -> float:
        from datetime import datetime

        return INF if value is None else datetime.fromisoformat(value).timestamp()

    now = time.time()
    bind = op.get_bind()
    keys = sa.table(
        "validator_keys", sa.column("key_id", sa.String), sa.column("view", sa.String), sa.column("ends_at")
    )
    after = ""
    while True:
        rows = bind.execute(
            sa.select(keys.c.key_id, keys.c.view)
            .where(keys.c.key_id > after)
            .order_by(keys.c.key_id)
            .limit(_BATCH)
        ).all()
        if not rows:
            break
        after = rows[-1][0]
        updates = []
        for key_id, text in rows:
            view = orjson.loads(text)
            grace = view.get("grace_until")
            end = ends_at(
                view["status"],
                timestamp(view.get("expires_at")),
                None if grace is None else timestamp(grace),
                now,
            )
            if end != INF:
                updates.append({"k": key_id, "e": end})
        if updates:
            bind.execute(
                keys.update().where(keys.c.key_id == sa.bindparam("k")).values(ends_at=sa.bindparam("e")),
                updates,
            )


def downgrade() -> None:
    with op.batch_alter_table("validator_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_validator_keys_ends_at"))
        batch_op.drop_column("ends_at")
