"""The patrol service's own schema (SQLAlchemy Core). Migrations live in migrations/.

Two processes write it: the nameko service (console RPC, round generation, missed-round
detection, the outbox relay) and the handheld gRPC server (sign-in, scans, incidents).
Times are UTC. Positions are WGS84 degrees (floats: they are measurements, not money).
"""
from sqlalchemy import (
    Boolean,
    Column,
    Float,
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

guards = Table(
    "guards", metadata,
    Column("guard_id", String(64), primary_key=True),
    Column("site_id", String(64), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("pin_hash", String(200), nullable=False),          # scrypt$n$r$p$salt$hash
    Column("token_epoch", Integer, nullable=False),           # raised on a new PIN: older tokens stop working
    Column("active", Boolean, nullable=False),
    Column("failed_sign_ins", Integer, nullable=False),
    Column("locked_until", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

shifts = Table(
    "shifts", metadata,
    Column("shift_id", String(64), primary_key=True),
    Column("site_id", String(64), nullable=False, index=True),
    Column("name", String(200), nullable=False),
)

shift_members = Table(
    "shift_members", metadata,
    Column("shift_id", String(64), ForeignKey("shifts.shift_id"), nullable=False),
    Column("guard_id", String(64), ForeignKey("guards.guard_id"), nullable=False, index=True),
    UniqueConstraint("shift_id", "guard_id", name="uq_shift_members"),
)

# The site's checkpoint-QR signing keys (Ed25519). Only the public halves leave the centre.
site_keys = Table(
    "site_keys", metadata,
    Column("key_id", String(8), primary_key=True),
    Column("site_id", String(64), nullable=False, index=True),
    Column("private_key", LargeBinary, nullable=False),
    Column("public_key", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("active", Boolean, nullable=False),                # signs new codes; retired keys still verify
)

secrets = Table(
    "secrets", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)

checkpoints = Table(
    "checkpoints", metadata,
    Column("checkpoint_id", String(64), primary_key=True),
    Column("site_id", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("tag_kind", String(3), nullable=False),            # nfc, qr
    Column("nfc_uid", String(20), nullable=True),             # upper-case hex
    Column("qr_version", Integer, nullable=False),            # a reprinted code supersedes older ones
    Column("latitude", Float, nullable=False),
    Column("longitude", Float, nullable=False),
    Column("radius_m", Float, nullable=False),
    UniqueConstraint("site_id", "nfc_uid", name="uq_checkpoints_site_nfc"),
)

routes = Table(
    "routes", metadata,
    Column("route_id", String(64), primary_key=True),
    Column("site_id", String(64), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("ordered", Boolean, nullable=False),
    Column("risk_level", String(8), nullable=False),          # low, normal, high, critical
    Column("timezone", String(64), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

route_checkpoints = Table(
    "route_checkpoints", metadata,
    Column("route_id", String(64), ForeignKey("routes.route_id"), nullable=False),
    Column("checkpoint_id", String(64), ForeignKey("checkpoints.checkpoint_id"), nullable=False, index=True),
    Column("seq", Integer, nullable=False),
    UniqueConstraint("route_id", "checkpoint_id", name="uq_route_checkpoints"),
)

schedules = Table(
    "schedules", metadata,
    Column("schedule_id", String(64), primary_key=True),
    Column("site_id", String(64), nullable=False),
    Column("route_id", String(64), ForeignKey("routes.route_id"), nullable=False, index=True),
    Column("spec", Text, nullable=False),                     # JSON of rules.Schedule's fields
    Column("guard_id", String(64), nullable=True),            # assigned to a guard ...
    Column("shift_id", String(64), nullable=True),            # ... or to a shift
    Column("active", Boolean, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

rounds = Table(
    "rounds", metadata,
    Column("round_id", String(64), primary_key=True),
    Column("site_id", String(64), nullable=False),
    Column("schedule_id", String(64), nullable=True),         # None: planned by hand
    Column("route_id", String(64), ForeignKey("routes.route_id"), nullable=False),
    Column("guard_id", String(64), nullable=True),
    Column("shift_id", String(64), nullable=True),
    Column("walked_by", String(64), nullable=True),           # the guard whose scans count
    Column("planned_start", UTCDateTime, nullable=False),
    Column("due_by", UTCDateTime, nullable=False),            # planned start + expected duration
    Column("grace_until", UTCDateTime, nullable=False),       # late scans accepted (flagged) until then
    Column("status", String(12), nullable=False),
    Column("on_time", Boolean, nullable=True),
    Column("started_at", UTCDateTime, nullable=True),         # first counted scan (device time)
    Column("closed_at", UTCDateTime, nullable=True),
    Column("result", Text, nullable=True),                    # JSON: visited, missing, skipped, out_of_order
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("schedule_id", "planned_start", name="uq_rounds_schedule_start"),
    Index("ix_rounds_open_grace", "status", "grace_until"),
    Index("ix_rounds_site_start", "site_id", "planned_start"),
    Index("ix_rounds_guard_start", "guard_id", "planned_start"),
)

batches = Table(
    "batches", metadata,
    Column("batch_id", String(64), primary_key=True),         # the handheld's; a retry keeps it
    Column("site_id", String(64), nullable=False),
    Column("guard_id", String(64), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("device_sent_at", UTCDateTime, nullable=True),
    Column("first_received_at", UTCDateTime, nullable=False),
    Column("last_received_at", UTCDateTime, nullable=False),
    Column("clock_skew_ms", Integer, nullable=True),          # device clock - centre clock at upload
    Column("uploads", Integer, nullable=False),
)

scans = Table(
    "scans", metadata,
    Column("scan_id", String(64), primary_key=True),          # the handheld's UUID: stored once
    Column("site_id", String(64), nullable=False),
    Column("guard_id", String(64), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("batch_id", String(64), nullable=False),
    Column("round_id", String(64), nullable=True, index=True),
    Column("checkpoint_id", String(64), nullable=False),
    Column("method", String(3), nullable=False),
    Column("device_time", UTCDateTime, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("clock_skew_ms", Integer, nullable=True),
    Column("latitude", Float, nullable=True),
    Column("longitude", Float, nullable=True),
    Column("accuracy_m", Float, nullable=True),
    Column("photo", LargeBinary, nullable=True),
    Column("timing", String(12), nullable=False),             # on_time, late, early, after_grace, untrusted
    Column("counted", Boolean, nullable=False),               # counts towards its round
    Column("flags", String(200), nullable=False),             # comma-separated
    Column("review", Boolean, nullable=False),                # a supervisor should look at it
    Column("verdict", String(8), nullable=True),              # the supervisor's: accepted, rejected
    Column("reviewed_by", String(100), nullable=True),
    Column("reviewed_at", UTCDateTime, nullable=True),
    Column("review_note", String(500), nullable=True),
    Index("ix_scans_guard_time", "guard_id", "device_time"),
    Index("ix_scans_review", "site_id", "review"),
)

refused_scans = Table(
    "refused_scans", metadata,
    Column("scan_id", String(64), primary_key=True),
    Column("site_id", String(64), nullable=False),
    Column("guard_id", String(64), nullable=False),
    Column("device_id", String(64), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("detail", String(300), nullable=False),
    Column("method", String(3), nullable=False),
    Column("tag", String(1100), nullable=False),
    Column("device_time", UTCDateTime, nullable=True),
    Column("received_at", UTCDateTime, nullable=False),
    Index("ix_refused_site", "site_id", "received_at"),
)

# Raised missed-round alerts: once per (round, kind, checkpoint); checkpoint "" for a whole round.
alerts = Table(
    "alerts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("round_id", String(64), nullable=False),
    Column("kind", String(10), nullable=False),               # round, checkpoint
    Column("checkpoint_id", String(64), nullable=False),
    Column("raised_at", UTCDateTime, nullable=False),
    UniqueConstraint("round_id", "kind", "checkpoint_id", name="uq_alerts_once"),
)

incidents = Table(
    "incidents", metadata,
    Column("incident_id", String(64), primary_key=True),      # the handheld's UUID
    Column("site_id", String(64), nullable=False),
    Column("round_id", String(64), nullable=True),
    Column("checkpoint_id", String(64), nullable=True),
    Column("type", String(20), nullable=False),
    Column("severity", String(8), nullable=False),
    Column("text", Text, nullable=False),
    Column("photo", LargeBinary, nullable=True),
    Column("photo_type", String(4), nullable=True),
    Column("reported_by", String(64), nullable=False),
    Column("reported_at", UTCDateTime, nullable=True),        # device time
    Column("received_at", UTCDateTime, nullable=False),
    Column("status", String(10), nullable=False),             # open, assigned, fixed, verified
    Column("assigned_to", String(100), nullable=True),
    Column("fixed_by", String(100), nullable=True),
    Column("verified_by", String(100), nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_incidents_site_status", "site_id", "status"),
)

incident_steps = Table(
    "incident_steps", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("incident_id", String(64), ForeignKey("incidents.incident_id"), nullable=False, index=True),
    Column("step", String(10), nullable=False),               # reported, assign, fix, verify, reject
    Column("status", String(10), nullable=False),             # the status it led to
    Column("actor", String(100), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("note", Text, nullable=False),
)

# Events to publish after commit (round_missed, incident_reported), sent in order by the relay.
outbox = outbox_table(metadata, "patrol")
