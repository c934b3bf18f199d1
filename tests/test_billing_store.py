"""Billing records on both databases: runs that resume without missing or duplicate lines,
payments applied once (also when submitted twice at once), refused input that writes nothing,
allocation with prepaid, late fees, the ledger check, arrears, dunning, parking fees, online
payments through the real fake provider, and the printable documents."""
from __future__ import annotations

import io
import json
import threading

import pytest
from sqlalchemy import delete, func, select

from gatehouse import outbox
from services.billing import documents, online, store, tables
from services.billing.fakeprovider import FakeProviderServer

UNITS = [("1-1-101", "1", "1", "89.50", "Li Wei"), ("1-1-102", "1", "1", "120.00", "Zhang Min"),
         ("2-1-301", "2", "3", "76.25", "Wang Fang")]


@pytest.fixture
def db(migrated):
    engine = migrated("billing")
    with engine.begin() as conn:
        store.set_site(conn, "s1", "Green Court Estate", late_fee_rate="0.0005", late_fee_grace_days=0,
                       late_fee_cap="0.1", due_days=15, dunning_days=[7, 30, 60])
        store.set_fee_item(conn, "s1", "mgmt", "Property management", "area")
        store.set_rate(conn, "s1", "mgmt", "2.50")
        store.set_rate(conn, "s1", "mgmt", "3.00", "building", "2")
        store.set_fee_item(conn, "s1", "rubbish", "Rubbish collection", "fixed")
        store.set_rate(conn, "s1", "rubbish", "10.00")
        store.set_fee_item(conn, "s1", "pass", "Monthly parking pass", "pass")
        store.set_fee_item(conn, "s1", "repair", "Repairs", "one_off")
        store.upsert_accounts(conn, "s1", [dict(unit_id=u, building=b, floor=f, area_m2=a, payer=p)
                                           for u, b, f, a, p in UNITS])
    yield engine


def _acct(engine, unit="1-1-101"):
    with engine.connect() as conn:
        return store.account_by_unit(conn, "s1", unit)


def _bill(engine, period="2026-10"):
    with engine.begin() as conn:
        r = store.start_run(conn, "s1", period)
    return store.run_all(engine, r["run_id"])


def _ledger_ok(engine):
    with engine.connect() as conn:
        result = store.verify_ledger(conn)
    assert result["ok"], result["problems"]
    return result


def _count(engine, table):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def test_a_run_bills_area_fixed_and_pass_fees_once(db):
    aid = _acct(db)["account_id"]
    with db.begin() as conn:
        store.set_pass(conn, aid, "pass", "300.00")
    state = _bill(db)
    assert state["status"] == "done" and state["invoices_created"] == 3 and state["lines_created"] == 7
    with db.connect() as conn:
        invs = store.list_invoices(conn, "s1")
        assert [i["total_fen"] for i in invs] == [22375 + 1000 + 30000, 30000 + 1000, 22875 + 1000]
        assert [i["number"] for i in invs] == ["s1-INV0000001", "s1-INV0000002", "s1-INV0000003"]
        assert {i["status"] for i in invs} == {"issued"} and invs[0]["due_date"] == "2026-10-16"
        events = [p for _, t, p in outbox.unpublished(conn, tables.outbox, 100) if t == "invoice_issued"]
    assert len(events) == 3 and set(events[0]) >= {"invoice_id", "number", "account_id", "unit_id", "payer",
                                                   "total_fen", "currency", "period", "due_date", "event_id"}
    again = _bill(db)                                   # the same run: already done, nothing new
    assert again["run_id"] == state["run_id"]
    with db.begin() as conn:
        rerun = store.start_run(conn, "s1", "2026-10", again=True)
    rerun = store.run_all(db, rerun["run_id"])
    assert rerun["attempt"] == 2 and rerun["lines_created"] == 0 and rerun["invoices_created"] == 0
    assert _count(db, tables.lines) == 7
    _ledger_ok(db)


def test_a_run_killed_half_way_resumes_with_no_missing_and_no_duplicate_lines(db):
    with db.begin() as conn:
        store.upsert_accounts(conn, "s1", [dict(unit_id=f"9-1-{i:03d}", building="9", floor="1", area_m2="50.00",
                                                payer=f"P{i}") for i in range(47)])
        r = store.start_run(conn, "s1", "2026-11")

    class Killed(Exception):
        pass

    def crash(n):
        if n == 3:
            raise Killed
    with pytest.raises(Killed):
        store.run_all(db, r["run_id"], chunk=10, after_chunk=crash)
    with db.connect() as conn:
        half = store.run(conn, r["run_id"])
    assert half["status"] == "running" and half["done"] == 30 and half["cursor"] > 0
    # a chunk killed inside its transaction leaves nothing: simulate by a failing chunk
    with pytest.raises(RuntimeError), db.begin() as conn:
        store.run_chunk(conn, r["run_id"], 10)
        raise RuntimeError("killed mid-chunk")
    done = store.run_all(db, r["run_id"], chunk=10)
    assert done["status"] == "done" and done["done"] == 50 and done["invoices_created"] == 50
    with db.connect() as conn:
        per_account = conn.execute(select(tables.lines.c.account_id, func.count()).group_by(
            tables.lines.c.account_id)).all()
        numbers = sorted(conn.execute(select(tables.invoices.c.number_seq)).scalars())
    assert len(per_account) == 50 and all(n == 2 for _, n in per_account)     # mgmt + rubbish, once each
    assert numbers == list(range(1, 51))                                      # no gaps, no repeats
    _ledger_ok(db)


def test_refused_payments_write_nothing(db):
    _bill(db)
    aid = _acct(db)["account_id"]
    before = {t.name: _count(db, t) for t in (tables.payments, tables.journal, tables.allocations, tables.outbox)}
    cases = [(dict(amount="-5.00"), "more than zero"), (dict(amount="0"), "zero"),
             (dict(amount="10.001"), "more than 2 decimals"), (dict(amount="10.00", currency="USD"), "currency"),
             (dict(amount=10.5), "float")]
    for kwargs, message in cases:
        with pytest.raises(store.InvalidInput, match=message), db.begin() as conn:
            store.pay(conn, aid, "k-bad", "cash", **kwargs)
    with pytest.raises(store.NotFound, match="unknown account"), db.begin() as conn:
        store.pay(conn, 99999, "k-bad", "cash", "10.00")
    with pytest.raises(store.InvalidInput, match="method"), db.begin() as conn:
        store.pay(conn, aid, "k-bad", "cheque", "10.00")
    assert {t.name: _count(db, t) for t in (tables.payments, tables.journal, tables.allocations, tables.outbox)} == before


def test_the_same_payment_submitted_twice_at_once_is_applied_once(db):
    _bill(db)
    aid = _acct(db)["account_id"]
    barrier = threading.Barrier(2)
    results, errors = [], []

    def submit():
        try:
            barrier.wait(5)
            results.append(store.pay_once(db, store.pay, aid, "double-click-1", "card", "100.00"))
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=submit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == 2
    assert results[0]["payment_id"] == results[1]["payment_id"]
    assert sorted(r["duplicate"] for r in results) == [False, True]
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.payments)).scalar() == 1
        assert store.account(conn, aid)["receivable_fen"] == 23375 - 10000
    with pytest.raises(store.InvalidInput, match="already used"), db.begin() as conn:
        store.pay(conn, aid, "double-click-1", "card", "100.01")
    _ledger_ok(db)


def test_payments_to_one_account_from_many_connections_at_once_are_all_applied_exactly(db):
    """Six counters take six different payments of one household at the same moment, each through
    its own connection: each is allocated after the one before it committed (the account row lock),
    so nothing is paid twice, the allocations add up to the fen, and the receipts have no gaps."""
    _bill(db, "2026-09")
    _bill(db, "2026-10")
    aid = _acct(db)["account_id"]                       # two invoices of 233.75
    amounts = [10000, 12345, 7000, 9999, 3001, 20000]   # 623.45 in all: both invoices and 155.95 prepaid
    barrier = threading.Barrier(len(amounts))
    results, errors = [], []

    def submit(i):
        try:
            barrier.wait(5)
            results.append(store.pay_once(db, store.pay, aid, f"counter-{i}", "cash", amount_fen=amounts[i]))
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(amounts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and len(results) == len(amounts) and not any(r["duplicate"] for r in results)
    assert sorted(r["receipt_number"] for r in results) == [f"s1-R{i:07d}" for i in range(1, len(amounts) + 1)]
    assert sum(r["allocated_fen"] for r in results) == 2 * 23375
    assert sum(r["prepaid_fen"] for r in results) == sum(amounts) - 2 * 23375
    with db.connect() as conn:
        allocated = conn.execute(select(func.sum(tables.allocations.c.amount_fen))).scalar()
        invs = store.list_invoices(conn, "s1", account_id=aid)
        events = [p for _, t, p in outbox.unpublished(conn, tables.outbox, 100) if t == "payment_received"]
    assert allocated == 2 * 23375 and [i["status"] for i in invs] == ["paid", "paid"]
    assert _acct(db)["prepaid_fen"] == sum(amounts) - 2 * 23375 and _acct(db)["receivable_fen"] == 0
    by_id = {r["payment_id"]: r for r in results}
    assert len(events) == len(amounts)
    for e in events:
        r = by_id[e["payment_id"]]
        assert (e["receipt_number"], e["receipt_path"], e["amount_fen"]) == (r["receipt_number"], r["receipt_path"],
                                                                            r["amount_fen"])
    _ledger_ok(db)


def test_one_key_used_for_two_accounts_at_once_is_applied_once_and_the_other_refused(db):
    """Different accounts take different row locks, so only the unique key stops the second: it
    fails at its insert, is retried, and is refused as a reuse of the key. Nothing of it is written."""
    _bill(db)
    a1, a2 = _acct(db)["account_id"], _acct(db, "1-1-102")["account_id"]
    barrier = threading.Barrier(2)
    results, errors = [], []

    def submit(aid):
        try:
            barrier.wait(5)
            results.append(store.pay_once(db, store.pay, aid, "same-key", "card", "50.00"))
        except store.InvalidInput as exc:
            errors.append(exc)
    threads = [threading.Thread(target=submit, args=(aid,)) for aid in (a1, a2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 1 and len(errors) == 1 and "already used" in str(errors[0])
    assert _count(db, tables.payments) == 1 and _count(db, tables.allocations) == 1
    paid, other = (a1, a2) if results[0]["account_id"] == a1 else (a2, a1)
    with db.connect() as conn:
        assert store.account(conn, other)["receivable_fen"] == store.account(conn, other)["balance_fen"] > 0
        assert conn.execute(select(tables.counters.c.value).where(tables.counters.c.kind == "receipt")).scalar() == 1
        assert conn.execute(select(func.count()).select_from(tables.journal)
                            .where(tables.journal.c.kind == "payment")).scalar() == 1
    _ledger_ok(db)


def test_a_bank_batch_and_a_counter_payment_on_one_of_its_accounts_do_not_deadlock(db):
    """A counter payment has locked account 2; a bank batch for accounts 1 and 2 starts. The batch
    must wait for account 2 before it takes the receipt counter, or the counter payment (next
    wanting the counter) and the batch (wanting account 2) wait for each other."""
    if db.dialect.name != "postgresql":
        pytest.skip("row locks: SQLite runs one writer at a time")
    from sqlalchemy import text
    _bill(db)
    a1, a2 = _acct(db)["account_id"], _acct(db, "1-1-102")["account_id"]
    items = [dict(account_id=a, idempotency_key=f"stmt-{a}", method="bank", amount="20.00") for a in (a1, a2)]
    done, errors = [], []

    def batch():
        try:
            done.extend(store.pay_batch(db, items))
        except Exception as exc:   # pragma: no cover - reported below
            errors.append(exc)
    with db.connect() as counter:
        counter.begin()
        counter.execute(store.ACCOUNT_FOR_UPDATE, {"aid": a2}).one()       # the counter payment's first step
        worker = threading.Thread(target=batch)
        worker.start()
        with db.connect() as probe:
            for _ in range(500):
                if probe.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                      "AND wait_event_type = 'Lock'")).scalar():
                    break
                probe.rollback()
                threading.Event().wait(0.01)
            else:
                raise AssertionError("the batch never waited for account 2")
        paid = store.pay(counter, a2, "counter-a2", "cash", "10.00")           # now it takes the receipt counter
        counter.commit()
    worker.join(30)
    assert not errors and len(done) == 2 and not any("error" in r for r in done)
    assert paid["receipt_number"] == "s1-R0000001"
    assert sorted(r["receipt_number"] for r in done) == ["s1-R0000002", "s1-R0000003"]
    _ledger_ok(db)


def test_receipt_numbers_past_seven_digits_keep_counting(db):
    aid = _acct(db)["account_id"]
    with db.begin() as conn:
        store.pay(conn, aid, "first", "cash", "1.00")
        conn.execute(tables.counters.update().where(tables.counters.c.kind == "receipt").values(value=9_999_998))
    with db.begin() as conn:
        numbers = [store.pay(conn, aid, f"k{i}", "cash", "1.00")["receipt_number"] for i in range(2)]
    assert numbers == ["s1-R9999999", "s1-R10000000"] == [store.number("receipt", "s1", n) for n in (9_999_999, 10**7)]


def test_allocation_oldest_first_prepaid_and_later_invoices_draw_from_it(db):
    _bill(db, "2026-09")
    _bill(db, "2026-10")
    aid = _acct(db)["account_id"]                       # 233.75 a month
    with db.begin() as conn:
        p = store.pay(conn, aid, "p1", "bank", "300.00", reference="BANK-1")
        detail = store.payment(conn, p["payment_id"])
    assert [(a["period"], a["amount_fen"]) for a in detail["allocations"]] == [("2026-09", 23375), ("2026-10", 6625)]
    with db.begin() as conn:
        p2 = store.pay(conn, aid, "p2", "cash", "500.00")
    assert p2["allocated_fen"] == 23375 - 6625 and p2["prepaid_fen"] == 50000 - 16750
    assert _acct(db)["prepaid_fen"] == 33250
    _bill(db, "2026-11")                                 # drawn from the prepaid balance at issue
    acct = _acct(db)
    assert acct["prepaid_fen"] == 33250 - 23375 and acct["receivable_fen"] == 0
    with db.connect() as conn:
        statuses = [i["status"] for i in store.list_invoices(conn, "s1", account_id=aid)]
    assert statuses == ["paid", "paid", "paid"]
    _ledger_ok(db)


def test_late_fees_are_exact_capped_and_charged_once_a_day(db):
    _bill(db, "2026-10")                                 # due 2026-10-16
    aid = _acct(db)["account_id"]
    with db.begin() as conn:
        first = store.accrue_late_fees(conn, "s1", "2026-10-26")          # 10 days
        again = store.accrue_late_fees(conn, "s1", "2026-10-26")
    assert again["charged_fen"] == 0 and again["invoices"] == 0
    with db.connect() as conn:
        inv = store.list_invoices(conn, "s1", account_id=aid)[0]
    assert inv["late_accrued_micro"] == 23375 * 500 * 10 and inv["late_fee_fen"] == 117      # 116.875 fen
    assert first["charged_fen"] == 117 + 155 + 119                  # 31000 x 0.5 % and 23875 x 0.5 %
    with db.begin() as conn:                                         # pay half: accrual follows the principal
        store.pay(conn, aid, "half", "cash", amount_fen=10000)
        store.accrue_late_fees(conn, "s1", "2026-10-30")
    with db.connect() as conn:
        inv = store.list_invoices(conn, "s1", account_id=aid)[0]
    assert inv["late_accrued_micro"] == 23375 * 500 * 10 + 13375 * 500 * 4
    with db.begin() as conn:
        store.accrue_late_fees(conn, "s1", "2027-12-31")             # far later: the 10 % cap holds
    with db.connect() as conn:
        inv = store.list_invoices(conn, "s1", account_id=aid)[0]
    assert inv["late_fee_fen"] == 2338 and inv["late_accrued_micro"] == 23375 * 100_000
    _ledger_ok(db)


def test_late_fees_first_or_last_in_allocation(db):
    with db.begin() as conn:
        store.set_site(conn, "s1", "Green Court Estate", late_fees="first", late_fee_cap="0.1")
    _bill(db, "2026-10")
    aid = _acct(db)["account_id"]
    with db.begin() as conn:
        store.accrue_late_fees(conn, "s1", "2026-10-26")
        p = store.pay(conn, aid, "lf", "cash", amount_fen=1000)
        detail = store.payment(conn, p["payment_id"])
    assert [(a["component"], a["amount_fen"]) for a in detail["allocations"]] == [("late_fee", 117),
                                                                                 ("principal", 883)]
    _ledger_ok(db)


def test_the_ledger_check_fails_when_an_entry_is_missing(db):
    _bill(db)
    aid = _acct(db)["account_id"]
    with db.begin() as conn:
        store.pay(conn, aid, "x", "cash", "50.00")
    _ledger_ok(db)
    with db.begin() as conn:
        last = conn.execute(select(func.max(tables.journal.c.entry_id))).scalar()
        conn.execute(delete(tables.journal).where(tables.journal.c.entry_id == last))
    with db.connect() as conn:
        result = store.verify_ledger(conn)
    assert not result["ok"] and any("1-1-101" in p for p in result["problems"])


def test_credit_notes_refunds_charges_and_void(db):
    _bill(db)
    aid = _acct(db, "2-1-301")["account_id"]
    with db.begin() as conn:
        inv = store.list_invoices(conn, "s1", account_id=aid)[0]
        store.pay(conn, aid, "full", "bank", amount_fen=inv["total_fen"])
        cn = store.credit_note(conn, inv["invoice_id"], "cn-1", "rate was wrong", "20.00")
        assert cn["to_prepaid_fen"] == 2000 and cn["number"] == "s1-CN000001"
        with pytest.raises(store.InvalidInput, match="more than the account's prepaid"):
            store.refund(conn, aid, "rf-0", "bank", "too much", "20.01")
        rf = store.refund(conn, aid, "rf-1", "bank", "overcharged", "20.00")
        assert store.refund(conn, aid, "rf-1", "bank", "overcharged", "20.00")["refund_id"] == rf["refund_id"]
        ch = store.charge(conn, aid, "repair", "80.00", "Window repair", "ch-1")
        assert store.charge(conn, aid, "repair", "80.00", "Window repair", "ch-1")["duplicate"]
        with pytest.raises(store.InvalidInput, match="billed by the runs"):
            store.charge(conn, aid, "mgmt", "80.00", "x", "ch-2")
        voided = store.void_invoice(conn, ch["invoice_id"], "entered twice")
        assert voided["status"] == "void" and voided["outstanding_fen"] == 0
        with pytest.raises(store.InvalidInput, match="credit note instead"):
            store.void_invoice(conn, inv["invoice_id"], "no")
    assert _acct(db, "2-1-301")["balance_fen"] == 0
    _ledger_ok(db)


def test_arrears_aging_per_building_and_dunning_once(db):
    _bill(db, "2026-07")                                 # due 2026-07-16
    _bill(db, "2026-09")                                 # due 2026-09-16
    aid = _acct(db, "1-1-102")["account_id"]
    with db.begin() as conn:
        store.pay(conn, aid, "all", "cash", "1000.00")
        report = store.arrears(conn, "s1", "2026-10-20")
    assert report["accounts_owing"] == 2
    assert report["buildings"]["1"]["90+"] == 23375 and report["buildings"]["1"]["31-60"] == 23375
    assert report["buildings"]["2"]["61-90"] == 0 and report["site"]["total"] == 2 * (23375 + 23875)
    first = report["accounts"][0]
    assert first["oldest_due_date"] == "2026-07-16" and first["days_overdue"] == 96
    with db.begin() as conn:
        sent = store.run_dunning(conn, "s1", "2026-10-20")["reminders"]
        again = store.run_dunning(conn, "s1", "2026-10-20")["reminders"]
        events = [p for _, t, p in outbox.unpublished(conn, tables.outbox, 1000) if t == "dunning_due"]
    # one reminder per household (two overdue bills each), at the July invoice's step 3 (60 days)
    assert sent == 2 and again == 0 and len(events) == 2
    assert {e["step"] for e in events} == {3} and all(len(e["invoice_numbers"]) == 2 for e in events)
    assert len({e["account_id"] for e in events}) == 2
    assert set(events[0]) >= {"account_id", "unit_id", "payer", "step", "days_overdue", "outstanding_fen",
                              "currency", "oldest_due_date"}


def test_parking_sessions_are_recorded_once(db):
    event = {"v": 1, "event_id": "e1", "site_id": "s1", "lot_id": "lot1", "session_id": "sess-1", "plate": "皖A1",
             "holder": "1-1-101", "kind": "resident", "fee_fen": 1500, "paid_fen": 500, "due_fen": 1000,
             "currency": "CNY", "left_at": "2026-11-27T10:00:00+00:00"}
    with db.begin() as conn:
        first = store.record_parking_session(conn, event)
        second = store.record_parking_session(conn, {**event, "event_id": "e2"})
        walk_in = store.record_parking_session(conn, {**event, "session_id": "sess-2", "holder": None})
    assert first["outcome"] == "charged" and second["duplicate"] and walk_in["outcome"] == "uncollected"
    assert _acct(db)["receivable_fen"] == 1000
    with db.connect() as conn:
        income = store.verify_ledger(conn)["income_fen"]
    assert income["income:parking"] == 500 + 1000 + 500        # two lane payments and one charge
    _ledger_ok(db)


def test_online_payment_round_trip_through_the_fake_provider(db, monkeypatch):
    """The real fake provider's HTTP server signs a webhook; a tiny receiver hands it to the
    billing handler (the console does this in production); retries and forgeries change nothing."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    received = []

    class Receiver(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                result = online.handle_webhook(db, provider, raw, dict(self.headers))
                status = 200
            except online.InvalidSignature:
                result, status = None, 401
            received.append((status, result))
            self.send_response(status)
            self.end_headers()

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    monkeypatch.setenv("BILLING_NOTIFY_URL", f"http://127.0.0.1:{hook.server_address[1]}/hook")
    fake = FakeProviderServer(secret="test-secret").start()
    provider = online.FakeProvider(fake.url, "test-secret")
    try:
        _bill(db)
        aid = _acct(db)["account_id"]
        it = online.start_payment(db, provider, "s1", "web-1", {"kind": "account", "account_id": aid}, "100.00")
        assert it["status"] == "pending" and it["pay_url"].startswith(fake.url)
        assert online.start_payment(db, provider, "s1", "web-1", {"kind": "account", "account_id": aid},
                                    "100.00")["intent_id"] == it["intent_id"]
        fake.complete(it["provider_ref"])
        with db.connect() as conn:
            settled = store.intent(conn, it["intent_id"])
        assert received[-1][0] == 200 and settled["status"] == "succeeded"
        fake.deliver(fake.payments[it["provider_ref"]])                   # the provider retries its webhook
        forged = fake.webhook_body({**fake.payments[it["provider_ref"]], "amount_fen": 999999})
        import urllib.request
        req = urllib.request.Request(f"http://127.0.0.1:{hook.server_address[1]}/hook", data=forged, method="POST",
                                     headers={"X-Fake-Signature": "sha256=" + "0" * 64})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)
        assert refused.value.code == 401
        with db.connect() as conn:
            assert conn.execute(select(func.count()).select_from(tables.payments)).scalar() == 1
            assert store.account(conn, aid)["receivable_fen"] == 23375 - 10000
        # a parking session paid online whose webhook is lost: the reconciler finds it, once
        it2 = online.start_payment(db, provider, "s1", "park-1", {"kind": "parking_session", "session_id": "S9",
                                                                  "lot_id": "lot1"}, amount_fen=700)
        fake.complete(it2["provider_ref"], deliver=False)
        assert online.reconcile(db, provider, older_than_s=0)[0]["status"] == "succeeded"
        assert online.reconcile(db, provider, older_than_s=0) == []
        with db.connect() as conn:
            paid = [p for _, t, p in outbox.unpublished(conn, tables.outbox, 1000) if t == "parking_fee_paid"]
        assert len(paid) == 1 and paid[0]["session_id"] == "S9" and paid[0]["amount_fen"] == 700
        with db.begin() as conn:   # the session then closes with the online payment counted as paid
            store.record_parking_session(conn, {"site_id": "s1", "session_id": "S9", "lot_id": "lot1", "holder": None,
                                                "fee_fen": 700, "paid_fen": 700, "due_fen": 0, "currency": "CNY"})
        _ledger_ok(db)
    finally:
        fake.stop()
        hook.shutdown()


def test_receipts_and_exports(db):
    _bill(db)
    a1, a2 = _acct(db)["account_id"], _acct(db, "1-1-102")["account_id"]
    with db.begin() as conn:
        p = store.pay(conn, a1, "r1", "cash", "50.00", payer="李伟")
        p2 = store.pay(conn, a2, "r2", "card", "10.00")
        r = store.receipt(conn, p["receipt_number"])
        head, rows = store.export_rows(conn, "s1", "invoices")
        arrears_head, arrears_rows = store.export_rows(conn, "s1", "arrears", "2026-12-01")
    assert p["receipt_number"] == "s1-R0000001" and p2["receipt_number"] == "s1-R0000002"
    page = documents.receipt_html(r)
    assert "Green Court Estate" in page and "s1-R0000001" in page and "李伟" in page and "50.00" in page
    assert documents.receipt_pdf(r).startswith(b"%PDF")
    from openpyxl import load_workbook
    wb = load_workbook(io.BytesIO(documents.xlsx("invoices", head, rows)))
    sheet = list(wb.active.values)
    assert sheet[0][0] == "number" and len(sheet) == 4 and sheet[1][6] == 233.75
    assert len(arrears_rows) == 3 and arrears_head[5] == "0-30"
    with pytest.raises(store.InvalidInput), db.connect() as conn:
        store.export_rows(conn, "s1", "secrets")
    assert json.dumps(r, ensure_ascii=False)


def test_accounts_are_validated_and_upserted(db):
    with pytest.raises(store.InvalidInput, match="more than 2 decimals"), db.begin() as conn:
        store.set_account(conn, "s1", "3-1-1", "3", "1", "80.123", "X")
    with pytest.raises(store.NotFound), db.begin() as conn:
        store.set_account(conn, "nowhere", "3-1-1", "3", "1", "80.00", "X")
    with db.begin() as conn:
        a = store.set_account(conn, "s1", "1-1-101", "1", "1", "90.00", "Li Wei", contacts=[{"phone": "138"}])
    assert a["area_m2"] == "90.00" and a["contacts"] == [{"phone": "138"}] and _count(db, tables.accounts) == 3



def test_a_bank_statement_batch_applies_each_transfer_once_and_refuses_bad_lines(db):
    _bill(db)
    a1, a2 = _acct(db)["account_id"], _acct(db, "1-1-102")["account_id"]
    items = [dict(account_id=a1, idempotency_key="stmt-1", method="bank", amount="100.00", reference="T1"),
             dict(account_id=99999, idempotency_key="stmt-2", method="bank", amount="1.00"),
             dict(account_id=a2, idempotency_key="stmt-3", method="bank", amount="1.005"),
             dict(account_id=a2, idempotency_key="stmt-4", method="bank", amount="310.00")]
    first = store.pay_batch(db, items, batch=2)
    again = store.pay_batch(db, items)
    assert ["error" in r for r in first] == [False, True, True, False]
    assert "unknown account" in first[1]["error"] and "decimals" in first[2]["error"]
    assert again[0]["duplicate"] and again[3]["payment_id"] == first[3]["payment_id"]
    assert _count(db, tables.payments) == 2 and _acct(db, "1-1-102")["balance_fen"] == 0
    _ledger_ok(db)


KILLABLE_RUN = """
import sys, time
from gatehouse.db import engine_for
from services.billing import store
# past the 10th chunk, slow down: the kill must find the run unfinished however fast the machine
store.run_all(engine_for("billing"), int(sys.argv[1]), chunk=50,
              after_chunk=lambda n: time.sleep(0.2) if n >= 10 else None)
"""


def test_a_run_process_killed_with_sigkill_resumes_exactly(db, database):
    """A real process billing a run is SIGKILLed mid-run (mid-transaction, likely); the run
    continues from its committed cursor and every account ends with its lines exactly once."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.stack import ROOT
    n = 6000
    with db.begin() as conn:
        store.upsert_accounts(conn, "s1", [dict(unit_id=f"8-{i}", building="8", floor="1", area_m2="61.25",
                                                payer=f"P{i}") for i in range(n)])
        r = store.start_run(conn, "s1", "2026-12")
    env = {**os.environ, **database.env()}
    if not database.url:
        env.pop("DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE_RUN, str(r["run_id"])], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with db.connect() as conn:
                if store.run(conn, r["run_id"])["done"] >= 500:
                    break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
    with db.connect() as conn:
        half = store.run(conn, r["run_id"])
    assert half["status"] == "running" and 0 < half["done"] < n + 3, half
    done = store.run_all(db, r["run_id"], chunk=500)
    assert done["status"] == "done" and done["invoices_created"] == n + 3
    with db.connect() as conn:
        dup = conn.execute(select(tables.lines.c.account_id).where(tables.lines.c.period == "2026-12")
                           .group_by(tables.lines.c.account_id, tables.lines.c.fee_item_id)
                           .having(func.count() > 1)).all()
        per_account = conn.execute(select(func.count()).select_from(tables.lines)
                                   .where(tables.lines.c.period == "2026-12")).scalar()
        numbers = conn.execute(select(func.count(), func.max(tables.invoices.c.number_seq))).one()
    assert dup == [] and per_account == 2 * (n + 3)
    assert numbers[0] == numbers[1] == n + 3                     # numbered 1..N: no gaps after the kill
    _ledger_ok(db)


def test_a_quarterly_run_bills_three_months_and_never_overlaps_a_monthly_one(db):
    with db.begin() as conn:
        r = store.start_run(conn, "s1", "2027-Q1", "quarterly")
    state = store.run_all(db, r["run_id"])
    with db.connect() as conn:
        inv = store.list_invoices(conn, "s1", period="2027-Q1")[0]
    assert state["invoices_created"] == 3 and inv["total_fen"] == 3 * 22375 + 3 * 1000
    assert inv["due_date"] == "2027-01-16"
    with pytest.raises(store.InvalidInput, match="overlaps 2027-Q1"), db.begin() as conn:
        store.start_run(conn, "s1", "2027-02", "monthly")


def test_an_online_payment_started_while_the_provider_is_down_is_reconciled_not_doubled(db, monkeypatch):
    from tests.stack import free_port
    _bill(db)
    aid = _acct(db)["account_id"]
    down = online.FakeProvider(f"http://127.0.0.1:{free_port()}", "s", timeout=1)
    it = online.start_payment(db, down, "s1", "web-down", {"kind": "account", "account_id": aid}, "20.00")
    assert it["status"] == "created" and "not reachable" in it["error"]
    fake = FakeProviderServer(secret="s").start()
    try:
        monkeypatch.setenv("BILLING_NOTIFY_URL", "http://127.0.0.1:9/unused")
        up = online.FakeProvider(fake.url, "s")
        started = online.reconcile(db, up, older_than_s=0)
        assert [i["status"] for i in started] == ["pending"] and len(fake.payments) == 1
        again = online.start_payment(db, up, "s1", "web-down", {"kind": "account", "account_id": aid}, "20.00")
        assert again["intent_id"] == it["intent_id"] and len(fake.payments) == 1   # asked, not charged twice
        fake.complete(started[0]["provider_ref"], deliver=False)
        assert online.reconcile(db, up, older_than_s=0)[0]["status"] == "succeeded"
        assert _count(db, tables.payments) == 1 and _acct(db)["receivable_fen"] == 23375 - 2000
    finally:
        fake.stop()


def test_a_draft_run_is_reviewed_then_issued(db):
    with db.begin() as conn:
        r = store.start_run(conn, "s1", "2026-10", issue=False)
    store.run_all(db, r["run_id"])
    with db.connect() as conn:
        drafts = store.list_invoices(conn, "s1", period="2026-10")
        assert {i["status"] for i in drafts} == {"draft"} and all(i["number"] is None for i in drafts)
        assert store.arrears(conn, "s1", "2027-01-01")["site"]["total"] == 0
    assert _count(db, tables.journal) == 0
    with db.begin() as conn:
        store.void_invoice(conn, drafts[1]["invoice_id"], "unit empty, billed by mistake")
        first = store.issue_drafts(conn, "s1", "2026-10", limit=1)
        rest = store.issue_drafts(conn, "s1", "2026-10")
        issued = store.list_invoices(conn, "s1", period="2026-10")
    assert first == {"site_id": "s1", "period": "2026-10", "issued": 1, "left": 1} and rest["left"] == 0
    assert [i["status"] for i in issued] == ["issued", "void", "issued"]
    assert [i["number"] for i in issued] == ["s1-INV0000001", None, "s1-INV0000002"]
    _ledger_ok(db)


def test_a_mistaken_payment_is_reversed_once_and_the_books_stay_right(db):
    _bill(db, "2026-09")
    _bill(db, "2026-10")
    aid = _acct(db)["account_id"]
    with db.begin() as conn:
        wrong = store.pay(conn, aid, "typo", "cash", "500.00")           # meant 50.00
        assert wrong["prepaid_fen"] == 50000 - 2 * 23375
        undone = store.reverse_payment(conn, wrong["payment_id"], "typed 500 for 50", "desk")
        twice = store.reverse_payment(conn, wrong["payment_id"], "again", "desk")
        statuses = [i["status"] for i in store.list_invoices(conn, "s1", account_id=aid)]
        r = store.receipt(conn, wrong["receipt_number"])
    assert undone["reversed_at"] and twice["reversed_at"] == undone["reversed_at"]
    assert statuses == ["issued", "issued"] and _acct(db)["balance_fen"] == 2 * 23375
    assert "REVERSED" in documents.receipt_html(r)
    _ledger_ok(db)
    with db.begin() as conn:                                             # prepaid credit used since: refused
        p = store.pay(conn, aid, "over", "cash", "500.00")
    _bill(db, "2026-11")
    with pytest.raises(store.InvalidInput, match="has been used"), db.begin() as conn:
        store.reverse_payment(conn, p["payment_id"], "late change of mind")
    _ledger_ok(db)


def test_credit_on_a_paid_invoice_pays_the_next_open_one(db):
    _bill(db, "2026-09")
    aid = _acct(db)["account_id"]
    with db.begin() as conn:
        store.pay(conn, aid, "sep", "cash", amount_fen=23375)
    _bill(db, "2026-10")
    with db.begin() as conn:
        sep, oct_ = store.list_invoices(conn, "s1", account_id=aid)
        store.credit_note(conn, sep["invoice_id"], "cn-sep", "rubbish fee not due", amount_fen=1000)
        oct_after = store.invoice(conn, oct_["invoice_id"])
    assert oct_after["paid_fen"] == 1000 and oct_after["status"] == "partly_paid" and _acct(db)["prepaid_fen"] == 0
    _ledger_ok(db)
