"""actions.external_id as TEXT: a 10-part WhatsApp message's SIDs (10 x 34 characters) did not fit in 255

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite cannot alter a column's type: batch mode copies the table (PostgreSQL alters it in place,
    # varchar to text without a rewrite).
    with op.batch_alter_table("actions") as batch:
        batch.alter_column("external_id", type_=sa.Text(), existing_type=sa.String(255), existing_nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("actions") as batch:
        batch.alter_column("external_id", type_=sa.String(255), existing_type=sa.Text(), existing_nullable=True)
