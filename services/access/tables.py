"""The access service's own schema (SQLAlchemy Core). Migrations live in migrations/."""
from sqlalchemy import (
                        BigInteger,
                        Boolean,
                        Column,
                        ForeignKey,
                        Index,
                        Integer,
                        MetaData,
                        String,
                        Table,
                        Text,
                        UniqueConstraint,
)

from gatehouse.db import UTCDateTime

metadata = MetaData()

sites = Table(
    "sites", metadata,
    Column("site_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("timezone", String(64), nullable=False),
)

gates = Table(
    "gates", metadata,
    Column("gate_id", String(64), primary_key=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
)

people = Table(
    "people", metadata,
    Column("person_id", String(64), primary_key=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

access_groups = Table(
    "access_groups", metadata,
    Column("group_id", String(64), primary_key=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
)

group_gates = Table(
    "group_gates", metadata,
    Column("group_id", String(64), ForeignKey("access_groups.group_id"), primary_key=True),
    Column("gate_id", String(64), ForeignKey("gates.gate_id"), primary_key=True),
)

group_members = Table(
    "group_members", metadata,
    Column("group_id", String(64), ForeignKey("access_groups.group_id"), primary_key=True),
    Column("person_id", String(64), ForeignKey("people.person_id"), primary_key=True),
    Index("ix_group_members_person", "person_id"),
)

cards = Table(
    "cards", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False),
    Column("card_number", String(64), nullable=False),
    Column("person_id", String(64), ForeignKey("people.person_id"), nullable=False, index=True),
    Column("status", String(20), nullable=False),
    Column("valid_from", UTCDateTime, nullable=True),
    Column("valid_until", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("site_id", "card_number", name="uq_cards_site_card"),
)

# Changes to what the gates must know, written in the same transaction as the change and
# published by a relay: a change is never committed without reaching the bus eventually.
credential_outbox = Table(
    "credential_outbox", metadata,
    Column("revision", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("site_id", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("published", Boolean, nullable=False, default=False),
    Index("ix_credential_outbox_unpublished", "published", "revision"),
)

access_events = Table(
    "access_events", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("event_id", String(36), nullable=False),
    Column("site_id", String(64), nullable=False),
    Column("agent_id", String(64), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("gate_id", String(64), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("device_seq", BigInteger, nullable=False),
    Column("device_time", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("offline", Boolean, nullable=False),
    Column("card_number", String(64), nullable=True),
    Column("person_id", String(64), nullable=True),
    Column("reason", String(64), nullable=True),
    Column("attributes", Text, nullable=False),
    UniqueConstraint("event_id", name="uq_access_events_event_id"),
    Index("ix_access_events_site_id", "site_id", "id"),
    Index("ix_access_events_device", "site_id", "device_id", "device_seq"),
)
