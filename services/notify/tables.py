"""The notify service's own schema (SQLAlchemy Core). Migrations live in migrations/.

Notify keeps its own directory of recipients (the same ids as access's people, or staff and
user ids); it never reads another service's tables. Times are UTC.
"""
from sqlalchemy import (
    Boolean,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from gatehouse.db import UTCDateTime

metadata = MetaData()

recipients = Table(
    "recipients", metadata,
    Column("recipient_id", String(64), primary_key=True),
    Column("site_id", String(64), nullable=False),
    Column("name", String(200), nullable=False),
    Column("kind", String(10), nullable=False),               # resident, staff, user
    Column("unit_id", String(64), nullable=True),             # residents
    Column("roles", String(300), nullable=False),             # ",security,cashier," (staff); "" otherwise
    Column("language", String(8), nullable=False),            # zh-CN, en
    Column("timezone", String(64), nullable=False),           # the site's, for quiet hours and times shown
    Column("email", String(254), nullable=True),
    Column("phone", String(32), nullable=True),
    Column("webhook_url", String(500), nullable=True),
    Column("webhook_secret", String(200), nullable=True),
    Column("quiet_start", String(5), nullable=True),          # "22:00" local; None: no quiet hours
    Column("quiet_end", String(5), nullable=True),            # "07:00"
    Column("active", Boolean, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_recipients_unit", "site_id", "unit_id"),
    Index("ix_recipients_kind", "site_id", "kind"),
)

# only what differs from the defaults in rules.DEFAULT_CHANNELS
preferences = Table(
    "preferences", metadata,
    Column("recipient_id", String(64), nullable=False),
    Column("category", String(20), nullable=False),           # visitor, alarm, patrol, billing, parking, digest
    Column("channel", String(10), nullable=False),            # inbox, email, sms, webhook
    Column("enabled", Boolean, nullable=False),
    PrimaryKeyConstraint("recipient_id", "category", "channel", name="pk_preferences"),
)

# every event taken, once: its fan-out is written in the same transaction
consumed_events = Table(
    "consumed_events", metadata,
    Column("event_id", String(120), primary_key=True),
    Column("event_type", String(60), nullable=False),
    Column("site_id", String(64), nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("messages", Integer, nullable=False),
    Column("duplicates", Integer, nullable=False),           # how often it arrived again (redeliveries)
    # the event itself, kept while it may still need replaying to recipients added late
    Column("payload", Text, nullable=True),
    Index("ix_consumed_events_received", "received_at"),
)

# the outbox of messages: one per (event, recipient, channel), enforced by the database
messages = Table(
    "messages", metadata,
    Column("message_id", String(36), primary_key=True),
    Column("event_id", String(120), nullable=False),
    Column("event_type", String(60), nullable=False),
    Column("site_id", String(64), nullable=False),
    Column("recipient_id", String(64), nullable=False),
    Column("channel", String(10), nullable=False),            # inbox, email, sms, webhook; "none" if unroutable
    Column("category", String(20), nullable=False),
    Column("priority", String(10), nullable=False),           # critical, normal, low
    Column("address", String(500), nullable=True),
    Column("language", String(8), nullable=False),
    Column("subject", String(300), nullable=False),
    Column("body", Text, nullable=False),
    Column("data", Text, nullable=True),                      # the event's payload (JSON), for webhooks
    # queued -> sending -> sent (provider accepted) / delivered (recipient has it), or
    # failed (permanent: bad address, template, unknown recipient) or dead (retries exhausted);
    # held: a low-priority item waiting for the digest, then digested; replayed: a miss (channel
    # "none") resolved when the directory gained someone for it
    Column("status", String(10), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=True),    # due time; while sending: end of the lease
    Column("last_error", Text, nullable=True),
    Column("provider_answer", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime, nullable=True),
    Column("delivered_at", UTCDateTime, nullable=True),
    Column("read_at", UTCDateTime, nullable=True),            # inbox
    Column("digest_id", String(36), nullable=True),           # the digest message that carried this item
    UniqueConstraint("event_id", "recipient_id", "channel", name="uq_messages_event_recipient_channel"),
    Index("ix_messages_due", "channel", "status", "next_attempt_at"),
    Index("ix_messages_inbox", "recipient_id", "channel", "created_at"),
    Index("ix_messages_status", "status", "created_at"),
)

# every try of a message, with what the provider said
attempts = Table(
    "attempts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(36), nullable=False, index=True),
    Column("at", UTCDateTime, nullable=False),
    Column("outcome", String(10), nullable=False),            # sent, delivered, retry, failed, dead, wait
    Column("answer", Text, nullable=True),
)

# what the delivery worker last saw of each channel (down: its messages wait)
channel_state = Table(
    "channel_state", metadata,
    Column("channel", String(10), primary_key=True),
    Column("state", String(5), nullable=False),               # up, down
    Column("since", UTCDateTime, nullable=False),
    Column("checked_at", UTCDateTime, nullable=False),
    Column("detail", Text, nullable=True),
)
