"""Billing: a monthly run over 100,000 units on SQLite and on PostgreSQL (store functions in
process, chunks of 2,000 accounts a transaction: invoices, lines, journal, outbox, balances),
the same period run again (lines created: goal 0), and counter payments applied with allocation.

Baselines in the same run: a raw executemany insert of the same invoice and line rows into
tables of the same shape (constraints and indexes included), and a raw insert of payment rows
one transaction each; the ratios say what the billing logic costs on top.

Payment figures (per database `*_sqlite` / `*_postgresql`; all through store.pay_once(engine,
store.pay, ...), the function the service's `pay` RPC calls, one payment a transaction):

- `billing.payments_per_s_*`: 10,000 payments one at a time (one caller), each to its own account
  with an open invoice (half pay part of it, half more than owed: a prepaid remainder).
- `billing.payments_per_s_8_workers_*`: 10,000 more, to 10,000 other accounts, from 8 threads at
  once, each thread with its own connection (many counters and webhooks paying at the same
  time; all of one site, so all share its receipt counter). SQLite runs one writer at a time.
- `billing.payments_per_s_bank_batch_*`: the first 10,000 accounts again as a bank statement
  (store.pay_batch, 500 a transaction).
- `billing.raw_payment_inserts_per_s_*` / `..._8_workers_*`: baseline, one bare insert of a
  payment row and its commit per transaction (no lock, no reads, no allocation), one caller /
  8 threads; `billing.payments_ratio_to_raw_*` / `..._8_workers_*`: payments per second divided
  by the baseline's (1.0 = a payment costs no more than the bare insert).
- `billing.payments_per_s`: the SQLite one-at-a-time figure (the embedded default).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path

from sqlalchemy import MetaData, insert

N_UNITS = 100_000
N_PAYMENTS = 10_000
N_WORKERS = 8
PERIOD = "2026-11"


@contextlib.contextmanager
def _database(kind: str):
    from tests.stack import Database
    with tempfile.TemporaryDirectory(prefix="gh-bench-billing-") as tmp:
        db = Database(kind, Path(tmp))
        saved = {k: os.environ.get(k) for k in ("GATEHOUSE_VAR", "DATABASE_URL")}
        os.environ.update(db.env())
        if not db.url:
            os.environ.pop("DATABASE_URL", None)
        try:
            from gatehouse.db import engine_for, migrate
            migrate("billing")
            engine = engine_for("billing")
            yield engine
            engine.dispose()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            db.drop()


def _site(engine, n):
    from services.billing import store
    with engine.begin() as conn:
        store.set_site(conn, "bench", "Bench Estate")
        store.set_fee_item(conn, "bench", "mgmt", "Property management", "area")
        store.set_rate(conn, "bench", "mgmt", "2.50")
        store.set_rate(conn, "bench", "mgmt", "3.20", "building", "7")
        store.set_fee_item(conn, "bench", "rubbish", "Rubbish collection", "fixed")
        store.set_rate(conn, "bench", "rubbish", "12.00")
    rows = [dict(unit_id=f"{i // 2000 + 1}-{i // 100 % 20 + 1}-{i % 100 + 101}", building=str(i // 2000 + 1),
                 floor=str(i // 100 % 20 + 1), area_m2=f"{60 + i % 90}.{i % 100:02d}", payer=f"Household {i}")
            for i in range(n)]
    started = time.perf_counter()
    for i in range(0, n, 10_000):
        with engine.begin() as conn:
            store.upsert_accounts(conn, "bench", rows[i:i + 10_000])
    return time.perf_counter() - started


def _raw_baseline(engine, n_invoices, n_lines):
    """executemany of the same rows into same-shaped tables, 2,000 accounts a transaction."""
    from datetime import UTC, date, datetime

    from services.billing import tables
    meta = MetaData()
    inv = tables.invoices.to_metadata(meta, name="raw_invoices")
    lin = tables.lines.to_metadata(meta, name="raw_lines")
    for t in (inv, lin):
        for c in list(t.constraints) + list(t.indexes):
            if getattr(c, "name", None):
                c.name = "raw_" + c.name
        for c in list(t.foreign_keys):
            t.foreign_keys.discard(c)
            c.constraint and t.constraints.discard(c.constraint)
    with engine.begin() as conn:
        meta.create_all(conn)
    at = datetime.now(UTC)
    per_inv = n_lines // n_invoices
    started = time.perf_counter()
    for lo in range(0, n_invoices, 2000):
        hi = min(n_invoices, lo + 2000)
        with engine.begin() as conn:
            conn.execute(insert(inv), [dict(invoice_id=i + 1, site_id="bench", account_id=i + 1, period=PERIOD,
                                            kind="cycle", status="issued", number_seq=i + 1, number=f"bench-INV{i:07d}",
                                            currency="CNY", total_fen=23375, paid_fen=0, credited_fen=0,
                                            late_fee_fen=0, late_paid_fen=0, late_accrued_micro=0,
                                            period_start=date(2026, 11, 1), due_date=date(2026, 11, 16), run_id=1,
                                            created_at=at, issued_at=at) for i in range(lo, hi)])
            conn.execute(insert(lin), [dict(invoice_id=i + 1, account_id=i + 1, fee_item_id=k + 1, period=PERIOD,
                                            description="Property management 89.50 m2 x 2.5 x 1 mo",
                                            amount_fen=22375, currency="CNY")
                                       for i in range(lo, hi) for k in range(per_inv)])
    return time.perf_counter() - started


def _in_threads(n, workers, fn):
    """fn(i) for i in range(n), split over `workers` threads started together; returns seconds."""
    barrier = threading.Barrier(workers + 1)
    errors = []

    def work(k):
        barrier.wait()
        try:
            for i in range(k, n, workers):
                fn(i)
        except Exception as exc:   # reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    took = time.perf_counter() - started
    assert not errors, errors[:3]
    return took


def _payments(engine, n):
    from datetime import UTC, datetime

    from sqlalchemy import func, select

    from services.billing import store, tables
    with engine.connect() as conn:
        ids = list(conn.execute(select(tables.accounts.c.account_id).order_by(tables.accounts.c.account_id)
                                .limit(2 * n)).scalars())
    assert len(ids) == 2 * n, "the concurrent payments need accounts of their own"

    def pay(i):
        # half pay part of the month, half pay more than owed (a prepaid remainder)
        store.pay_once(engine, store.pay, ids[i], f"bench-pay-{i}", "cash", amount_fen=10_000 if i % 2 else 40_000)
    started = time.perf_counter()
    for i in range(n):
        pay(i)
    took = time.perf_counter() - started
    # the same again from N_WORKERS threads at once, to the next n accounts (each thread checks
    # out its own connection from the pool for each payment, like the service's workers)
    workers_took = _in_threads(n, N_WORKERS, lambda i: pay(n + i))
    with engine.connect() as conn:
        paid, last = conn.execute(select(func.count(), func.max(tables.payments.c.receipt_seq))).one()
    assert paid == last == 2 * n, (paid, last)          # every payment once, receipts without gaps
    # the first n accounts again as a bank statement import: 500 transfers a transaction
    items = [dict(account_id=aid, idempotency_key=f"bench-bank-{i}", method="bank", amount_fen=5_000,
                  reference=f"BANK-{i}") for i, aid in enumerate(ids[:n])]
    started = time.perf_counter()
    results = store.pay_batch(engine, items)
    batch_took = time.perf_counter() - started
    assert not any("error" in r for r in results)
    meta = MetaData()
    raw = tables.payments.to_metadata(meta, name="raw_payments")
    for c in list(raw.constraints) + list(raw.indexes):
        if getattr(c, "name", None):
            c.name = "raw_" + c.name
    with engine.begin() as conn:
        meta.create_all(conn)
    at = datetime.now(UTC)

    def raw_insert(i):
        with engine.begin() as conn:
            conn.execute(insert(raw).values(
                payment_id=f"p{i}", site_id="bench", idempotency_key=f"k{i}", account_id=i + 1, target="account",
                method="cash", amount_fen=10_000, currency="CNY", allocated_fen=10_000, prepaid_fen=0, payer="x",
                operator="x", reference="", receipt_seq=i + 1, receipt_number=f"R{i}", received_at=at))
    started = time.perf_counter()
    for i in range(n):
        raw_insert(i)
    raw_took = time.perf_counter() - started
    raw_workers_took = _in_threads(n, N_WORKERS, lambda i: raw_insert(n + i))
    return took, workers_took, batch_took, raw_took, raw_workers_took


def bench_billing(n: int = N_UNITS, n_payments: int = N_PAYMENTS, progress=print) -> dict:
    from services.billing import store
    out = {}
    for kind in ("sqlite", "postgresql"):
        with _database(kind) as engine:
            upsert_s = _site(engine, n)
            with engine.begin() as conn:
                run = store.start_run(conn, "bench", PERIOD)
            started = time.perf_counter()
            state = store.run_all(engine, run["run_id"])
            run_s = time.perf_counter() - started
            assert state["invoices_created"] == n, state
            with engine.begin() as conn:
                again = store.start_run(conn, "bench", PERIOD, again=True)
            started = time.perf_counter()
            rerun = store.run_all(engine, again["run_id"])
            rerun_s = time.perf_counter() - started
            with engine.connect() as conn:
                counted = store.counts(conn, "bench")
            started = time.perf_counter()
            with engine.connect() as conn:
                verified = store.verify_ledger(conn, "bench")
            verify_s = time.perf_counter() - started
            assert verified["ok"], verified["problems"][:3]
            raw_s = _raw_baseline(engine, n, state["lines_created"])
            pay_s, workers_s, batch_s, raw_pay_s, raw_workers_s = _payments(engine, n_payments)
            with engine.connect() as conn:
                assert store.verify_ledger(conn, "bench")["ok"]
            progress(f"    billing {kind}: upsert {n} accounts {upsert_s:.1f} s, run {run_s:.1f} s "
                     f"({state['lines_created']} lines), rerun {rerun_s:.1f} s, raw insert {raw_s:.1f} s, "
                     f"{n_payments} payments {pay_s:.1f} s ({N_WORKERS} workers {workers_s:.1f} s, batched {batch_s:.1f} s, "
                     f"raw {raw_pay_s:.1f} s, raw {N_WORKERS} workers {raw_workers_s:.1f} s), verify_ledger {verify_s:.1f} s")
            out[f"billing.run_100k_units_s_{kind}"] = round(run_s, 2)
            out[f"billing.raw_insert_same_rows_s_{kind}"] = round(raw_s, 2)
            out[f"billing.run_ratio_to_raw_insert_{kind}"] = round(run_s / raw_s, 2)
            out[f"billing.rerun_same_period_s_{kind}"] = round(rerun_s, 2)
            out[f"billing.duplicates_on_rerun_{kind}"] = rerun["lines_created"] + (counted["lines"] -
                                                                                 state["lines_created"])
            out[f"billing.verify_ledger_100k_s_{kind}"] = round(verify_s, 2)
            out[f"billing.accounts_upsert_100k_s_{kind}"] = round(upsert_s, 2)
            out[f"billing.payments_per_s_{kind}"] = round(n_payments / pay_s, 1)
            out[f"billing.payments_per_s_bank_batch_{kind}"] = round(n_payments / batch_s, 1)
            out[f"billing.raw_payment_inserts_per_s_{kind}"] = round(n_payments / raw_pay_s, 1)
            out[f"billing.payments_ratio_to_raw_{kind}"] = round(raw_pay_s / pay_s, 2)
            out[f"billing.payments_per_s_{N_WORKERS}_workers_{kind}"] = round(n_payments / workers_s, 1)
            out[f"billing.raw_payment_inserts_per_s_{N_WORKERS}_workers_{kind}"] = round(n_payments / raw_workers_s, 1)
            out[f"billing.payments_ratio_to_raw_{N_WORKERS}_workers_{kind}"] = round(raw_workers_s / workers_s, 2)
    out["billing.duplicates_on_rerun"] = out["billing.duplicates_on_rerun_sqlite"] + \
        out["billing.duplicates_on_rerun_postgresql"]
    out["billing.payments_per_s"] = out["billing.payments_per_s_sqlite"]
    out["billing.units"] = n
    out["billing.lines_per_run"] = state["lines_created"]
    return out


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(bench_billing(int(sys.argv[1]) if len(sys.argv) > 1 else N_UNITS,
                                   int(sys.argv[2]) if len(sys.argv) > 2 else N_PAYMENTS), indent=1))
