"""rate-limit rings: an exact moving window shared by every worker (RATE_LIMIT_STORAGE=database)

The sliding-window counter before this weighed the previous minute's hits as if they were spread evenly, so a
client that spent its whole budget at the end of one minute got nearly all of it again in the next (109 calls
in 55 s with a limit of 60, found by a multi-worker review). A moving window needs each key's last `limit`
hit times: one row per slot of a ring. Counter rows written before the upgrade expire within two minutes and
are purged; nothing needs converting. Stop the older release's workers before starting this one: they count
under other keys (`.../<window number>`), so while both run a client has a budget with each.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_hits",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("slot", sa.Integer(), primary_key=True),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_rate_limit_hits_expires_at", "rate_limit_hits", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_rate_limit_hits_expires_at", table_name="rate_limit_hits")
    op.drop_table("rate_limit_hits")
