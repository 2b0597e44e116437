"""idempotency_keys in one scope ("*"): a key names one request, whatever the endpoint

Rows written before were scoped per endpoint ("POST /start-timer"). Left so, a key stored before the upgrade
and retried after it would not be found under "*", and its action would run again (found by a review).
Each key keeps its newest row; a key that was used on two endpoints (allowed before) keeps one, and a retry
on the other endpoint is then refused as a different request: never run twice.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every row but the newest of its key goes (ties broken by scope, so exactly one stays).
    op.execute(
        sa.text(
            "DELETE FROM idempotency_keys WHERE EXISTS ("
            " SELECT 1 FROM idempotency_keys AS other"
            " WHERE other.key = idempotency_keys.key AND ("
            "  other.created_at > idempotency_keys.created_at"
            "  OR (other.created_at = idempotency_keys.created_at AND other.scope > idempotency_keys.scope)))"
        )
    )
    op.execute(sa.text("UPDATE idempotency_keys SET scope = '*' WHERE scope <> '*'"))


def downgrade() -> None:
    # Which endpoint a row was for is not kept; an older release looking under its per-endpoint scopes would not
    # find these keys for their remaining hours. Downgrade only with no request in flight that may be retried.
    pass
