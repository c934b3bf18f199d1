"""The parking service's own schema (SQLAlchemy Core). Migrations live in migrations/.

Money is integer fen with the currency beside it; times are UTC.
"""
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
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

from gatehouse.db import UTCDateTime
from gatehouse.outbox import outbox_table

metadata = MetaData()

lots = Table(
    "lots", metadata,
    Column("lot_id", String(64), primary_key=True),
    Column("site_id", String(64), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("shared_capacity", Integer, nullable=False),      # spaces not owned by anyone
    Column("tariff", Text, nullable=False),                  # JSON of rules.Tariff's fields
    Column("tolerate_province", Boolean, nullable=False),    # a misread province character still matches
    Column("exit_window_minutes", Integer, nullable=False),  # after an online payment
)

lanes = Table(
    "lanes", metadata,
    Column("lane_id", String(64), primary_key=True),
    Column("lot_id", String(64), ForeignKey("lots.lot_id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("direction", String(5), nullable=False),          # entry, exit, both
    Column("policy", Text, nullable=False),                  # JSON of rules.LanePolicy's fields
)

vehicles = Table(
    "vehicles", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("lot_id", String(64), ForeignKey("lots.lot_id"), nullable=False),
    Column("plate", String(16), nullable=False),             # normalized
    Column("kind", String(12), nullable=False),              # resident, monthly, visitor, staff, blacklist
    Column("holder", String(64), nullable=False),            # person or unit id, or the host for visitors
    Column("valid_from", Date, nullable=True),
    Column("valid_until", Date, nullable=True),
    Column("grace_days", Integer, nullable=False),
    Column("free_minutes", Integer, nullable=False),
    Column("fixed_space", Boolean, nullable=False),
    Column("note", String(200), nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("lot_id", "plate", name="uq_vehicles_lot_plate"),
)

sessions = Table(
    "sessions", metadata,
    Column("session_id", String(36), primary_key=True),
    Column("lot_id", String(64), nullable=False),
    Column("site_id", String(64), nullable=False),
    Column("plate", String(16), nullable=False),
    Column("kind", String(12), nullable=False),
    Column("entry_event_id", String(36), nullable=True),
    Column("entered_at", UTCDateTime, nullable=True),        # None: no entry record
    Column("entry_lane", String(64), nullable=True),
    Column("exit_event_id", String(36), nullable=True),
    Column("left_at", UTCDateTime, nullable=True),
    Column("exit_lane", String(64), nullable=True),
    Column("fee_fen", BigInteger, nullable=True),
    Column("paid_fen", BigInteger, nullable=False),
    Column("paid_until", UTCDateTime, nullable=True),        # exit window of an online payment
    Column("currency", String(3), nullable=False),
    Column("status", String(10), nullable=False),            # open, closed
    Column("flags", String(200), nullable=False),            # e.g. "long_stay,offline_entry,no_entry_record"
    UniqueConstraint("entry_event_id", name="uq_sessions_entry_event"),
    UniqueConstraint("exit_event_id", name="uq_sessions_exit_event"),
    Index("ix_sessions_open", "lot_id", "plate", "status"),
)

payments = Table(
    "payments", metadata,
    Column("payment_id", String(64), primary_key=True),      # the caller's idempotency key
    Column("session_id", String(36), ForeignKey("sessions.session_id"), nullable=False, index=True),
    Column("amount_fen", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("method", String(10), nullable=False),            # cash, online
    Column("recorded_by", String(100), nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
)

# Reads the lane was not sure of: an operator confirms the plate (or rejects the read).
read_queue = Table(
    "read_queue", metadata,
    Column("read_id", String(36), primary_key=True),          # the edge event's id
    Column("lot_id", String(64), nullable=False),
    Column("lane_id", String(64), nullable=False),
    Column("plate_read", String(16), nullable=False),
    Column("confidence", Integer, nullable=False),            # per mille
    Column("crop_jpeg", LargeBinary, nullable=True),
    Column("read_at", UTCDateTime, nullable=False),
    Column("status", String(10), nullable=False),             # pending, confirmed, rejected
    Column("confirmed_plate", String(16), nullable=True),
    Column("operator", String(100), nullable=True),
    Column("decided_at", UTCDateTime, nullable=True),
    Index("ix_read_queue_pending", "lot_id", "status"),
)

# Events to publish after commit (session_closed, exit_cleared), sent in order by a relay.
outbox = outbox_table(metadata, "parking")
