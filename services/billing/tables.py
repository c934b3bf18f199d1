"""The billing service's own schema (SQLAlchemy Core). Migrations live in migrations/.

Money is integer fen with the currency beside it; times are UTC; rates are exact integers
(see rules.py for the units). The unique constraints are what make runs, payments, late fees
and dunning safe to repeat: the code relies on them, not on checking first.
"""
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
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
from gatehouse.outbox import outbox_table

metadata = MetaData()
ID = BigInteger().with_variant(Integer, "sqlite")

sites = Table(
    "sites", metadata,
    Column("site_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),             # printed on receipts
    Column("currency", String(3), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("rounding", String(10), nullable=False),           # rules.ROUNDINGS, per invoice line
    Column("late_fees", String(5), nullable=False),           # allocation: late fees "first" or "last"
    Column("late_fee_ppm", Integer, nullable=False),          # per day, of the unpaid principal
    Column("late_fee_grace_days", Integer, nullable=False),
    Column("late_fee_cap_ppm", Integer, nullable=False),      # of the invoice principal; 0 = no cap
    Column("due_days", Integer, nullable=False),              # due date = period start + due_days
    Column("dunning_days", String(100), nullable=False),      # JSON list of days after due, e.g. [7, 30, 60]
)

# Per-site sequences (invoice, receipt, credit_note): the row is updated in the transaction that
# uses the number, so issued numbers have no gaps and no repeats.
counters = Table(
    "counters", metadata,
    Column("site_id", String(64), primary_key=True),
    Column("kind", String(20), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

accounts = Table(
    "accounts", metadata,
    Column("account_id", ID, primary_key=True, autoincrement=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False),
    Column("unit_id", String(64), nullable=False),            # e.g. "1-1-101"
    Column("building", String(32), nullable=False),
    Column("floor", String(16), nullable=False),
    Column("area_x100", Integer, nullable=False),             # built-up area, hundredths of a m2
    Column("unit_type", String(32), nullable=False),
    Column("payer", String(200), nullable=False),
    Column("contacts", Text, nullable=False),                 # JSON list of {name, phone, email}
    Column("currency", String(3), nullable=False),
    Column("receivable_fen", BigInteger, nullable=False),     # owed on issued invoices (= ledger receivable)
    Column("prepaid_fen", BigInteger, nullable=False),        # 预缴 credit (= ledger prepaid)
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("site_id", "unit_id", name="uq_accounts_site_unit"),
)

fee_items = Table(
    "fee_items", metadata,
    Column("fee_item_id", ID, primary_key=True, autoincrement=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False),
    Column("code", String(40), nullable=False),
    Column("name", String(200), nullable=False),
    Column("kind", String(10), nullable=False),               # rules.FEE_KINDS
    Column("active", Boolean, nullable=False),
    UniqueConstraint("site_id", "code", name="uq_fee_items_site_code"),
)

rates = Table(
    "rates", metadata,
    Column("fee_item_id", ID, ForeignKey("fee_items.fee_item_id"), primary_key=True),
    Column("scope", String(10), primary_key=True),           # default, unit_type, building, unit
    Column("scope_value", String(64), primary_key=True),     # "" for default
    Column("rate_mfen", BigInteger, nullable=False),         # milli-fen per m2 per month (area) or per month
)

passes = Table(   # monthly parking passes and other per-account recurring fees
    "passes", metadata,
    Column("account_id", ID, ForeignKey("accounts.account_id"), primary_key=True),
    Column("fee_item_id", ID, ForeignKey("fee_items.fee_item_id"), primary_key=True),
    Column("monthly_fen", BigInteger, nullable=False),
    Column("quantity", Integer, nullable=False),
    Column("start_month", String(7), nullable=True),         # "2026-01", inclusive
    Column("end_month", String(7), nullable=True),
)

runs = Table(
    "runs", metadata,
    Column("run_id", ID, primary_key=True, autoincrement=True),
    Column("site_id", String(64), ForeignKey("sites.site_id"), nullable=False),
    Column("period", String(10), nullable=False),
    Column("cycle", String(10), nullable=False),
    Column("attempt", Integer, nullable=False),              # a deliberate re-run of a finished period
    Column("status", String(10), nullable=False),            # running, done
    Column("issue", Boolean, nullable=False, server_default="1"),  # False: leave drafts for review
    Column("total", Integer, nullable=False),                # accounts to visit
    Column("done", Integer, nullable=False),                 # accounts visited (committed)
    Column("cursor", BigInteger, nullable=False),            # last account_id committed
    Column("invoices_created", Integer, nullable=False),
    Column("lines_created", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime, nullable=True),
    UniqueConstraint("site_id", "period", "cycle", "attempt", name="uq_runs_site_period_attempt"),
)

invoices = Table(
    "invoices", metadata,
    Column("invoice_id", ID, primary_key=True, autoincrement=True),
    Column("site_id", String(64), nullable=False),
    Column("account_id", ID, ForeignKey("accounts.account_id"), nullable=False),
    Column("period", String(80), nullable=False),            # "2026-11", or "charge:<key>", "parking:<session>"
    Column("kind", String(10), nullable=False),              # cycle, charge, parking
    Column("status", String(12), nullable=False),            # draft, issued, partly_paid, paid, void
    Column("number_seq", BigInteger, nullable=True),         # per-site sequence, given at issue
    Column("number", String(80), nullable=True),
    Column("currency", String(3), nullable=False),
    Column("total_fen", BigInteger, nullable=False),         # principal: the sum of the lines
    Column("paid_fen", BigInteger, nullable=False),          # principal paid (payments and prepaid)
    Column("credited_fen", BigInteger, nullable=False),      # principal cancelled by credit notes
    Column("late_fee_fen", BigInteger, nullable=False),      # late fee charged so far (rounded)
    Column("late_paid_fen", BigInteger, nullable=False),
    Column("late_accrued_micro", BigInteger, nullable=False),  # exact accrual, micro-fen
    Column("late_through", Date, nullable=True),             # last day accrued
    Column("period_start", Date, nullable=True),
    Column("due_date", Date, nullable=False),
    Column("run_id", ID, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("issued_at", UTCDateTime, nullable=True),
    UniqueConstraint("account_id", "period", name="uq_invoices_account_period"),
    UniqueConstraint("site_id", "number_seq", name="uq_invoices_site_number"),
    Index("ix_invoices_site_status", "site_id", "status", "due_date"),
    Index("ix_invoices_account_status", "account_id", "status"),
)

lines = Table(
    "lines", metadata,
    Column("line_id", ID, primary_key=True, autoincrement=True),
    Column("invoice_id", ID, ForeignKey("invoices.invoice_id"), nullable=False, index=True),
    Column("account_id", ID, nullable=False),
    Column("fee_item_id", ID, nullable=False),
    Column("period", String(80), nullable=False),
    Column("description", String(300), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    UniqueConstraint("account_id", "fee_item_id", "period", name="uq_lines_account_item_period"),
)

payments = Table(
    "payments", metadata,
    Column("payment_id", String(36), primary_key=True),
    Column("site_id", String(64), nullable=False),
    Column("idempotency_key", String(100), nullable=False),
    Column("account_id", ID, nullable=True),                 # None for a parking session's fee
    Column("target", String(200), nullable=False),           # "account" or "parking_session:<id>"
    Column("method", String(10), nullable=False),            # rules.METHODS
    Column("amount_fen", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("allocated_fen", BigInteger, nullable=False),
    Column("prepaid_fen", BigInteger, nullable=False),       # the remainder kept as 预缴
    Column("payer", String(200), nullable=False),
    Column("operator", String(100), nullable=False),
    Column("reference", String(100), nullable=False),        # bank reference, provider reference
    Column("receipt_seq", BigInteger, nullable=False),
    Column("receipt_number", String(80), nullable=False, unique=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("reversed_at", UTCDateTime, nullable=True),        # a counter mistake put right (冲正)
    Column("reversal_reason", String(300), nullable=True),
    UniqueConstraint("idempotency_key", name="uq_payments_key"),
    UniqueConstraint("site_id", "receipt_seq", name="uq_payments_site_receipt"),
    Index("ix_payments_account", "account_id"),
)

allocations = Table(
    "allocations", metadata,
    Column("allocation_id", ID, primary_key=True, autoincrement=True),
    Column("source", String(12), nullable=False),            # payment, prepaid, credit_note
    Column("source_id", String(36), nullable=False),         # payment_id, invoice_id drawing prepaid, note id
    Column("invoice_id", ID, nullable=False, index=True),
    Column("component", String(10), nullable=False),         # principal, late_fee
    Column("amount_fen", BigInteger, nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

credit_notes = Table(
    "credit_notes", metadata,
    Column("credit_note_id", ID, primary_key=True, autoincrement=True),
    Column("site_id", String(64), nullable=False),
    Column("idempotency_key", String(100), nullable=False, unique=True),
    Column("account_id", ID, nullable=False),
    Column("invoice_id", ID, nullable=False),
    Column("number", String(80), nullable=False, unique=True),
    Column("amount_fen", BigInteger, nullable=False),
    Column("to_invoice_fen", BigInteger, nullable=False),
    Column("to_prepaid_fen", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("reason", String(300), nullable=False),
    Column("operator", String(100), nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

refunds = Table(
    "refunds", metadata,
    Column("refund_id", ID, primary_key=True, autoincrement=True),
    Column("site_id", String(64), nullable=False),
    Column("idempotency_key", String(100), nullable=False, unique=True),
    Column("account_id", ID, nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("method", String(10), nullable=False),
    Column("reason", String(300), nullable=False),
    Column("operator", String(100), nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

late_fee_accruals = Table(   # one row per invoice per job day: the job can run twice and charge once
    "late_fee_accruals", metadata,
    Column("invoice_id", ID, primary_key=True),
    Column("through", Date, primary_key=True),
    Column("days", Integer, nullable=False),
    Column("unpaid_principal_fen", BigInteger, nullable=False),
    Column("accrued_micro", BigInteger, nullable=False),     # the invoice's total after this row
    Column("charged_fen", BigInteger, nullable=False),       # what this row added to late_fee_fen
)

journal = Table(
    "journal", metadata,
    Column("entry_id", ID, primary_key=True, autoincrement=True),
    Column("txn", String(36), nullable=False, index=True),   # one money movement
    Column("site_id", String(64), nullable=False),
    Column("kind", String(20), nullable=False),              # charge, payment, prepaid_draw, late_fee, ...
    Column("ref", String(100), nullable=False),
    Column("debit", String(80), nullable=False),
    Column("credit", String(80), nullable=False),
    Column("amount_fen", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

intents = Table(   # online payments: created here, paid at the provider, settled by webhook or query
    "intents", metadata,
    Column("intent_id", String(36), primary_key=True),       # our reference at the provider
    Column("site_id", String(64), nullable=False),
    Column("idempotency_key", String(100), nullable=False, unique=True),
    Column("provider", String(20), nullable=False),
    Column("account_id", ID, nullable=True),
    Column("target", Text, nullable=False),                  # JSON: {"kind": "account"} or parking_session
    Column("amount_fen", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("payer", String(200), nullable=False),
    Column("provider_ref", String(100), nullable=True, unique=True),
    Column("pay_url", String(500), nullable=True),
    Column("status", String(12), nullable=False),            # created, pending, succeeded, failed, mismatch
    Column("payment_id", String(36), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_intents_status", "status", "created_at"),
)

parking_fees = Table(   # parking.session_closed, recorded once per session
    "parking_fees", metadata,
    Column("session_id", String(36), primary_key=True),
    Column("event_id", String(36), nullable=False),
    Column("site_id", String(64), nullable=False),
    Column("lot_id", String(64), nullable=False),
    Column("plate", String(16), nullable=False),
    Column("holder", String(64), nullable=True),
    Column("fee_fen", BigInteger, nullable=False),
    Column("paid_fen", BigInteger, nullable=False),
    Column("lane_paid_fen", BigInteger, nullable=False),     # paid at the lane (not through billing)
    Column("due_fen", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("outcome", String(12), nullable=False),           # settled, charged, uncollected
    Column("account_id", ID, nullable=True),
    Column("invoice_id", ID, nullable=True),
    Column("left_at", UTCDateTime, nullable=True),
    Column("recorded_at", UTCDateTime, nullable=False),
)

dunning = Table(
    "dunning", metadata,
    Column("invoice_id", ID, primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("account_id", ID, nullable=False),
    Column("days_overdue", Integer, nullable=False),
    Column("published", Boolean, nullable=False),            # False: a later step was reached at once
    Column("at", UTCDateTime, nullable=False),
)

outbox = outbox_table(metadata, "billing")
