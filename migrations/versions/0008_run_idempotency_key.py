"""runs.idempotency_key: the key of the request that started a run

An action that succeeded but whose answer the database failed to store under its Idempotency-Key left the key
claimed `in_progress`, and a retry with it was told, past the abandoned cutoff, that the first request "never
finished (the service stopped while it ran)", while its run read `ok`. With the key on the run, that 409 names
the run instead. Nullable, written only by this release: runs written before, or by an older worker still
running during the upgrade, have none, and their keys get the old answer.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No index: it is read only for a key whose claim is left in progress, among the runs started after the claim
    # (ix_runs_created_at), and every run start would pay for one.
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("idempotency_key")
