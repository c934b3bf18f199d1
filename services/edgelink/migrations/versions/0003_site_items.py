"""edgelink: the projection holds every kind of site item, not only credentials

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 07:30:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'items',
        sa.Column('site_id', sa.String(length=64), nullable=False),
        sa.Column('item_key', sa.String(length=200), nullable=False),
        sa.Column('version', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('source_revision', sa.BigInteger(), nullable=False),
        sa.Column('payload', sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint('site_id', 'item_key'))
    op.create_index('ix_items_site_version', 'items', ['site_id', 'version'])
    op.drop_index('ix_credentials_site_version', table_name='credentials')
    op.drop_table('credentials')
    # The projection starts again: a new epoch per site, rebuilt from access's snapshot.
    op.execute("DELETE FROM site_versions")


def downgrade() -> None:
    raise NotImplementedError("the credentials-only projection cannot be rebuilt from items")
