"""The access service's own schema (SQLAlchemy Core). Migrations live in migrations/."""
from sqlalchemy import (
                        BigInteger,
                        Boolean,
                        Column,
                        ForeignKey,
                        Index,
                        Integer,
                        LargeBinary,
                        MetaData,
                        String,
                        Table,
                        Text,
                        UniqueConstraint,
)
from sqlalchemy.sql.expression import false

from gatehouse.db import UTCDateTime

metadata = MetaData()

sites = Table(
    "sites", metadata,
    Column("site_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("emergency", Boolean, nullable=False, server_default=false()),
    Column("emergency_reason", String(200), nullable=True),
    Column("emergency_since", UTCDateTime, nullable=True),
    Column("emergency_by", String(100), nullable=True),
)

units = Table(
    "units", metadata,
    Column("unit_id", String(64), primary_key=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False, index=True),
    Column("building", String(64), nullable=False),
    Column("unit", String(64), nullable=False),
    Column("room", String(64), nullable=False),
    Column("floor_area_m2", String(16), nullable=True),     # a decimal as text: never a float
)

zones = Table(
    "zones", metadata,
    Column("zone_id", String(64), primary_key=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("anti_passback", String(10), nullable=False),
    Column("timed_minutes", Integer, nullable=False, server_default="0"),
    Column("reset_minute", Integer, nullable=False, server_default="0"),
)

time_profiles = Table(
    "time_profiles", metadata,
    Column("profile_id", String(64), primary_key=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("periods", Text, nullable=False),                  # JSON [{day, start, end}] in minutes
)

holidays = Table(
    "holidays", metadata,
    Column("site_id", String(64), ForeignKey("sites.site_id"), primary_key=True),
    Column("day", String(10), primary_key=True),              # local date YYYY-MM-DD
    Column("name", String(200), nullable=False),
)

# Ed25519 keys that sign QR codes; only the public half goes to the gates.
signing_keys = Table(
    "signing_keys", metadata,
    Column("key_id", String(16), primary_key=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False, index=True),
    Column("private_key", LargeBinary, nullable=False),
    Column("public_key", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("retired_at", UTCDateTime, nullable=True),
)

gates = Table(
    "gates", metadata,
    Column("gate_id", String(64), primary_key=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("zone_id", String(64), ForeignKey("zones.zone_id"), nullable=True),
    Column("direction", String(3), nullable=True),            # "in" or "out" of its zone
)

people = Table(
    "people", metadata,
    Column("person_id", String(64), primary_key=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("kind", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("role", String(64), nullable=True),
    Column("unit_id", String(64), ForeignKey("units.unit_id"), nullable=True, index=True),
    Column("phone", String(24), nullable=True),
)

access_groups = Table(
    "access_groups", metadata,
    Column("group_id", String(64), primary_key=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("time_profile_id", String(64), ForeignKey("time_profiles.profile_id"), nullable=True),
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
    Column("kind", String(8), nullable=False, server_default="card"),   # card or pin
    Column("replaced_by", String(64), nullable=True),
    UniqueConstraint("site_id", "card_number", name="uq_cards_site_card"),
)

# Changes to what the gates must know, and events that follow from stored data (alarms,
# visitor arrivals), written in the same transaction as the change and published in order by
# a relay: nothing is committed without reaching the bus eventually.
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

visitors = Table(
    "visitors", metadata,
    Column("visitor_id", String(64), primary_key=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("phone", String(24), nullable=True),
    Column("id_number_masked", String(32), nullable=True),   # never the full ID number
    Column("host_unit_id", String(64), ForeignKey("units.unit_id"), nullable=True),
    Column("host_person_id", String(64), ForeignKey("people.person_id"), nullable=True),
    Column("purpose", String(200), nullable=False),
    Column("registered_by", String(100), nullable=False),
    Column("walk_in", Boolean, nullable=False),
    Column("registered_at", UTCDateTime, nullable=False),
)

visitor_passes = Table(
    "visitor_passes", metadata,
    Column("pass_id", String(64), primary_key=True),
    Column("visitor_id", String(64), ForeignKey("visitors.visitor_id"), nullable=False, index=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False),
    Column("gate_ids", Text, nullable=False),                 # JSON list
    Column("valid_from", UTCDateTime, nullable=False),
    Column("valid_until", UTCDateTime, nullable=False),
    Column("max_uses", Integer, nullable=False),
    Column("uses", Integer, nullable=False, server_default="0"),
    Column("status", String(20), nullable=False),
    Column("arrived_at", UTCDateTime, nullable=True),
)

alarms = Table(
    "alarms", metadata,
    Column("alarm_id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("site_id", String(64), nullable=False),
    Column("gate_id", String(64), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("state", String(12), nullable=False),              # raised, acknowledged, cleared
    Column("raised_at", UTCDateTime, nullable=False),
    Column("source_event_id", String(36), nullable=False),
    Column("details", Text, nullable=False),
    Column("acknowledged_by", String(100), nullable=True),
    Column("acknowledged_at", UTCDateTime, nullable=True),
    Column("cleared_by", String(100), nullable=True),
    Column("cleared_at", UTCDateTime, nullable=True),
    UniqueConstraint("source_event_id", name="uq_alarms_source_event"),
    Index("ix_alarms_open", "site_id", "state"),
)

presence = Table(
    "presence", metadata,
    Column("zone_id", String(64), primary_key=True),
    Column("person_id", String(64), primary_key=True),
    Column("site_id", String(64), nullable=False),
    Column("inside", Boolean, nullable=False),
    Column("since", UTCDateTime, nullable=False),
    Column("gate_id", String(64), nullable=False),
)

# Every operator action that changes what happens at a gate: who, what, why, when.
audit_log = Table(
    "audit_log", metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("site_id", String(64), nullable=False, index=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("action", String(40), nullable=False),
    Column("target", String(200), nullable=False),
    Column("details", Text, nullable=False),
)

remote_opens = Table(
    "remote_opens", metadata,
    Column("command_id", String(36), primary_key=True),
    Column("site_id", String(64), nullable=False),
    Column("gate_id", String(64), nullable=False),
    Column("requested_by", String(100), nullable=False),
    Column("reason", String(200), nullable=False),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("status", String(12), nullable=False),             # sent, executed, failed, undelivered
    Column("done_at", UTCDateTime, nullable=True),
)
