"""Billing records: SQL functions `fn(conn, ...)`, each run by the caller in one transaction.

Bad input raises InvalidInput / NotFound (from gatehouse.records) before anything is written,
so a refused call leaves nothing behind. Every money movement posts one balanced journal
transaction (see post()); `verify_ledger` proves the cached balances equal the entries.
"""
from __future__ import annotations

import contextlib
import json
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import and_, bindparam, func, insert, literal_column, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from gatehouse.bus import event_payload
from gatehouse.db import insert_ignore
from gatehouse.outbox import queue
from gatehouse.records import InvalidInput, NotFound, now, require
from services.billing import rules
from services.billing.tables import (
    accounts,
    allocations,
    counters,
    credit_notes,
    dunning,
    fee_items,
    intents,
    invoices,
    journal,
    late_fee_accruals,
    lines,
    outbox,
    parking_fees,
    passes,
    payments,
    rates,
    refunds,
    runs,
    sites,
)

__all__ = ["InvalidInput", "NotFound", "IntegrityError"]
OPEN = ("issued", "partly_paid")
CHUNK = 2000


def _rule(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except rules.RuleError as exc:
        raise InvalidInput(str(exc)) from None


def _key(key, what="idempotency_key") -> str:
    if not isinstance(key, str) or not key.strip() or len(key) > 100:
        raise InvalidInput(f"{what} must be a non-empty string of at most 100 characters")
    return key


def _date(value, what) -> date:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise InvalidInput(f"{what} must be a date like 2026-11-30, got {value!r}") from None


# -- sites, accounts, fee items -----------------------------------------------------------------

def set_site(conn, site_id, name, currency="CNY", timezone="Asia/Shanghai", rounding="half_up",
             late_fees="last", late_fee_rate="0.0005", late_fee_grace_days=0, late_fee_cap="1",
             due_days=15, dunning_days=(7, 30, 60)) -> dict:
    """Create or change a site's billing settings (rounding, allocation order, late fee, dunning)."""
    if not site_id or not name:
        raise InvalidInput("site_id and name are required")
    if currency not in rules.CURRENCIES:
        raise InvalidInput(f"currency must be one of {', '.join(rules.CURRENCIES)}, got {currency!r}")
    if rounding not in rules.ROUNDINGS:
        raise InvalidInput(f"rounding must be one of {', '.join(rules.ROUNDINGS)}, got {rounding!r}")
    if late_fees not in rules.LATE_FEE_ORDERS:
        raise InvalidInput("late_fees must be 'first' or 'last' (their place when a payment is allocated)")
    days = list(dunning_days or [])
    if any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in days) or len(days) > 5:
        raise InvalidInput("dunning_days must be up to five whole numbers of days after the due date")
    for v, what in ((late_fee_grace_days, "late_fee_grace_days"), (due_days, "due_days")):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 365:
            raise InvalidInput(f"{what} must be a whole number of days from 0 to 365")
    values = dict(name=name, currency=currency, timezone=timezone, rounding=rounding, late_fees=late_fees,
                  late_fee_ppm=_rule(rules.parse_ppm, late_fee_rate, "late_fee_rate"),
                  late_fee_grace_days=late_fee_grace_days,
                  late_fee_cap_ppm=_rule(rules.parse_ppm, late_fee_cap, "late_fee_cap"),
                  due_days=due_days, dunning_days=json.dumps(sorted(days)))
    current = conn.execute(select(sites.c.currency).where(sites.c.site_id == site_id)).first()
    if current:
        if current.currency != currency and conn.execute(select(accounts.c.account_id).where(
                accounts.c.site_id == site_id).limit(1)).first():
            raise InvalidInput(f"site {site_id!r} has accounts in {current.currency}; its currency cannot change")
        conn.execute(update(sites).where(sites.c.site_id == site_id).values(**values))
    else:
        conn.execute(insert(sites).values(site_id=site_id, **values))
    return site(conn, site_id)


def site(conn, site_id) -> dict:
    row = dict(require(conn, sites, sites.c.site_id, site_id, "site"))
    row["dunning_days"] = json.loads(row["dunning_days"])
    row["late_fee_rate"] = str(rules.Decimal(row.pop("late_fee_ppm")).scaleb(-6).normalize())
    row["late_fee_cap"] = str(rules.Decimal(row.pop("late_fee_cap_ppm")).scaleb(-6).normalize())
    return row


def _site_row(conn, site_id):
    return require(conn, sites, sites.c.site_id, site_id, "site")


def _account_values(site_row, a: dict) -> dict:
    required = ("unit_id", "building", "floor", "area_m2", "payer")
    missing = [f for f in required if a.get(f) in (None, "")]
    if missing:
        raise InvalidInput(f"account {a.get('unit_id')!r}: missing {', '.join(missing)}")
    unknown = set(a) - {*required, "unit_type", "contacts"}
    if unknown:
        raise InvalidInput(f"account {a['unit_id']!r}: unknown field(s) {', '.join(sorted(unknown))}")
    contacts = a.get("contacts") or []
    if not isinstance(contacts, list) or not all(isinstance(c, dict) for c in contacts):
        raise InvalidInput("contacts must be a list of objects like {\"name\": ..., \"phone\": ...}")
    return dict(site_id=site_row.site_id, unit_id=str(a["unit_id"]), building=str(a["building"]),
                floor=str(a["floor"]), area_x100=_rule(rules.parse_area, a["area_m2"]),
                unit_type=str(a.get("unit_type") or "residential"), payer=str(a["payer"]),
                contacts=json.dumps(contacts, ensure_ascii=False), currency=site_row.currency)


def upsert_accounts(conn, site_id, rows: list[dict]) -> dict:
    """Create or update the paying households of units (bulk: one statement per 1,000 rows).
    Attributes change; balances never do here."""
    site_row = _site_row(conn, site_id)
    values = [_account_values(site_row, r) for r in rows]
    if len({v["unit_id"] for v in values}) != len(values):
        raise InvalidInput("the same unit_id appears twice")
    at = now()
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    else:
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    stmt = dialect_insert(accounts)
    stmt = stmt.on_conflict_do_update(
        index_elements=["site_id", "unit_id"],
        set_={c: stmt.excluded[c] for c in ("building", "floor", "area_x100", "unit_type", "payer", "contacts",
                                            "updated_at")})
    for i in range(0, len(values), 1000):
        conn.execute(stmt, [{**v, "receivable_fen": 0, "prepaid_fen": 0, "updated_at": at}
                            for v in values[i:i + 1000]])
    return {"site_id": site_id, "upserted": len(values)}


def set_account(conn, site_id, unit_id, building, floor, area_m2, payer, unit_type="residential",
                contacts=None) -> dict:
    upsert_accounts(conn, site_id, [dict(unit_id=unit_id, building=building, floor=floor, area_m2=area_m2,
                                         payer=payer, unit_type=unit_type, contacts=contacts or [])])
    return account_by_unit(conn, site_id, unit_id)


def _account_out(row) -> dict:
    d = dict(row)
    d["area_m2"] = rules.area_text(d.pop("area_x100"))
    d["contacts"] = json.loads(d["contacts"])
    d["updated_at"] = d["updated_at"].isoformat()
    d["balance_fen"] = d["receivable_fen"] - d["prepaid_fen"]
    return d


def account(conn, account_id) -> dict:
    return _account_out(require(conn, accounts, accounts.c.account_id, _account_id(account_id), "account"))


def _account_id(account_id) -> int:
    if isinstance(account_id, bool) or not isinstance(account_id, int | str) or not str(account_id).isdigit():
        raise NotFound(f"unknown account {account_id!r}")
    return int(account_id)


def account_by_unit(conn, site_id, unit_id) -> dict:
    row = conn.execute(select(accounts).where(accounts.c.site_id == site_id, accounts.c.unit_id == unit_id)
                       ).mappings().first()
    if row is None:
        raise NotFound(f"unknown account for unit {unit_id!r} at site {site_id!r}")
    return _account_out(row)


def list_accounts(conn, site_id, limit=200, after=0) -> list[dict]:
    rows = conn.execute(select(accounts).where(accounts.c.site_id == site_id, accounts.c.account_id > after)
                        .order_by(accounts.c.account_id).limit(limit)).mappings()
    return [_account_out(r) for r in rows]


def set_fee_item(conn, site_id, code, name, kind) -> dict:
    _site_row(conn, site_id)
    if kind not in rules.FEE_KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(rules.FEE_KINDS)}, got {kind!r}")
    if not code or not name:
        raise InvalidInput("code and name are required")
    row = _fee_item(conn, site_id, code, must=False)
    if row:
        if row.kind != kind:
            raise InvalidInput(f"fee item {code!r} is a {row.kind} fee; its kind cannot change")
        conn.execute(update(fee_items).where(fee_items.c.fee_item_id == row.fee_item_id).values(name=name))
    else:
        conn.execute(insert(fee_items).values(site_id=site_id, code=code, name=name, kind=kind, active=True))
    return dict(_fee_item(conn, site_id, code)._mapping)


def _fee_item(conn, site_id, code, must=True):
    row = conn.execute(select(fee_items).where(fee_items.c.site_id == site_id, fee_items.c.code == code)).first()
    if row is None and must:
        raise NotFound(f"unknown fee item {code!r} at site {site_id!r}")
    return row


def _builtin_item(conn, site_id, code, name, kind):
    row = _fee_item(conn, site_id, code, must=False)
    if row is None:
        conn.execute(insert(fee_items).values(site_id=site_id, code=code, name=name, kind=kind, active=True))
        row = _fee_item(conn, site_id, code)
    return row


def set_rate(conn, site_id, code, rate, scope="default", scope_value="") -> dict:
    """A rate in yuan: per m2 per month for an area fee ("2.50"), per month for a fixed fee."""
    item = _fee_item(conn, site_id, code)
    if item.kind not in ("area", "fixed"):
        raise InvalidInput(f"fee item {code!r} is a {item.kind} fee; rates apply to area and fixed fees")
    if scope not in ("default", "unit_type", "building", "unit"):
        raise InvalidInput("scope must be default, unit_type, building or unit")
    scope_value = "" if scope == "default" else str(scope_value or "")
    if scope != "default" and not scope_value:
        raise InvalidInput(f"a {scope} rate needs scope_value")
    mfen = _rule(rules.parse_rate, rate)
    key = and_(rates.c.fee_item_id == item.fee_item_id, rates.c.scope == scope, rates.c.scope_value == scope_value)
    if conn.execute(select(rates.c.rate_mfen).where(key)).first():
        conn.execute(update(rates).where(key).values(rate_mfen=mfen))
    else:
        conn.execute(insert(rates).values(fee_item_id=item.fee_item_id, scope=scope, scope_value=scope_value,
                                          rate_mfen=mfen))
    return {"code": code, "scope": scope, "scope_value": scope_value, "rate_mfen": mfen}


def set_pass(conn, account_id, code, monthly_amount, quantity=1, start_month=None, end_month=None) -> dict:
    """A monthly parking pass (or other per-account monthly fee) the runs bill."""
    acct = require(conn, accounts, accounts.c.account_id, _account_id(account_id), "account")
    item = _fee_item(conn, acct.site_id, code)
    if item.kind != "pass":
        raise InvalidInput(f"fee item {code!r} is not a pass fee")
    fen = _rule(rules.parse_amount, monthly_amount, what="monthly_amount")
    if not isinstance(quantity, int) or quantity < 1:
        raise InvalidInput("quantity must be a whole number of at least 1")
    for m in (start_month, end_month):
        if m is not None:
            _rule(rules.parse_period, m)
    key = and_(passes.c.account_id == acct.account_id, passes.c.fee_item_id == item.fee_item_id)
    values = dict(monthly_fen=fen, quantity=quantity, start_month=start_month, end_month=end_month)
    if conn.execute(select(passes.c.account_id).where(key)).first():
        conn.execute(update(passes).where(key).values(**values))
    else:
        conn.execute(insert(passes).values(account_id=acct.account_id, fee_item_id=item.fee_item_id, **values))
    return {"account_id": acct.account_id, "code": code, **values}


# -- counters and the journal -------------------------------------------------------------------

# Statements of the payment path, built once: building and cache-keying a statement costs more
# than running it on SQLite, and a counter takes 10,000 payments an hour at peak.
_B = bindparam
NEXT_NUMBER = (update(counters).where(counters.c.site_id == _B("site"), counters.c.kind == _B("counter"))
               .values(value=counters.c.value + _B("n")).returning(counters.c.value))
INSERT_JOURNAL = insert(journal)
INSERT_ALLOCATIONS = insert(allocations)
INSERT_PAYMENT = insert(payments)
INSERT_OUTBOX = insert(outbox)
ACCOUNT_FOR_UPDATE = select(accounts).where(accounts.c.account_id == _B("aid")).with_for_update()
PAYMENT_BY_KEY = select(payments).where(payments.c.idempotency_key == _B("key"))
SITE_ALLOCATION = select(sites.c.late_fees).where(sites.c.site_id == _B("site"))
OPEN_INVOICES = select(invoices.c.invoice_id, invoices.c.due_date, invoices.c.total_fen, invoices.c.paid_fen,
                       invoices.c.credited_fen, invoices.c.late_fee_fen, invoices.c.late_paid_fen,
                       invoices.c.status).where(invoices.c.account_id == _B("aid"), invoices.c.status.in_(OPEN))
INVOICE_PAID = update(invoices).where(invoices.c.invoice_id == _B("iid")).values(
    paid_fen=invoices.c.paid_fen + _B("principal"), late_paid_fen=invoices.c.late_paid_fen + _B("late"),
    status=_B("new_status"))
ACCOUNT_BALANCES = update(accounts).where(accounts.c.account_id == _B("aid")).values(
    receivable_fen=accounts.c.receivable_fen + _B("d_receivable"), prepaid_fen=accounts.c.prepaid_fen + _B("d_prepaid"))

# pay(): the account row locked with its site's allocation setting in one statement, then (a new
# statement, so a new snapshot in READ COMMITTED: it sees whatever the holder of the lock committed)
# the idempotency key and the open invoices in one statement.
PAY_ACCOUNT = (select(accounts.c.site_id, accounts.c.unit_id, accounts.c.payer, accounts.c.currency, sites.c.late_fees)
               .join_from(accounts, sites, accounts.c.site_id == sites.c.site_id)
               .where(accounts.c.account_id == _B("aid")).with_for_update(of=accounts))
# (constants inline: the PostgreSQL path sends the SQL text through the driver, see _pg_pipeline)
LOCK_ACCOUNTS = (select(accounts.c.account_id).where(accounts.c.account_id.in_(_B("aids", expanding=True)))
                 .order_by(accounts.c.account_id).with_for_update())
_ONE = select(literal_column("1").label("one")).subquery("one")
_DUP = payments.alias("dup")
PAY_READ = (select(_DUP.c.payment_id.label("dup_payment_id"), *OPEN_INVOICES.selected_columns)
            .select_from(_ONE.outerjoin(_DUP, _DUP.c.idempotency_key == _B("key"))
                         .outerjoin(invoices, and_(invoices.c.account_id == _B("aid"),
                                                   invoices.c.status.in_([literal_column(f"'{s}'") for s in OPEN])))))
# ... and on PostgreSQL every write of the payment in one statement (one round trip): allocations,
# invoices, journal and balances from arrays, then the receipt number (the counter row is locked
# by the last step, so payments of one site queue on it for as short a time as possible: numbers
# stay without gaps or repeats), the payment row (a concurrent twin with the same key fails here
# on the unique key) and its event with the number in it.
PG_PAY_WRITE = text("""
WITH alloc AS (
    INSERT INTO allocations (source, source_id, invoice_id, component, amount_fen, at)
    SELECT 'payment', CAST(:payment_id AS varchar), a.invoice_id, a.component, a.amount_fen, :at
    FROM unnest(CAST(:a_invoice AS bigint[]), CAST(:a_component AS varchar[]), CAST(:a_amount AS bigint[]))
         AS a(invoice_id, component, amount_fen)
    RETURNING 1
), inv AS (
    UPDATE invoices SET paid_fen = invoices.paid_fen + v.principal, late_paid_fen = invoices.late_paid_fen + v.late,
                        status = v.status
    FROM unnest(CAST(:i_invoice AS bigint[]), CAST(:i_principal AS bigint[]), CAST(:i_late AS bigint[]),
                CAST(:i_status AS varchar[])) AS v(invoice_id, principal, late, status)
    WHERE invoices.invoice_id = v.invoice_id
    RETURNING 1
), jrn AS (
    INSERT INTO journal (txn, site_id, kind, ref, debit, credit, amount_fen, currency, at)
    SELECT CAST(:txn AS varchar), CAST(:site AS varchar), 'payment', CAST(:payment_id AS varchar), j.debit, j.credit,
           j.amount_fen, CAST(:currency AS varchar), :at
    FROM unnest(CAST(:j_debit AS varchar[]), CAST(:j_credit AS varchar[]), CAST(:j_amount AS bigint[]))
         AS j(debit, credit, amount_fen)
    RETURNING 1
), acct AS (
    UPDATE accounts SET receivable_fen = receivable_fen - CAST(:allocated AS bigint),
                        prepaid_fen = prepaid_fen + CAST(:rest AS bigint)
    WHERE account_id = CAST(:aid AS bigint)
    RETURNING 1
), c AS (
    -- counted first, so run to completion first: the counter row is locked after them
    INSERT INTO counters (site_id, kind, value)
    SELECT CAST(:site AS varchar), 'receipt', 1
    WHERE (SELECT count(*) FROM alloc) + (SELECT count(*) FROM inv) + (SELECT count(*) FROM jrn)
          + (SELECT count(*) FROM acct) >= 0
    ON CONFLICT (site_id, kind) DO UPDATE SET value = counters.value + 1
    RETURNING value
), p AS (
    INSERT INTO payments (payment_id, site_id, idempotency_key, account_id, target, method, amount_fen, currency,
                          allocated_fen, prepaid_fen, payer, operator, reference, receipt_seq, receipt_number,
                          received_at)
    SELECT CAST(:payment_id AS varchar), CAST(:site AS varchar), CAST(:key AS varchar), CAST(:aid AS bigint), 'account',
           CAST(:method AS varchar), CAST(:amount AS bigint), CAST(:currency AS varchar), CAST(:allocated AS bigint),
           CAST(:rest AS bigint), CAST(:payer AS varchar), CAST(:operator AS varchar), CAST(:reference AS varchar),
           c.value, CAST(:site AS varchar) || '-R' || lpad(CAST(c.value AS text), greatest(7, length(CAST(c.value AS text))), '0'),
           :at
    FROM c
    RETURNING receipt_seq, receipt_number
), ev AS (
    INSERT INTO outbox (event_type, payload, published)
    SELECT 'payment_received', CAST(CAST(:payload AS jsonb) || jsonb_build_object(
               'receipt_number', p.receipt_number,
               'receipt_path', '/api/billing/receipts/' || p.receipt_number || '.html') AS text), false
    FROM p
)
SELECT receipt_seq, receipt_number FROM p
""")
_PG_SQL: dict = {}                          # their text for the psycopg driver (see _pg_pipeline)
COMMIT_WITH_LAST_WRITE = "billing.commit_with_last_write"   # conn.info flag set by pay_once


def _queue(conn, site_id, event_type, **fields) -> dict:
    """gatehouse.outbox.queue with a prebuilt statement (same row, same payload)."""
    payload = event_payload(site_id, **fields)
    conn.execute(INSERT_OUTBOX, dict(event_type=event_type, published=False,
                                     payload=json.dumps(payload, default=str, ensure_ascii=False)))
    return payload


def _next_numbers(conn, site_id, kind, n=1) -> int:
    """Reserve n consecutive numbers of a site's sequence; returns the first. The UPDATE locks the
    counter row until commit (SQLite has one writer anyway), so numbers never repeat or skip."""
    row = conn.execute(NEXT_NUMBER, {"site": site_id, "counter": kind, "n": n}).first()
    if row is None:
        conn.execute(insert(counters).values(site_id=site_id, kind=kind, value=n))
        return 1
    return row.value - n + 1


NUMBER_FORMATS = {"invoice": "{site}-INV{seq:07d}", "receipt": "{site}-R{seq:07d}", "credit_note": "{site}-CN{seq:06d}"}


def number(kind, site_id, seq) -> str:
    return NUMBER_FORMATS[kind].format(site=site_id, seq=seq)


def _entries(entries) -> list[tuple[str, str, int]]:
    """The entries of a money movement that move something; refuses a negative or same-code one."""
    out = [(d, c, a) for d, c, a in entries if a]
    if any(a < 0 or d == c for d, c, a in out):
        raise InvalidInput("a journal entry must move a positive amount between two different codes")
    return out


def post(conn, site_id, kind, ref, entries, currency, at=None) -> str:
    """One money movement: balanced entries (debit code, credit code, amount_fen > 0) under one txn."""
    txn = str(uuid.uuid4())
    at = at or now()
    rows = [dict(txn=txn, site_id=site_id, kind=kind, ref=str(ref), debit=d, credit=c, amount_fen=a,
                 currency=currency, at=at) for d, c, a in _entries(entries)]
    if rows:
        conn.execute(INSERT_JOURNAL, rows)
    return txn


def receivable(account_id) -> str:
    return f"receivable:{account_id}"


def prepaid(account_id) -> str:
    return f"prepaid:{account_id}"


# -- billing runs -------------------------------------------------------------------------------

def start_run(conn, site_id, period, cycle="monthly", again=False, issue=True) -> dict:
    """The run for (site, period, cycle): the unfinished one to resume, or a new one. `again`
    starts a fresh pass over a finished period (it finds nothing new to bill: the unique keys).
    issue=False leaves the invoices as drafts for review (issue_drafts issues them later)."""
    _site_row(conn, site_id)
    months = set(_rule(rules.parse_period, period, cycle).month_keys())
    for other_period, other_cycle in conn.execute(select(runs.c.period, runs.c.cycle).distinct().where(
            runs.c.site_id == site_id, runs.c.cycle != cycle)):
        if months & set(rules.parse_period(other_period, other_cycle).month_keys()):
            raise InvalidInput(f"{period} ({cycle}) overlaps {other_period}, already billed {other_cycle} at "
                               f"{site_id}: a month is billed by one cycle only")
    last = conn.execute(select(runs).where(runs.c.site_id == site_id, runs.c.period == period,
                                           runs.c.cycle == cycle).order_by(runs.c.attempt.desc())).mappings().first()
    if last is not None and (last["status"] == "running" or not again):
        return _run_out(last)
    total = conn.execute(select(func.count()).select_from(accounts).where(accounts.c.site_id == site_id)).scalar()
    at = now()
    conn.execute(insert(runs).values(site_id=site_id, period=period, cycle=cycle,
                                     attempt=(last["attempt"] + 1) if last else 1, status="running",
                                     issue=bool(issue), total=total,
                                     done=0, cursor=0, invoices_created=0, lines_created=0, started_at=at,
                                     updated_at=at))
    return _run_out(conn.execute(select(runs).where(runs.c.site_id == site_id, runs.c.period == period,
                                                    runs.c.cycle == cycle).order_by(runs.c.attempt.desc())
                                 ).mappings().first())


def _run_out(row) -> dict:
    d = dict(row)
    for k in ("started_at", "updated_at", "finished_at"):
        d[k] = d[k].isoformat() if d[k] else None
    return d


def run(conn, run_id) -> dict:
    return _run_out(require(conn, runs, runs.c.run_id, run_id, "billing run"))


def list_runs(conn, site_id) -> list[dict]:
    return [_run_out(r) for r in conn.execute(select(runs).where(runs.c.site_id == site_id)
                                              .order_by(runs.c.run_id.desc()).limit(50)).mappings()]


def _load_items(conn, site_id) -> list[rules.FeeItem]:
    items = conn.execute(select(fee_items).where(fee_items.c.site_id == site_id, fee_items.c.active.is_(True),
                                                 fee_items.c.kind.in_(rules.RECURRING_KINDS))
                         .order_by(fee_items.c.fee_item_id)).all()
    by_item = defaultdict(dict)
    for r in conn.execute(select(rates).where(rates.c.fee_item_id.in_([i.fee_item_id for i in items]))):
        by_item[r.fee_item_id][(r.scope, r.scope_value)] = r.rate_mfen
    return [rules.FeeItem(i.fee_item_id, i.code, i.name, i.kind, by_item[i.fee_item_id]) for i in items]


def run_chunk(conn, run_id, chunk=CHUNK) -> dict:
    """Bill the next `chunk` accounts of a run (by account id, after the committed cursor) in the
    caller's transaction: invoices and lines are inserted with insert-ignore on their unique
    keys, issued with consecutive numbers, posted to the journal, drawn from prepaid balances,
    announced in the outbox, and the cursor moves, all or nothing."""
    r = require(conn, runs, runs.c.run_id, run_id, "billing run")
    if r.status == "done":
        return _run_out(r)
    site_row = _site_row(conn, r.site_id)
    period = rules.parse_period(r.period, r.cycle)
    # the invoice counter row is this site's write lock for billing: concurrent runs queue here
    first_seq = _next_numbers(conn, r.site_id, "invoice", 0)
    r = require(conn, runs, runs.c.run_id, run_id, "billing run")          # re-read after the lock
    if r.status == "done":
        return _run_out(r)
    accts = conn.execute(select(accounts.c.account_id, accounts.c.unit_id, accounts.c.building,
                                accounts.c.unit_type, accounts.c.area_x100, accounts.c.payer,
                                accounts.c.prepaid_fen, accounts.c.currency)
                         .where(accounts.c.site_id == r.site_id, accounts.c.account_id > r.cursor)
                         .order_by(accounts.c.account_id).limit(chunk)).all()
    at = now()
    if not accts:
        conn.execute(update(runs).where(runs.c.run_id == run_id).values(status="done", finished_at=at, updated_at=at))
        return run(conn, run_id)
    lo, hi = r.cursor, accts[-1].account_id
    existing = set(conn.execute(select(invoices.c.account_id).where(
        invoices.c.period == r.period, invoices.c.account_id > lo, invoices.c.account_id <= hi)).scalars())
    items = _load_items(conn, r.site_id)
    item_codes = {i.fee_item_id: i.code for i in items}
    pass_rows = defaultdict(list)
    for p in conn.execute(select(passes).join(accounts, accounts.c.account_id == passes.c.account_id).where(
            accounts.c.site_id == r.site_id, passes.c.account_id > lo, passes.c.account_id <= hi)):
        pass_rows[p.account_id].append((p.fee_item_id, p.monthly_fen, p.quantity, p.start_month, p.end_month))
    due = period.start + timedelta(days=site_row.due_days)
    new_invoices, planned = [], {}
    for a in accts:
        if a.account_id in existing:
            continue
        unit = rules.Unit(a.account_id, a.unit_id, a.building, a.unit_type, a.area_x100)
        planned_lines = rules.lines_for(unit, items, period, site_row.rounding, pass_rows.get(a.account_id, ()))
        if not planned_lines:
            continue
        planned[a.account_id] = (a, planned_lines)
    seq = first_seq
    for account_id, (a, planned_lines) in planned.items():
        new_invoices.append(dict(site_id=r.site_id, account_id=account_id, period=r.period, kind="cycle",
                                 status="issued" if r.issue else "draft", number_seq=seq if r.issue else None,
                                 number=number("invoice", r.site_id, seq) if r.issue else None,
                                 currency=a.currency, total_fen=sum(x[2] for x in planned_lines), paid_fen=0,
                                 credited_fen=0, late_fee_fen=0, late_paid_fen=0, late_accrued_micro=0,
                                 period_start=period.start, due_date=due, run_id=run_id, created_at=at,
                                 issued_at=at if r.issue else None))
        seq += 1
    created_lines = 0
    if new_invoices:
        if r.issue:
            conn.execute(update(counters).where(counters.c.site_id == r.site_id, counters.c.kind == "invoice")
                         .values(value=first_seq - 1 + len(new_invoices)))
        conn.execute(insert(invoices), new_invoices)
        ids = dict(conn.execute(select(invoices.c.account_id, invoices.c.invoice_id).where(
            invoices.c.run_id == run_id, invoices.c.period == r.period, invoices.c.account_id > lo,
            invoices.c.account_id <= hi)).all())
        line_rows, entries, events = [], [], []
        for inv in new_invoices:
            a, planned_lines = planned[inv["account_id"]]
            invoice_id = ids[inv["account_id"]]
            txn = str(uuid.uuid4())
            for fee_item_id, desc, amount in planned_lines:
                line_rows.append(dict(invoice_id=invoice_id, account_id=a.account_id, fee_item_id=fee_item_id,
                                      period=r.period, description=desc, amount_fen=amount, currency=a.currency))
                entries.append(dict(txn=txn, site_id=r.site_id, kind="charge", ref=inv["number"],
                                    debit=receivable(a.account_id), credit=f"income:{item_codes[fee_item_id]}",
                                    amount_fen=amount, currency=a.currency, at=at))
            events.append(dict(event_type="invoice_issued", published=False, payload=json.dumps(event_payload(
                r.site_id, invoice_id=invoice_id, number=inv["number"], account_id=a.account_id,
                unit_id=a.unit_id, payer=a.payer, total_fen=inv["total_fen"], currency=a.currency,
                period=r.period, due_date=due.isoformat()), ensure_ascii=False)))
        conn.execute(insert_ignore(conn, lines), line_rows)
        # (executemany rowcounts are not reliable across drivers: count what is there)
        created_lines = conn.execute(select(func.count()).select_from(lines).where(
            lines.c.invoice_id.in_(select(invoices.c.invoice_id).where(
                invoices.c.run_id == run_id, invoices.c.period == r.period, invoices.c.account_id > lo,
                invoices.c.account_id <= hi)))).scalar()
        if created_lines != len(line_rows):
            # an invoice is new only if its lines are: anything else is a bug worth a rollback
            raise RuntimeError(f"{len(line_rows) - created_lines} lines already existed for new invoices")
    if new_invoices and r.issue:
        conn.execute(insert(journal), entries)
        conn.execute(insert(outbox), events)
        total_by_invoice = (select(invoices.c.total_fen).where(invoices.c.account_id == accounts.c.account_id,
                                                                invoices.c.period == r.period)
                            .scalar_subquery())
        conn.execute(update(accounts).where(accounts.c.account_id.in_(select(invoices.c.account_id).where(
            invoices.c.run_id == run_id, invoices.c.period == r.period, invoices.c.account_id > lo,
            invoices.c.account_id <= hi))).values(receivable_fen=accounts.c.receivable_fen + total_by_invoice))
        for inv in new_invoices:
            a, _ = planned[inv["account_id"]]
            if a.prepaid_fen > 0:
                _draw_prepaid(conn, a.account_id, at)
    conn.execute(update(runs).where(runs.c.run_id == run_id).values(
        cursor=hi, done=runs.c.done + len(accts), invoices_created=runs.c.invoices_created + len(new_invoices),
        lines_created=runs.c.lines_created + created_lines, updated_at=at))
    return run(conn, run_id)


def run_all(engine, run_id, chunk=CHUNK, progress=None, after_chunk=None) -> dict:
    """Run every remaining chunk, one transaction each; `progress(run)` after each commit.
    `after_chunk(n)` is a test hook (raise to simulate a crash after n committed chunks)."""
    n = 0
    while True:
        with engine.begin() as conn:
            state = run_chunk(conn, run_id, chunk)
        n += 1
        if progress:
            progress(state)
        if state["status"] == "done":
            return state
        if after_chunk:
            after_chunk(n)


# -- invoices -----------------------------------------------------------------------------------

def _invoice_out(row) -> dict:
    d = dict(row)
    for k in ("late_through", "period_start", "due_date"):
        d[k] = d[k].isoformat() if d[k] else None
    for k in ("created_at", "issued_at"):
        d[k] = d[k].isoformat() if d[k] else None
    d["outstanding_fen"] = _outstanding(row)
    return d


def _outstanding(row) -> int:
    if row["status"] in ("draft", "void"):
        return 0
    return row["total_fen"] - row["paid_fen"] - row["credited_fen"] + row["late_fee_fen"] - row["late_paid_fen"]


def invoice(conn, invoice_id, with_lines=True) -> dict:
    row = require(conn, invoices, invoices.c.invoice_id, invoice_id, "invoice")
    out = _invoice_out(row)
    if with_lines:
        out["lines"] = [dict(r) for r in conn.execute(
            select(lines.c.fee_item_id, fee_items.c.code, lines.c.description, lines.c.amount_fen)
            .join(fee_items, fee_items.c.fee_item_id == lines.c.fee_item_id)
            .where(lines.c.invoice_id == invoice_id).order_by(lines.c.line_id)).mappings()]
    return out


def list_invoices(conn, site_id=None, account_id=None, status=None, period=None, limit=200) -> list[dict]:
    q = select(invoices).order_by(invoices.c.invoice_id).limit(limit)
    if site_id:
        q = q.where(invoices.c.site_id == site_id)
    if account_id is not None:
        q = q.where(invoices.c.account_id == _account_id(account_id))
    if status:
        q = q.where(invoices.c.status.in_(status.split(",")))
    if period:
        q = q.where(invoices.c.period == period)
    return [_invoice_out(r) for r in conn.execute(q).mappings()]


def _issue_one(conn, inv_id, at) -> dict:
    """Issue a draft: a number, the charge in the journal, the account's receivable, the event."""
    inv = conn.execute(select(invoices).where(invoices.c.invoice_id == inv_id)).mappings().one()
    acct = conn.execute(select(accounts).where(accounts.c.account_id == inv["account_id"])).mappings().one()
    seq = _next_numbers(conn, inv["site_id"], "invoice")
    num = number("invoice", inv["site_id"], seq)
    conn.execute(update(invoices).where(invoices.c.invoice_id == inv_id).values(
        status="issued", number_seq=seq, number=num, issued_at=at))
    entries = [(receivable(acct["account_id"]), f"income:{code}", amount) for code, amount in conn.execute(
        select(fee_items.c.code, lines.c.amount_fen).join(fee_items, fee_items.c.fee_item_id == lines.c.fee_item_id)
        .where(lines.c.invoice_id == inv_id).order_by(lines.c.line_id))]
    post(conn, inv["site_id"], "charge", num, entries, inv["currency"], at)
    conn.execute(update(accounts).where(accounts.c.account_id == acct["account_id"]).values(
        receivable_fen=accounts.c.receivable_fen + inv["total_fen"]))
    queue(conn, outbox, inv["site_id"], "invoice_issued", invoice_id=inv_id, number=num,
          account_id=acct["account_id"], unit_id=acct["unit_id"], payer=acct["payer"], total_fen=inv["total_fen"],
          currency=inv["currency"], period=inv["period"], due_date=inv["due_date"].isoformat())
    if acct["prepaid_fen"] > 0:
        _draw_prepaid(conn, acct["account_id"], at)
    return invoice(conn, inv_id)


def charge(conn, account_id, code, amount=None, description=None, idempotency_key=None, due_date=None,
           amount_fen=None, kind="charge", period=None, issue=True) -> dict:
    """A one-off charge: its own invoice (period "charge:<key>") with one line, issued at once
    unless issue=False (a draft, issued later or voided). The key makes a retry harmless."""
    key = _key(idempotency_key)
    acct = require(conn, accounts, accounts.c.account_id, _account_id(account_id), "account")
    fen = _rule(rules.parse_amount, amount, amount_fen)
    item = _fee_item(conn, acct.site_id, code)
    if item.kind not in ("one_off", "parking", "fixed"):
        raise InvalidInput(f"fee item {code!r} is a {item.kind} fee, billed by the runs, not as a one-off")
    period = period or f"charge:{key}"
    found = conn.execute(select(invoices.c.invoice_id, invoices.c.total_fen).where(
        invoices.c.account_id == acct.account_id, invoices.c.period == period)).first()
    if found:
        if found.total_fen != fen:
            raise InvalidInput(f"idempotency_key {key!r} was already used for a charge of {rules.yuan(found.total_fen)}")
        return {**invoice(conn, found.invoice_id), "duplicate": True}
    site_row = _site_row(conn, acct.site_id)
    at = now()
    due = _date(due_date, "due_date") if due_date else (at.date() + timedelta(days=site_row.due_days))
    conn.execute(insert(invoices).values(
        site_id=acct.site_id, account_id=acct.account_id, period=period, kind=kind, status="draft",
        currency=acct.currency, total_fen=fen, paid_fen=0, credited_fen=0, late_fee_fen=0, late_paid_fen=0,
        late_accrued_micro=0, due_date=due, created_at=at))
    inv_id = conn.execute(select(invoices.c.invoice_id).where(invoices.c.account_id == acct.account_id,
                                                              invoices.c.period == period)).scalar_one()
    conn.execute(insert(lines).values(invoice_id=inv_id, account_id=acct.account_id, fee_item_id=item.fee_item_id,
                                      period=period, description=description or item.name, amount_fen=fen,
                                      currency=acct.currency))
    if not issue:
        return {**invoice(conn, inv_id), "duplicate": False}
    return {**_issue_one(conn, inv_id, at), "duplicate": False}


def issue_drafts(conn, site_id, period, limit=500) -> dict:
    """Issue up to `limit` draft invoices of a period (oldest first): numbers, journal, balances,
    prepaid draws, invoice_issued events. Call again until `left` is 0."""
    _site_row(conn, site_id)
    ids = list(conn.execute(select(invoices.c.invoice_id).where(
        invoices.c.site_id == site_id, invoices.c.period == period, invoices.c.status == "draft")
        .order_by(invoices.c.invoice_id).limit(limit)).scalars())
    at = now()
    for inv_id in ids:
        _issue_one(conn, inv_id, at)
    left = conn.execute(select(func.count()).select_from(invoices).where(
        invoices.c.site_id == site_id, invoices.c.period == period, invoices.c.status == "draft")).scalar()
    return {"site_id": site_id, "period": period, "issued": len(ids), "left": left}


def issue_invoice(conn, invoice_id) -> dict:
    inv = require(conn, invoices, invoices.c.invoice_id, invoice_id, "invoice")
    if inv.status != "draft":
        raise InvalidInput(f"invoice {invoice_id} is {inv.status}; only a draft can be issued")
    return _issue_one(conn, invoice_id, now())


def void_invoice(conn, invoice_id, reason, operator="staff") -> dict:
    """Void a draft, or an issued invoice nothing has been paid or credited on (the charge and any
    late fee are reversed in the journal). A paid invoice is corrected with a credit note."""
    inv = require(conn, invoices, invoices.c.invoice_id, invoice_id, "invoice")
    if not reason:
        raise InvalidInput("a reason is required to void an invoice")
    if inv.status == "void":
        return invoice(conn, invoice_id)
    if inv.status != "draft" and (inv.paid_fen or inv.late_paid_fen or inv.credited_fen):
        raise InvalidInput(f"invoice {inv.number} has payments or credits; issue a credit note instead")
    at = now()
    if inv.status != "draft":
        entries = [(f"income:{code}", receivable(inv.account_id), amount) for code, amount in conn.execute(
            select(fee_items.c.code, lines.c.amount_fen).join(fee_items, fee_items.c.fee_item_id == lines.c.fee_item_id)
            .where(lines.c.invoice_id == invoice_id))]
        entries.append(("income:late_fee", receivable(inv.account_id), inv.late_fee_fen))
        post(conn, inv.site_id, "void", inv.number, entries, inv.currency, at)
        conn.execute(update(accounts).where(accounts.c.account_id == inv.account_id).values(
            receivable_fen=accounts.c.receivable_fen - inv.total_fen - inv.late_fee_fen))
    conn.execute(update(invoices).where(invoices.c.invoice_id == invoice_id).values(status="void"))
    return invoice(conn, invoice_id)


# -- payments and allocation --------------------------------------------------------------------

def _open_invoices(conn, account_id) -> dict:
    return {r["invoice_id"]: r for r in conn.execute(OPEN_INVOICES, {"aid": account_id}).mappings()}


def _debts(open_invoices: dict) -> list[rules.Debt]:
    out = []
    for r in open_invoices.values():
        out.append(rules.Debt(r["invoice_id"], "principal", r["due_date"],
                              r["total_fen"] - r["paid_fen"] - r["credited_fen"]))
        out.append(rules.Debt(r["invoice_id"], "late_fee", r["due_date"], r["late_fee_fen"] - r["late_paid_fen"]))
    return out


def _apply(conn, account_id, amount, late_fees, source, source_id, at) -> tuple[int, list]:
    """Allocate `amount` to the account's open invoices; returns (allocated, [(invoice, comp, fen)])."""
    open_invoices = _open_invoices(conn, account_id)
    applied, left = rules.allocate(amount, _debts(open_invoices), late_fees)
    _write_allocations(conn, applied, open_invoices, source, source_id, at)
    return amount - left, [(d.invoice_id, d.component, fen) for d, fen in applied]


def _invoice_changes(applied, open_invoices) -> list[dict]:
    """What an allocation adds to each invoice: principal, late fee, and the invoice's new status."""
    per_invoice = defaultdict(lambda: [0, 0])
    for d, fen in applied:
        per_invoice[d.invoice_id][0 if d.component == "principal" else 1] += fen
    out = []
    for inv_id, (principal, late) in per_invoice.items():
        r = open_invoices[inv_id]
        status = rules.invoice_status(r["total_fen"], r["paid_fen"] + principal, r["credited_fen"],
                                      r["late_fee_fen"], r["late_paid_fen"] + late)
        out.append({"iid": inv_id, "principal": principal, "late": late, "new_status": status})
    return out


def _write_allocations(conn, applied, open_invoices, source, source_id, at) -> None:
    """The allocation rows, and each invoice's paid amounts and status in one UPDATE."""
    if not applied:
        return
    conn.execute(INSERT_ALLOCATIONS, [dict(source=source, source_id=str(source_id), invoice_id=d.invoice_id,
                                           component=d.component, amount_fen=fen, at=at) for d, fen in applied])
    for change in _invoice_changes(applied, open_invoices):
        conn.execute(INVOICE_PAID, change)


def _refresh_status(conn, inv_id):
    r = conn.execute(select(invoices).where(invoices.c.invoice_id == inv_id)).mappings().one()
    status = rules.invoice_status(r["total_fen"], r["paid_fen"], r["credited_fen"], r["late_fee_fen"],
                                  r["late_paid_fen"])
    if status != r["status"]:
        conn.execute(update(invoices).where(invoices.c.invoice_id == inv_id).values(status=status))


def _draw_prepaid(conn, account_id, at) -> int:
    """Let a prepaid (预缴) balance pay the account's open invoices."""
    acct = conn.execute(select(accounts).where(accounts.c.account_id == account_id)).mappings().one()
    if acct["prepaid_fen"] <= 0:
        return 0
    late_fees = conn.execute(select(sites.c.late_fees).where(sites.c.site_id == acct["site_id"])).scalar_one()
    used, _ = _apply(conn, account_id, acct["prepaid_fen"], late_fees, "prepaid", account_id, at)
    if used:
        post(conn, acct["site_id"], "prepaid_draw", account_id,
             [(prepaid(account_id), receivable(account_id), used)], acct["currency"], at)
        conn.execute(update(accounts).where(accounts.c.account_id == account_id).values(
            prepaid_fen=accounts.c.prepaid_fen - used, receivable_fen=accounts.c.receivable_fen - used))
    return used


def _payment_out(row, duplicate=False) -> dict:
    d = dict(row)
    d["received_at"] = d["received_at"].isoformat()
    d["reversed_at"] = d["reversed_at"].isoformat() if d.get("reversed_at") else None
    d["receipt_path"] = f"/api/billing/receipts/{d['receipt_number']}.html"
    d["duplicate"] = duplicate
    return d


def _existing_payment(conn, key, account_id, fen):
    row = conn.execute(PAYMENT_BY_KEY, {"key": key}).mappings().first()
    if row is None:
        return None
    if row["account_id"] != account_id or row["amount_fen"] != fen:
        raise InvalidInput(f"idempotency_key {key!r} was already used for another payment "
                           f"({rules.yuan(row['amount_fen'])} to account {row['account_id']})")
    return _payment_out(row, duplicate=True)


def pay(conn, account_id, idempotency_key, method, amount=None, currency="CNY", payer=None, operator="staff",
        reference="", amount_fen=None, at=None) -> dict:
    """Apply a payment once: to the oldest debts first (late fees first or last, per site), the
    remainder kept as prepaid. The same key again returns the first result (duplicate=True);
    the same key with another amount or account is refused."""
    key = _key(idempotency_key)
    if method not in rules.METHODS:
        raise InvalidInput(f"method must be one of {', '.join(rules.METHODS)}, got {method!r}")
    fen = _rule(rules.parse_amount, amount, amount_fen)
    aid = _account_id(account_id)
    pg = conn.dialect.name == "postgresql"
    # lock the account row first: two payments of one account are allocated one after the other
    # (on PostgreSQL the lock and the read after it go to the server together, one round trip)
    if pg:
        locked, found = _pg_pipeline(conn, [(PAY_ACCOUNT, {"aid": aid}), (PAY_READ, {"key": key, "aid": aid})])
        acct = locked[0] if locked else None
    else:
        acct = conn.execute(PAY_ACCOUNT, {"aid": aid}).mappings().first()
    if acct is None:
        raise NotFound(f"unknown account {account_id!r}")
    if not pg:
        found = conn.execute(PAY_READ, {"key": key, "aid": aid}).mappings().all()
    site_id = acct["site_id"]
    if found[0]["dup_payment_id"] is not None:
        return _existing_payment(conn, key, aid, fen)
    _rule(rules.check_currency, currency, acct["currency"])
    open_invoices = {r["invoice_id"]: r for r in found if r["invoice_id"] is not None}
    applied, rest = rules.allocate(fen, _debts(open_invoices), acct["late_fees"])
    allocated = fen - rest
    at = at or now()
    payment_id = str(uuid.uuid4())
    entries = _entries([(method, receivable(aid), allocated), (method, prepaid(aid), rest)])
    row = dict(payment_id=payment_id, site_id=site_id, idempotency_key=key, account_id=aid, target="account",
               method=method, amount_fen=fen, currency=currency, allocated_fen=allocated, prepaid_fen=rest,
               payer=payer or acct["payer"], operator=operator or "", reference=reference or "", received_at=at)
    event = dict(payment_id=payment_id, account_id=aid, unit_id=acct["unit_id"], payer=row["payer"], amount_fen=fen,
                 currency=currency, method=method)
    if pg:
        changes = _invoice_changes(applied, open_invoices)
        params = dict(
            payment_id=payment_id, site=site_id, key=key, aid=aid, method=method, amount=fen, currency=currency,
            allocated=allocated, rest=rest, payer=row["payer"], operator=row["operator"],
            reference=row["reference"], at=at, txn=str(uuid.uuid4()),
            a_invoice=[d.invoice_id for d, _ in applied], a_component=[d.component for d, _ in applied],
            a_amount=[fen for _, fen in applied],
            i_invoice=[c["iid"] for c in changes], i_principal=[c["principal"] for c in changes],
            i_late=[c["late"] for c in changes], i_status=[c["new_status"] for c in changes],
            j_debit=[d for d, _, _ in entries], j_credit=[c for _, c, _ in entries],
            j_amount=[a for _, _, a in entries],
            payload=json.dumps(event_payload(site_id, **event), default=str, ensure_ascii=False))
        params["at"] = at.astimezone(UTC).replace(tzinfo=None)     # as UTCDateTime stores it
        written = _pg_pipeline(conn, [(PG_PAY_WRITE, params)], commit=conn.info.get(COMMIT_WITH_LAST_WRITE, False))
        row.update(receipt_seq=written[0][0]["receipt_seq"], receipt_number=written[0][0]["receipt_number"])
        return _payment_out(row)
    # SQLite (one writer at a time anyway): the same writes statement by statement
    seq = _next_numbers(conn, site_id, "receipt")
    row.update(receipt_seq=seq, receipt_number=number("receipt", site_id, seq))
    # the payment row first: a concurrent twin fails here on the unique key and is answered from it
    conn.execute(INSERT_PAYMENT, row)
    _write_allocations(conn, applied, open_invoices, "payment", payment_id, at)
    post(conn, site_id, "payment", payment_id, entries, currency, at)
    conn.execute(ACCOUNT_BALANCES, {"aid": aid, "d_receivable": -allocated, "d_prepaid": rest})
    out = _payment_out(row)
    _queue(conn, site_id, "payment_received", **event, receipt_number=out["receipt_number"],
           receipt_path=out["receipt_path"])
    return out


def pay_once(engine, fn, *args, **kwargs):
    """Run a payment-like store function in its own transaction; if a concurrent twin with the same
    idempotency key committed first (unique violation), answer with the committed result."""
    try:
        return _own_transaction(engine, fn, *args, **kwargs)
    except IntegrityError:
        return _own_transaction(engine, fn, *args, **kwargs)


def _own_transaction(engine, fn, *args, **kwargs):
    with engine.begin() as conn:
        # pay() in a transaction of its own may send its last statement and the COMMIT together
        conn.info[COMMIT_WITH_LAST_WRITE] = fn is pay
        try:
            return fn(conn, *args, **kwargs)
        finally:
            conn.info.pop(COMMIT_WITH_LAST_WRITE, None)


def _pg(conn, stmt) -> str:
    """A prebuilt statement's SQL text for the psycopg driver (every parameter given at run time)."""
    sql = _PG_SQL.get(stmt)
    if sql is None:
        sql = _PG_SQL[stmt] = stmt.compile(dialect=conn.dialect).string
    return sql


def _pg_pipeline(conn, statements, commit=False) -> list[list[dict]]:
    """Run [(statement, params)] in one round trip (a psycopg pipeline: each statement still runs
    after the one before it has finished, with its own snapshot) and return each one's rows.
    With commit=True the COMMIT goes in the same round trip: the server commits as soon as the last
    statement is done, without waiting for this process to read the answer and send COMMIT (so the
    receipt counter row is held for the write and the commit only, however busy this process is);
    only for a transaction that is the caller's own (pay_once). Errors come as SQLAlchemy's."""
    raw = conn.connection.driver_connection
    cursors, sql, params = [], None, None
    try:
        with raw.pipeline():
            for stmt, params in statements:
                sql = _pg(conn, stmt)
                cur = raw.cursor(row_factory=dict_row)
                cur.execute(sql, params)
                cursors.append(cur)
            if commit:
                raw.commit()
        return [cur.fetchall() for cur in cursors]
    except psycopg.Error as exc:
        raise DBAPIError.instance(sql, params, exc, psycopg.Error) from None


def reverse_payment(conn, payment_id, reason, operator="staff") -> dict:
    """Put a mistaken payment right (冲正): its allocations are undone, its prepaid remainder taken
    back, the journal reversed; the payment stays on record, marked reversed. Refused when its
    prepaid credit has been used since, or a credit note has moved what it paid. Repeating is a no-op."""
    if not reason:
        raise InvalidInput("a reason is required to reverse a payment")
    p = require(conn, payments, payments.c.payment_id, payment_id, "payment")
    if p.account_id is None:
        raise InvalidInput("a parking session's online payment is reversed by a refund at the provider, not here")
    acct = conn.execute(ACCOUNT_FOR_UPDATE, {"aid": p.account_id}).mappings().one()
    p = require(conn, payments, payments.c.payment_id, payment_id, "payment")     # re-read under the lock
    if p.reversed_at is not None:
        return payment(conn, payment_id)
    if acct["prepaid_fen"] < p.prepaid_fen:
        raise InvalidInput(f"the {rules.yuan(p.prepaid_fen)} this payment left as prepaid credit has been used "
                           f"since (credit now {rules.yuan(acct['prepaid_fen'])}); credit-note or refund instead")
    allocs = conn.execute(select(allocations.c.invoice_id, allocations.c.component,
                                 func.sum(allocations.c.amount_fen)).where(
        allocations.c.source.in_(("payment", "reversal")), allocations.c.source_id == payment_id)
        .group_by(allocations.c.invoice_id, allocations.c.component)).all()
    at = now()
    back = defaultdict(lambda: [0, 0])
    for inv_id, component, amount in allocs:
        back[inv_id][0 if component == "principal" else 1] += int(amount)
    for inv_id, (principal, late) in back.items():
        inv = conn.execute(select(invoices).where(invoices.c.invoice_id == inv_id)).mappings().one()
        if inv["paid_fen"] < principal or inv["late_paid_fen"] < late:
            raise InvalidInput(f"invoice {inv['number']} was changed by a credit note since this payment; "
                               f"correct it with a credit note and a refund instead")
        status = rules.invoice_status(inv["total_fen"], inv["paid_fen"] - principal, inv["credited_fen"],
                                      inv["late_fee_fen"], inv["late_paid_fen"] - late)
        conn.execute(INVOICE_PAID, {"iid": inv_id, "principal": -principal, "late": -late, "new_status": status})
        for component, amount in (("principal", principal), ("late_fee", late)):
            if amount:
                conn.execute(INSERT_ALLOCATIONS, dict(source="reversal", source_id=payment_id, invoice_id=inv_id,
                                                      component=component, amount_fen=-amount, at=at))
    post(conn, p.site_id, "reversal", payment_id, [(receivable(p.account_id), p.method, p.allocated_fen),
                                                   (prepaid(p.account_id), p.method, p.prepaid_fen)], p.currency, at)
    conn.execute(ACCOUNT_BALANCES, {"aid": p.account_id, "d_receivable": p.allocated_fen,
                                    "d_prepaid": -p.prepaid_fen})
    conn.execute(update(payments).where(payments.c.payment_id == payment_id).values(
        reversed_at=at, reversal_reason=f"{reason} ({operator})"))
    return payment(conn, payment_id)


def pay_batch(engine, items: list[dict], batch: int = 500) -> list[dict]:
    """Apply many payments (a bank statement's transfers) `batch` to a transaction, each exactly as
    pay() would, each still once per idempotency key. A refused item (unknown account, bad amount)
    is answered with {"error": ...} and writes nothing: pay() checks everything before its first
    write. If a concurrent writer takes one of the keys first, that batch is redone one by one."""
    results: list[dict] = []
    for lo in range(0, len(items), batch):
        chunk = items[lo:lo + batch]
        try:
            with engine.begin() as conn:
                _lock_accounts(conn, chunk)
                part = []
                for item in chunk:
                    try:
                        part.append(pay(conn, **item))
                    except InvalidInput as exc:
                        part.append({"error": str(exc), "idempotency_key": item.get("idempotency_key")})
        except IntegrityError:
            part = []
            for item in chunk:
                try:
                    part.append(pay_once(engine, pay, **item))
                except InvalidInput as exc:
                    part.append({"error": str(exc), "idempotency_key": item.get("idempotency_key")})
        results.extend(part)
    return results


def _lock_accounts(conn, items) -> None:
    """PostgreSQL: lock every account a batch will pay, in id order, before its first payment takes
    the site's receipt counter. Otherwise the batch would hold the counter while it waits for an
    account that a counter payment has locked and that payment would wait for the counter: a
    deadlock. Now the batch waits for the account first and takes the counter after."""
    if conn.dialect.name != "postgresql":
        return                              # SQLite: the batch is the only writer already
    aids = set()
    for item in items:
        with contextlib.suppress(InvalidInput):
            aids.add(_account_id(item.get("account_id")))
    if aids:
        conn.execute(LOCK_ACCOUNTS, {"aids": sorted(aids)}).all()


def payment(conn, payment_id) -> dict:
    out = _payment_out(require(conn, payments, payments.c.payment_id, payment_id, "payment"))
    out["allocations"] = [dict(r) for r in conn.execute(
        select(allocations.c.invoice_id, invoices.c.number, invoices.c.period, allocations.c.component,
               allocations.c.amount_fen).join(invoices, invoices.c.invoice_id == allocations.c.invoice_id)
        .where(allocations.c.source == "payment", allocations.c.source_id == payment_id)
        .order_by(allocations.c.allocation_id)).mappings()]
    return out


def list_payments(conn, site_id, account_id=None, limit=200) -> list[dict]:
    q = select(payments).where(payments.c.site_id == site_id).order_by(payments.c.receipt_seq).limit(limit)
    if account_id is not None:
        q = q.where(payments.c.account_id == _account_id(account_id))
    return [_payment_out(r) for r in conn.execute(q).mappings()]


def credit_note(conn, invoice_id, idempotency_key, reason, amount=None, amount_fen=None, operator="staff") -> dict:
    """Cancel part of an invoice's principal. What is still unpaid is reduced first; anything
    beyond (the invoice was paid) becomes prepaid credit, which a refund can pay out."""
    key = _key(idempotency_key)
    fen = _rule(rules.parse_amount, amount, amount_fen)
    if not reason:
        raise InvalidInput("a credit note needs a reason")
    inv = require(conn, invoices, invoices.c.invoice_id, invoice_id, "invoice")
    conn.execute(select(accounts.c.account_id).where(accounts.c.account_id == inv.account_id).with_for_update())
    found = conn.execute(select(credit_notes).where(credit_notes.c.idempotency_key == key)).mappings().first()
    if found:
        if found["invoice_id"] != inv.invoice_id or found["amount_fen"] != fen:
            raise InvalidInput(f"idempotency_key {key!r} was already used for another credit note")
        return {**dict(found), "at": found["at"].isoformat(), "duplicate": True}
    if inv.status not in ("issued", "partly_paid", "paid"):
        raise InvalidInput(f"invoice {invoice_id} is {inv.status}; only issued invoices take credit notes")
    creditable = inv.total_fen - inv.credited_fen
    if fen > creditable:
        raise InvalidInput(f"the credit note ({rules.yuan(fen)}) is more than the invoice's principal not yet "
                           f"credited ({rules.yuan(creditable)})")
    to_invoice = min(fen, inv.total_fen - inv.paid_fen - inv.credited_fen)
    to_prepaid = fen - to_invoice
    at = now()
    seq = _next_numbers(conn, inv.site_id, "credit_note")
    num = number("credit_note", inv.site_id, seq)
    conn.execute(insert(credit_notes).values(
        site_id=inv.site_id, idempotency_key=key, account_id=inv.account_id, invoice_id=inv.invoice_id, number=num,
        amount_fen=fen, to_invoice_fen=to_invoice, to_prepaid_fen=to_prepaid, currency=inv.currency, reason=reason,
        operator=operator, at=at))
    # principal paid beyond the new total moves from paid to prepaid credit
    conn.execute(update(invoices).where(invoices.c.invoice_id == inv.invoice_id).values(
        credited_fen=invoices.c.credited_fen + fen, paid_fen=invoices.c.paid_fen - to_prepaid))
    _refresh_status(conn, inv.invoice_id)
    post(conn, inv.site_id, "credit_note", num, [("contra:credit_notes", receivable(inv.account_id), to_invoice),
                                                 ("contra:credit_notes", prepaid(inv.account_id), to_prepaid)],
         inv.currency, at)
    conn.execute(update(accounts).where(accounts.c.account_id == inv.account_id).values(
        receivable_fen=accounts.c.receivable_fen - to_invoice, prepaid_fen=accounts.c.prepaid_fen + to_prepaid))
    if to_prepaid:
        _draw_prepaid(conn, inv.account_id, at)      # credit pays other open debts first, like any prepaid
    row = conn.execute(select(credit_notes).where(credit_notes.c.idempotency_key == key)).mappings().one()
    return {**dict(row), "at": row["at"].isoformat(), "duplicate": False}


def refund(conn, account_id, idempotency_key, method, reason, amount=None, amount_fen=None, currency="CNY",
           operator="staff") -> dict:
    """Pay prepaid credit back to the household (cash, card or bank); never more than the credit."""
    key = _key(idempotency_key)
    fen = _rule(rules.parse_amount, amount, amount_fen)
    if method not in ("cash", "card", "bank", "online"):
        raise InvalidInput(f"method must be cash, card, bank or online, got {method!r}")
    if not reason:
        raise InvalidInput("a refund needs a reason")
    aid = _account_id(account_id)
    acct = conn.execute(select(accounts).where(accounts.c.account_id == aid).with_for_update()).mappings().first()
    if acct is None:
        raise NotFound(f"unknown account {account_id!r}")
    found = conn.execute(select(refunds).where(refunds.c.idempotency_key == key)).mappings().first()
    if found:
        if found["account_id"] != aid or found["amount_fen"] != fen:
            raise InvalidInput(f"idempotency_key {key!r} was already used for another refund")
        return {**dict(found), "at": found["at"].isoformat(), "duplicate": True}
    _rule(rules.check_currency, currency, acct["currency"])
    if fen > acct["prepaid_fen"]:
        raise InvalidInput(f"the refund ({rules.yuan(fen)}) is more than the account's prepaid credit "
                           f"({rules.yuan(acct['prepaid_fen'])}); issue a credit note first")
    at = now()
    conn.execute(insert(refunds).values(site_id=acct["site_id"], idempotency_key=key, account_id=aid,
                                        amount_fen=fen, currency=currency, method=method, reason=reason,
                                        operator=operator, at=at))
    post(conn, acct["site_id"], "refund", key, [(prepaid(aid), method, fen)], currency, at)
    conn.execute(update(accounts).where(accounts.c.account_id == aid).values(prepaid_fen=accounts.c.prepaid_fen - fen))
    row = conn.execute(select(refunds).where(refunds.c.idempotency_key == key)).mappings().one()
    return {**dict(row), "at": row["at"].isoformat(), "duplicate": False}


# -- late fees ----------------------------------------------------------------------------------

def accrue_late_fees(conn, site_id, as_of) -> dict:
    """The daily late-fee job for `as_of` (a date). Each open invoice accrues, exactly, rate x unpaid
    principal for every day more than grace_days after its due date that it has not accrued yet,
    up to the cap; the invoice's late fee becomes the rounded total and only the increase is
    charged. A (invoice, day) row makes a second run for the same day charge nothing."""
    site_row = _site_row(conn, site_id)
    as_of = _date(as_of, "as_of")
    policy = rules.LateFeePolicy(site_row.late_fee_ppm, site_row.late_fee_grace_days, site_row.late_fee_cap_ppm)
    if not policy.ppm_per_day:
        return {"site_id": site_id, "as_of": as_of.isoformat(), "invoices": 0, "charged_fen": 0}
    last_free_due = as_of - timedelta(days=site_row.late_fee_grace_days + 1)
    rows = conn.execute(select(invoices, accounts.c.unit_id).join(accounts, accounts.c.account_id ==
                                                                  invoices.c.account_id)
                        .where(invoices.c.site_id == site_id, invoices.c.status.in_(OPEN),
                               invoices.c.due_date <= last_free_due,
                               invoices.c.total_fen > invoices.c.paid_fen + invoices.c.credited_fen)
                        .order_by(invoices.c.invoice_id)).mappings().all()
    at = now()
    count = charged_total = 0
    for inv in rows:
        days = rules.late_fee_days(inv["due_date"], policy.grace_days, inv["late_through"], as_of)
        if days <= 0:
            continue
        unpaid = inv["total_fen"] - inv["paid_fen"] - inv["credited_fen"]
        accrued = rules.accrue(inv["late_accrued_micro"], unpaid, days, inv["total_fen"] - inv["credited_fen"],
                               policy)
        target = rules.late_fee_fen(accrued, site_row.rounding)
        delta = target - inv["late_fee_fen"]
        added = conn.execute(insert_ignore(conn, late_fee_accruals).values(
            invoice_id=inv["invoice_id"], through=as_of, days=days, unpaid_principal_fen=unpaid,
            accrued_micro=accrued, charged_fen=max(delta, 0)).returning(late_fee_accruals.c.days)).first()
        if added is None:
            continue
        conn.execute(update(invoices).where(invoices.c.invoice_id == inv["invoice_id"]).values(
            late_accrued_micro=accrued, late_through=as_of, late_fee_fen=invoices.c.late_fee_fen + max(delta, 0)))
        if delta > 0:
            post(conn, site_id, "late_fee", inv["number"] or inv["invoice_id"],
                 [(receivable(inv["account_id"]), "income:late_fee", delta)], inv["currency"], at)
            conn.execute(update(accounts).where(accounts.c.account_id == inv["account_id"]).values(
                receivable_fen=accounts.c.receivable_fen + delta))
            charged_total += delta
        count += 1
    return {"site_id": site_id, "as_of": as_of.isoformat(), "invoices": count, "charged_fen": charged_total}


# -- arrears and dunning ------------------------------------------------------------------------

def _open_balances(conn, site_id, as_of):
    q = (select(invoices.c.invoice_id, invoices.c.account_id, invoices.c.number, invoices.c.period,
                invoices.c.due_date, invoices.c.currency, invoices.c.status,
                (invoices.c.total_fen - invoices.c.paid_fen - invoices.c.credited_fen + invoices.c.late_fee_fen
                 - invoices.c.late_paid_fen).label("outstanding"),
                accounts.c.unit_id, accounts.c.building, accounts.c.payer)
         .join(accounts, accounts.c.account_id == invoices.c.account_id)
         .where(invoices.c.site_id == site_id, invoices.c.status.in_(OPEN)))
    return [r for r in conn.execute(q).mappings() if r["outstanding"] > 0]


def arrears(conn, site_id, as_of, limit=500) -> dict:
    """Who owes what since when: overdue balances as of a date in aging buckets (days past the
    due date) per building and for the site, and each owing account with its oldest due date."""
    _site_row(conn, site_id)
    as_of = _date(as_of, "as_of")
    empty = {b: 0 for b in rules.AGING_BUCKETS}
    site_total, buildings, per_account = dict(empty), defaultdict(lambda: dict(empty)), {}
    not_due = 0
    for r in _open_balances(conn, site_id, as_of):
        bucket = rules.aging_bucket((as_of - r["due_date"]).days)
        if bucket is None:
            not_due += r["outstanding"]
            continue
        site_total[bucket] += r["outstanding"]
        buildings[r["building"]][bucket] += r["outstanding"]
        a = per_account.setdefault(r["account_id"], {
            "account_id": r["account_id"], "unit_id": r["unit_id"], "building": r["building"], "payer": r["payer"],
            "overdue_fen": 0, "oldest_due_date": r["due_date"], "invoices": 0, **{b: 0 for b in rules.AGING_BUCKETS}})
        a["overdue_fen"] += r["outstanding"]
        a[bucket] += r["outstanding"]
        a["invoices"] += 1
        a["oldest_due_date"] = min(a["oldest_due_date"], r["due_date"])
    owing = sorted(per_account.values(), key=lambda a: (a["oldest_due_date"], -a["overdue_fen"]))
    for a in owing:
        a["days_overdue"] = (as_of - a["oldest_due_date"]).days
        a["oldest_due_date"] = a["oldest_due_date"].isoformat()
    return {"site_id": site_id, "as_of": as_of.isoformat(), "currency": _site_row(conn, site_id).currency,
            "site": {**site_total, "total": sum(site_total.values()), "not_due": not_due},
            "buildings": {b: {**v, "total": sum(v.values())} for b, v in sorted(buildings.items())},
            "accounts": owing[:limit], "accounts_owing": len(owing)}


def run_dunning(conn, site_id, as_of) -> dict:
    """Reminders for overdue invoices at the site's steps (days after due). Each (invoice, step) is
    recorded once; when several steps are reached at once only the highest is announced.
    Reminders are notifications only: billing never touches access (no one is locked out)."""
    site_row = _site_row(conn, site_id)
    as_of = _date(as_of, "as_of")
    step_days = json.loads(site_row.dunning_days)
    open_rows = _open_balances(conn, site_id, as_of)
    by_account = defaultdict(list)
    for r in open_rows:
        by_account[r["account_id"]].append(r)
    at = now()
    due: dict[str, tuple[int, int, dict, list[str]]] = {}   # account -> (step, days, its invoice, numbers)
    for r in open_rows:
        days = (as_of - r["due_date"]).days
        reached = rules.dunning_steps_reached(days, step_days)
        if not reached:
            continue
        # RETURNING tells whether the row went in (rowcount is -1 for this on psycopg)
        new = [s for s in reached if conn.execute(insert_ignore(conn, dunning).values(
            invoice_id=r["invoice_id"], step=s, account_id=r["account_id"], days_overdue=days,
            published=s == reached[-1], at=at).returning(dunning.c.step)).first() is not None]
        if not new or new[-1] != reached[-1]:
            continue
        step, _days, _row, numbers = due.get(r["account_id"], (0, 0, r, []))
        numbers.append(r["number"])
        if (new[-1], days) > (step, _days):
            due[r["account_id"]] = (new[-1], days, r, numbers)
        else:
            due[r["account_id"]] = (step, _days, _row, numbers)
    # one reminder per household per run, at the highest step any of its invoices reached,
    # naming them all: two overdue bills are one letter, not two
    for account_id, (step, days, r, numbers) in due.items():
        mine = by_account[account_id]
        queue(conn, outbox, site_id, "dunning_due", account_id=account_id, unit_id=r["unit_id"],
              payer=r["payer"], step=step, days_overdue=days, outstanding_fen=sum(x["outstanding"] for x in mine),
              currency=r["currency"], oldest_due_date=min(x["due_date"] for x in mine).isoformat(),
              invoice_number=r["number"], invoice_numbers=sorted(numbers))
    return {"site_id": site_id, "as_of": as_of.isoformat(), "reminders": len(due)}


# -- the ledger check ---------------------------------------------------------------------------

def verify_ledger(conn, site_id=None) -> dict:
    """Prove the books: every journal transaction balances (debits == credits), no entry is
    negative, and every account's receivable and prepaid balances equal the sums of their
    entries and of its open invoices. Returns {"ok": bool, "problems": [...]}."""
    problems = []
    bad = select(func.count()).select_from(journal).where(
        (journal.c.amount_fen <= 0) | (journal.c.debit == journal.c.credit))
    if site_id:
        bad = bad.where(journal.c.site_id == site_id)
    if conn.execute(bad).scalar():
        problems.append("journal entries with a non-positive amount or the same code on both sides")
    sides = defaultdict(int)
    where = [journal.c.site_id == site_id] if site_id else []
    for code, total in conn.execute(select(journal.c.debit, func.sum(journal.c.amount_fen)).where(*where)
                                    .group_by(journal.c.debit)):
        sides[code] += int(total)
    for code, total in conn.execute(select(journal.c.credit, func.sum(journal.c.amount_fen)).where(*where)
                                    .group_by(journal.c.credit)):
        sides[code] -= int(total)
    if sum(sides.values()) != 0:
        problems.append(f"debits and credits differ by {sum(sides.values())} fen")
    aq = select(accounts.c.account_id, accounts.c.unit_id, accounts.c.receivable_fen, accounts.c.prepaid_fen)
    iq = (select(invoices.c.account_id, func.sum(invoices.c.total_fen - invoices.c.paid_fen - invoices.c.credited_fen
                                                 + invoices.c.late_fee_fen - invoices.c.late_paid_fen))
          .where(invoices.c.status.in_((*OPEN, "paid"))).group_by(invoices.c.account_id))
    if site_id:
        aq = aq.where(accounts.c.site_id == site_id)
        iq = iq.where(invoices.c.site_id == site_id)
    open_sum = {a: int(v) for a, v in conn.execute(iq).all()}       # PostgreSQL sums are Decimal
    checked = 0
    for a in conn.execute(aq):
        checked += 1
        rec = sides.pop(receivable(a.account_id), 0)
        pre = -sides.pop(prepaid(a.account_id), 0)
        if rec != a.receivable_fen:
            problems.append(f"account {a.account_id} ({a.unit_id}): receivable {a.receivable_fen} but entries sum to {rec}")
        if pre != a.prepaid_fen:
            problems.append(f"account {a.account_id} ({a.unit_id}): prepaid {a.prepaid_fen} but entries sum to {pre}")
        if open_sum.get(a.account_id, 0) != a.receivable_fen:
            problems.append(f"account {a.account_id} ({a.unit_id}): receivable {a.receivable_fen} but its invoices "
                            f"leave {open_sum.get(a.account_id, 0)} unpaid")
    strays = {c: v for c, v in sides.items() if c.startswith(("receivable:", "prepaid:")) and v}
    if strays:
        problems.append(f"entries for unknown accounts: {sorted(strays)[:5]}")
    txns = conn.execute(select(func.count(func.distinct(journal.c.txn))).where(*where)).scalar()
    income = {c: -v for c, v in sides.items() if c.startswith("income:")}
    return {"ok": not problems, "problems": problems[:50], "accounts_checked": checked, "transactions": txns,
            "income_fen": income}


def ledger(conn, account_id) -> list[dict]:
    """An account's statement: its receivable and prepaid entries in order."""
    aid = _account_id(account_id)
    codes = (receivable(aid), prepaid(aid))
    rows = conn.execute(select(journal).where(journal.c.debit.in_(codes) | journal.c.credit.in_(codes))
                        .order_by(journal.c.entry_id)).mappings()
    return [{**dict(r), "at": r["at"].isoformat()} for r in rows]


# -- parking ------------------------------------------------------------------------------------

def record_parking_session(conn, event: dict) -> dict:
    """parking.session_closed, once per session: what was paid at the lane is parking income;
    an unpaid remainder of a known household becomes a one-off charge on its account; any
    other unpaid remainder is recorded as uncollected (no income is booked for it)."""
    session_id, site_id = event.get("session_id"), event.get("site_id")
    if not session_id or not site_id:
        raise InvalidInput("session_closed without a session_id or site_id")
    for k in ("fee_fen", "paid_fen", "due_fen"):
        v = event.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise InvalidInput(f"session_closed {session_id}: {k} must be a non-negative integer, got {v!r}")
    found = conn.execute(select(parking_fees).where(parking_fees.c.session_id == session_id)).mappings().first()
    if found:
        return {**_parking_out(found), "duplicate": True}
    currency = event.get("currency") or "CNY"
    paid = int(event.get("paid_fen") or 0)
    due = int(event.get("due_fen") or 0)
    # what billing itself took online for this session is already booked (pay_parking_session)
    online = conn.execute(select(func.coalesce(func.sum(payments.c.amount_fen), 0)).where(
        payments.c.target == f"parking_session:{session_id}")).scalar()
    lane_paid = max(0, paid - int(online))
    at = now()
    outcome, account_id, invoice_id = "settled", None, None
    if lane_paid:
        post(conn, site_id, "parking_lane", session_id, [("cash:parking_lanes", "income:parking", lane_paid)],
             currency, at)
    if due > 0:
        holder = event.get("holder")
        acct = conn.execute(select(accounts).where(accounts.c.site_id == site_id, accounts.c.unit_id == holder)
                            ).mappings().first() if holder else None
        if acct is not None and acct["currency"] == currency:
            _builtin_item(conn, site_id, "parking", "Temporary parking", "parking")
            inv = charge(conn, acct["account_id"], "parking", amount_fen=due,
                         description=f"Parking {event.get('plate', '')} {str(event.get('entered_at', ''))[:16]}"
                                     f" - {str(event.get('left_at', ''))[:16]} (unpaid at exit)",
                         idempotency_key=f"parking:{session_id}", kind="parking", period=f"parking:{session_id}")
            outcome, account_id, invoice_id = "charged", acct["account_id"], inv["invoice_id"]
        else:
            outcome = "uncollected"
    left_at = event.get("left_at")
    conn.execute(insert(parking_fees).values(
        session_id=session_id, event_id=event.get("event_id") or "", site_id=site_id, lot_id=event.get("lot_id") or "",
        plate=event.get("plate") or "", holder=event.get("holder"), fee_fen=int(event.get("fee_fen") or 0),
        paid_fen=paid, lane_paid_fen=lane_paid, due_fen=due, currency=currency, outcome=outcome,
        account_id=account_id, invoice_id=invoice_id,
        left_at=datetime.fromisoformat(left_at) if left_at else None, recorded_at=at))
    row = conn.execute(select(parking_fees).where(parking_fees.c.session_id == session_id)).mappings().one()
    return {**_parking_out(row), "duplicate": False}


def _parking_out(row) -> dict:
    d = dict(row)
    for k in ("left_at", "recorded_at"):
        d[k] = d[k].isoformat() if d[k] else None
    return d


def parking_fees_for(conn, site_id, outcome=None, limit=200) -> list[dict]:
    q = select(parking_fees).where(parking_fees.c.site_id == site_id).order_by(parking_fees.c.recorded_at.desc())
    if outcome:
        q = q.where(parking_fees.c.outcome == outcome)
    return [_parking_out(r) for r in conn.execute(q.limit(limit)).mappings()]


def pay_parking_session(conn, site_id, session_id, lot_id, idempotency_key, amount_fen, currency, method,
                        payer="", reference="", at=None) -> dict:
    """A parking session's fee paid through billing (online): parking income, a receipt, and
    billing.parking_fee_paid for the lane. Once per idempotency key."""
    key = _key(idempotency_key)
    _site_row(conn, site_id)
    fen = _rule(rules.parse_amount, amount_fen=amount_fen)
    found = _existing_payment(conn, key, None, fen)
    if found:
        return found
    at = at or now()
    payment_id = str(uuid.uuid4())
    seq = _next_numbers(conn, site_id, "receipt")
    conn.execute(insert(payments).values(
        payment_id=payment_id, site_id=site_id, idempotency_key=key, account_id=None,
        target=f"parking_session:{session_id}", method=method, amount_fen=fen, currency=currency,
        allocated_fen=fen, prepaid_fen=0, payer=payer or "", operator="online", reference=reference or "",
        receipt_seq=seq, receipt_number=number("receipt", site_id, seq), received_at=at))
    post(conn, site_id, "parking_online", payment_id, [(method, "income:parking", fen)], currency, at)
    queue(conn, outbox, site_id, "parking_fee_paid", session_id=session_id, lot_id=lot_id, payment_id=payment_id,
          amount_fen=fen, currency=currency)
    return _payment_out(conn.execute(select(payments).where(payments.c.payment_id == payment_id)).mappings().one())


# -- online payment intents ---------------------------------------------------------------------

def create_intent(conn, site_id, idempotency_key, provider, target, amount=None, amount_fen=None,
                  currency="CNY", payer="") -> tuple[dict, bool]:
    """Record an online payment before asking the provider; returns (intent, created_now).
    target: {"kind": "account", "account_id": n} or {"kind": "parking_session", "session_id", "lot_id"}."""
    key = _key(idempotency_key)
    fen = _rule(rules.parse_amount, amount, amount_fen)
    site_row = _site_row(conn, site_id)
    if not isinstance(target, dict) or target.get("kind") not in ("account", "parking_session"):
        raise InvalidInput("target must be {\"kind\": \"account\", \"account_id\": ...} or "
                           "{\"kind\": \"parking_session\", \"session_id\": ..., \"lot_id\": ...}")
    account_id = None
    if target["kind"] == "account":
        acct = require(conn, accounts, accounts.c.account_id, _account_id(target.get("account_id")), "account")
        if acct.site_id != site_id:
            raise InvalidInput(f"account {acct.account_id} is not at site {site_id!r}")
        _rule(rules.check_currency, currency, acct.currency)
        account_id, payer = acct.account_id, payer or acct.payer
        target = {"kind": "account", "account_id": account_id}
    else:
        if not target.get("session_id") or not target.get("lot_id"):
            raise InvalidInput("a parking_session target needs session_id and lot_id")
        _rule(rules.check_currency, currency, site_row.currency)
        target = {"kind": "parking_session", "session_id": str(target["session_id"]), "lot_id": str(target["lot_id"])}
    found = conn.execute(select(intents).where(intents.c.idempotency_key == key)).mappings().first()
    if found:
        if found["amount_fen"] != fen or json.loads(found["target"]) != target:
            raise InvalidInput(f"idempotency_key {key!r} was already used for another online payment")
        return _intent_out(found), False
    at = now()
    intent_id = str(uuid.uuid4())
    conn.execute(insert(intents).values(intent_id=intent_id, site_id=site_id, idempotency_key=key, provider=provider,
                                        account_id=account_id, target=json.dumps(target), amount_fen=fen,
                                        currency=currency, payer=payer or "", status="created", created_at=at,
                                        updated_at=at))
    return intent(conn, intent_id), True


def _intent_out(row) -> dict:
    d = dict(row)
    d["target"] = json.loads(d["target"])
    for k in ("created_at", "updated_at"):
        d[k] = d[k].isoformat()
    return d


def intent(conn, intent_id) -> dict:
    return _intent_out(require(conn, intents, intents.c.intent_id, intent_id, "online payment"))


def intent_started(conn, intent_id, provider_ref, pay_url) -> dict:
    conn.execute(update(intents).where(intents.c.intent_id == intent_id, intents.c.status == "created").values(
        provider_ref=provider_ref, pay_url=pay_url, status="pending", updated_at=now()))
    return intent(conn, intent_id)


def settle_intent(conn, intent_id, status, amount_fen, currency, provider_ref=None) -> dict:
    """What the provider says happened (webhook or query). Success applies the payment once
    (idempotency key "online:<intent>"); a different amount or currency is held as a mismatch
    for staff, never applied."""
    it = conn.execute(select(intents).where(intents.c.intent_id == intent_id).with_for_update()).mappings().first()
    if it is None:
        raise NotFound(f"unknown online payment {intent_id!r}")
    if it["status"] in ("succeeded", "failed", "mismatch") or status not in ("succeeded", "failed"):
        return _intent_out(it)
    at = now()
    values = {"updated_at": at, "provider_ref": it["provider_ref"] or provider_ref}
    if status == "failed":
        values["status"] = "failed"
    elif amount_fen != it["amount_fen"] or currency != it["currency"]:
        values["status"] = "mismatch"
    else:
        target = json.loads(it["target"])
        key = f"online:{intent_id}"
        if target["kind"] == "account":
            p = pay(conn, it["account_id"], key, "online", amount_fen=amount_fen, currency=currency, payer=it["payer"],
                    operator="online", reference=values["provider_ref"] or "", at=at)
        else:
            p = pay_parking_session(conn, it["site_id"], target["session_id"], target["lot_id"], key, amount_fen,
                                    currency, "online", it["payer"], values["provider_ref"] or "", at)
        values.update(status="succeeded", payment_id=p["payment_id"])
    conn.execute(update(intents).where(intents.c.intent_id == intent_id).values(**values))
    return intent(conn, intent_id)


def unsettled_intents(conn, older_than_s: float = 60, limit=100) -> list[dict]:
    cutoff = now() - timedelta(seconds=older_than_s)
    rows = conn.execute(select(intents).where(intents.c.status.in_(("created", "pending")),
                                              intents.c.updated_at <= cutoff)
                        .order_by(intents.c.created_at).limit(limit)).mappings()
    return [_intent_out(r) for r in rows]


# -- documents ----------------------------------------------------------------------------------

def receipt(conn, receipt_number) -> dict:
    """Everything a printed receipt shows: site name, number, payer, items paid."""
    p = conn.execute(select(payments).where(payments.c.receipt_number == receipt_number)).mappings().first()
    if p is None:
        raise NotFound(f"unknown receipt {receipt_number!r}")
    out = payment(conn, p["payment_id"])
    out["site_name"] = _site_row(conn, p["site_id"]).name
    out["unit_id"] = None
    if p["account_id"] is not None:
        out["unit_id"] = conn.execute(select(accounts.c.unit_id).where(
            accounts.c.account_id == p["account_id"])).scalar()
    items = [{"text": f"{a['number'] or ''} {a['period']} ({'late fee' if a['component'] == 'late_fee' else 'charges'})",
              "amount_fen": a["amount_fen"]} for a in out["allocations"]]
    if p["target"].startswith("parking_session:"):
        items.append({"text": f"Parking session {p['target'].split(':', 1)[1]}", "amount_fen": p["amount_fen"]})
    if p["prepaid_fen"]:
        items.append({"text": "Prepaid (预缴) credit", "amount_fen": p["prepaid_fen"]})
    out["items"] = items
    return out


def export_rows(conn, site_id, kind, as_of=None) -> tuple[list[str], list[list]]:
    """Rows for the XLSX exports: invoices, payments or arrears (amounts in yuan as numbers)."""
    _site_row(conn, site_id)
    if kind == "invoices":
        head = ["number", "unit", "payer", "period", "status", "due_date", "total", "paid", "credited", "late_fee",
                "late_fee_paid", "outstanding", "currency"]
        q = (select(invoices, accounts.c.unit_id, accounts.c.payer)
             .join(accounts, accounts.c.account_id == invoices.c.account_id)
             .where(invoices.c.site_id == site_id).order_by(invoices.c.invoice_id))
        rows = [[r["number"], r["unit_id"], r["payer"], r["period"], r["status"], r["due_date"],
                 *[r[k] / 100 for k in ("total_fen", "paid_fen", "credited_fen", "late_fee_fen", "late_paid_fen")],
                 _outstanding(r) / 100, r["currency"]] for r in conn.execute(q).mappings()]
        return head, rows
    if kind == "payments":
        head = ["receipt", "received_at (UTC)", "unit", "payer", "method", "amount", "to invoices", "to prepaid",
                "reference", "currency", "reversed"]
        q = (select(payments, accounts.c.unit_id).outerjoin(accounts, accounts.c.account_id == payments.c.account_id)
             .where(payments.c.site_id == site_id).order_by(payments.c.receipt_seq))
        rows = [[r["receipt_number"], r["received_at"].replace(tzinfo=None), r["unit_id"] or r["target"], r["payer"],
                 r["method"], r["amount_fen"] / 100, r["allocated_fen"] / 100, r["prepaid_fen"] / 100, r["reference"],
                 r["currency"], r["reversal_reason"] or ""] for r in conn.execute(q).mappings()]
        return head, rows
    if kind == "arrears":
        report = arrears(conn, site_id, as_of or now().date(), limit=10**9)
        head = ["unit", "building", "payer", "oldest_due_date", "days_overdue", *rules.AGING_BUCKETS, "overdue",
                "currency"]
        rows = [[a["unit_id"], a["building"], a["payer"], a["oldest_due_date"], a["days_overdue"],
                 *[a[b] / 100 for b in rules.AGING_BUCKETS], a["overdue_fen"] / 100, report["currency"]]
                for a in report["accounts"]]
        return head, rows
    raise InvalidInput(f"export must be invoices, payments or arrears, got {kind!r}")


def counts(conn, site_id) -> dict:
    """How many lines and invoices a site has (for checks and the bench)."""
    n_lines = conn.execute(select(func.count()).select_from(lines).join(
        invoices, invoices.c.invoice_id == lines.c.invoice_id).where(invoices.c.site_id == site_id)).scalar()
    n_inv = conn.execute(select(func.count()).select_from(invoices).where(invoices.c.site_id == site_id)).scalar()
    return {"lines": n_lines, "invoices": n_inv}

