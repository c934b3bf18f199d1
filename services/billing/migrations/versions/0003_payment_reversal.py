"""billing: a mistaken payment can be reversed (payments.reversed_at, reversal_reason)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 10:25:00
"""
import sqlalchemy as sa
from alembic import op

import gatehouse.db

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reversed_at', gatehouse.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('reversal_reason', sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_column('reversal_reason')
        batch_op.drop_column('reversed_at')
