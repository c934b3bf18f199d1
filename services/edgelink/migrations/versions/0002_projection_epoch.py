"""edgelink: projection epoch

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 04:43:08.839810
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('site_versions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('epoch', sa.String(length=32), nullable=True))
    # projections that existed before epochs: one fixed epoch, different from any new one
    op.execute("UPDATE site_versions SET epoch = 'before-epochs' WHERE epoch IS NULL")


def downgrade() -> None:
    with op.batch_alter_table('site_versions', schema=None) as batch_op:
        batch_op.drop_column('epoch')
