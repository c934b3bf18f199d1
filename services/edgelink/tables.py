"""edgelink's own schema: registered agents and the per-site projection agents sync from."""
from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, MetaData, String, Table

from gatehouse.db import UTCDateTime

metadata = MetaData()

agents = Table(
    "agents", metadata,
    Column("agent_id", String(64), primary_key=True),
    Column("site_id", String(64), nullable=False, index=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

site_versions = Table(
    "site_versions", metadata,
    Column("site_id", String(64), primary_key=True),
    Column("version", BigInteger, nullable=False),
    # A new identity whenever the projection starts from scratch; cursors are per epoch.
    Column("epoch", String(32), nullable=True),
)

# One row per site item (a credential, group, time profile, zone, the site settings): its
# newest state, stamped with the site version at which it last changed. An agent at cursor C
# needs exactly the rows with version > C. The payload is the serialized `Change` (without its
# version), so a sync streams stored bytes instead of rebuilding messages.
items = Table(
    "items", metadata,
    Column("site_id", String(64), primary_key=True),
    Column("item_key", String(200), primary_key=True),
    Column("version", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("source_revision", BigInteger, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Index("ix_items_site_version", "site_id", "version"),
)
