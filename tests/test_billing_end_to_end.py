"""Billing with real processes: the billing service and the console over RabbitMQ, the fake
payment provider as a real HTTP server. parking.session_closed published twice is recorded
once; a run through the console; a counter payment double-clicked over HTTP is applied once;
an online payment's signed webhook reaches the console and settles once; a forged webhook is
refused with 401; receipts and exports come back with their content types; events go out."""
from __future__ import annotations

import threading
import urllib.request
import uuid
from datetime import UTC, datetime

from gatehouse.bus import ConfirmedPublisher, EventConsumer, event_payload
from services.billing.fakeprovider import FakeProviderServer
from tests.stack import wait_for
from tests.test_gate_access import api, ok

SECRET = "e2e-webhook-secret"


def raw_get(stack, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.console_port}{path}", timeout=30) as resp:
        return resp.status, resp.headers.get("Content-Type"), resp.read()


def test_billing_through_the_bus_and_the_console(stack):
    fake = FakeProviderServer(secret=SECRET).start()
    env = {"BILLING_WEBHOOK_SECRET": SECRET, "BILLING_PROVIDER_URL": fake.url}
    stack.env.update(env)                       # the console and billing both see the same settings
    events = []
    consumer = EventConsumer(stack.amqp_uri, "test.billing-events",
                             [("billing", t) for t in ("invoice_issued", "payment_received", "parking_fee_paid")],
                             lambda event_type, payload: events.append((event_type, payload)))
    consumer.start_thread()
    assert consumer.ready.wait(10)
    try:
        stack.start_billing()
        stack.start_console()
        site = stack.site_id
        # (the first call also waits out the console's own start on a busy machine)
        wait_for(lambda: api(stack, "POST", "/api/billing/sites", {"site_id": site, "name": "Green Court",
                                                                   "dunning_days": [7, 30]})[0] == 201,
                 timeout=30, interval=0.5, what="the console and billing answering")
        ok(stack, "POST", "/api/billing/fee-items", {"site_id": site, "code": "mgmt", "name": "Management",
                                                     "kind": "area"})
        ok(stack, "POST", "/api/billing/rates", {"site_id": site, "code": "mgmt", "rate": "2.50"})
        acct = ok(stack, "POST", "/api/billing/accounts", {"site_id": site, "unit_id": "1-1-101", "building": "1",
                                                          "floor": "1", "area_m2": "89.50", "payer": "Li Wei"})
        code, err = api(stack, "POST", "/api/billing/accounts", {"site_id": site, "unit_id": "1-1-102",
                                                                 "building": "1", "floor": "1", "area_m2": "89.555",
                                                                 "payer": "X"})
        assert code == 400 and "decimals" in err["error"]

        # a parking session closed with 10.00 unpaid, published twice: one charge
        publisher = ConfirmedPublisher(stack.amqp_uri, "parking")
        closed = event_payload(site, lot_id="lot1", session_id=str(uuid.uuid4()), plate="皖A12345",
                               holder="1-1-101", kind="visitor", entered_at=datetime.now(UTC).isoformat(),
                               left_at=datetime.now(UTC).isoformat(), fee_fen=1500, paid_fen=500, due_fen=1000,
                               currency="CNY", flags="")
        publisher.publish("session_closed", closed)
        publisher.publish("session_closed", closed)
        fees = wait_for(lambda: ok(stack, "GET", f"/api/billing/sites/{site}/parking-fees"), what="parking fee")
        run = ok(stack, "POST", "/api/billing/runs", {"site_id": site, "period": "2026-10"})
        state = ok(stack, "POST", f"/api/billing/runs/{run['run_id']}/step", {"chunks": 5})
        assert state["status"] == "done" and state["invoices_created"] == 1
        publisher.close()
        wait_for(lambda: len(ok(stack, "GET", f"/api/billing/invoices?account_id={acct['account_id']}")) == 2,
                 what="two invoices")
        assert len(ok(stack, "GET", f"/api/billing/sites/{site}/parking-fees")) == 1 == len(fees)
        assert fees[0]["outcome"] == "charged"

        # the counter's double click: two requests at once, one payment
        answers = []
        pay = {"idempotency_key": "counter-1", "method": "cash", "amount": "50.00", "operator": "desk"}

        def click():
            answers.append(api(stack, "POST", f"/api/billing/accounts/{acct['account_id']}/payments", pay))
        clicks = [threading.Thread(target=click) for _ in range(2)]
        for t in clicks:
            t.start()
        for t in clicks:
            t.join(30)
        assert [c for c, _ in answers] == [201, 201]
        assert answers[0][1]["payment_id"] == answers[1][1]["payment_id"]
        assert sorted(a["duplicate"] for _, a in answers) == [False, True]
        code, err = api(stack, "POST", f"/api/billing/accounts/{acct['account_id']}/payments",
                        {**pay, "idempotency_key": "counter-2", "amount": "-1"})
        assert code == 400 and "more than zero" in err["error"]
        code, err = api(stack, "POST", "/api/billing/accounts/424242/payments", {**pay, "idempotency_key": "c3"})
        assert code == 404

        # online: the provider's signed webhook reaches the console and settles the payment once
        intent = ok(stack, "POST", "/api/billing/online-payments", {
            "site_id": site, "idempotency_key": "web-1", "amount": "100.00",
            "target": {"kind": "account", "account_id": acct["account_id"]}})
        assert intent["status"] == "pending" and intent["pay_url"].startswith(fake.url)
        fake.complete(intent["provider_ref"])
        settled = wait_for(lambda: ok(stack, "GET", f"/api/billing/online-payments/{intent['intent_id']}")
                           ["status"] == "succeeded", what="webhook settled")
        assert settled and fake.deliveries[-1][1] == 200
        fake.deliver(fake.payments[intent["provider_ref"]])               # the provider retries
        body = fake.webhook_body({**fake.payments[intent["provider_ref"]], "amount_fen": 1})
        req = urllib.request.Request(f"http://127.0.0.1:{stack.console_port}/api/billing/webhooks/fake", data=body,
                                     method="POST", headers={"X-Fake-Signature": "sha256=" + "f" * 64})
        try:
            urllib.request.urlopen(req, timeout=10)
            raise AssertionError("a forged webhook was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        payments = ok(stack, "GET", f"/api/billing/sites/{site}/payments")
        assert len(payments) == 2 and sum(p["amount_fen"] for p in payments) == 15000

        account = ok(stack, "GET", f"/api/billing/accounts/{acct['account_id']}")
        assert account["receivable_fen"] == 22375 + 1000 - 15000 and account["prepaid_fen"] == 0
        assert ok(stack, "GET", "/api/billing/ledger/verify")["ok"]

        # documents
        number = payments[0]["receipt_number"]
        status, ctype, page = raw_get(stack, f"/api/billing/receipts/{number}.html")
        assert status == 200 and ctype.startswith("text/html") and b"Green Court" in page and number.encode() in page
        status, ctype, pdf = raw_get(stack, f"/api/billing/receipts/{number}.pdf")
        assert ctype == "application/pdf" and pdf.startswith(b"%PDF")
        status, ctype, xlsx = raw_get(stack, f"/api/billing/sites/{site}/exports/payments.xlsx")
        assert ctype.startswith("application/vnd.openxmlformats") and xlsx[:2] == b"PK"
        code, err = api(stack, "GET", "/api/billing/receipts/nope.html")
        assert code == 404

        # a bank statement: each transfer once, a bad line refused on its own
        statement = {"transfers": [{"account_id": acct["account_id"], "idempotency_key": "bank-77",
                                    "amount": "10.00", "reference": "CMB-77"},
                                   {"account_id": 424242, "idempotency_key": "bank-78", "amount": "5.00"}]}
        first = ok(stack, "POST", "/api/billing/bank-transfers", statement)
        again = ok(stack, "POST", "/api/billing/bank-transfers", statement)
        assert "error" not in first[0] and "unknown account" in first[1]["error"] and again[0]["duplicate"]
        assert ok(stack, "GET", f"/api/billing/accounts/{acct['account_id']}")["receivable_fen"] == 8375 - 1000
        assert ok(stack, "GET", "/api/billing/ledger/verify")["ok"]

        # what the notify service hears
        wait_for(lambda: {t for t, _ in events} >= {"invoice_issued", "payment_received"}, what="billing events")
        received = [p for t, p in events if t == "payment_received"]
        assert len(received) == 3 and received[0]["receipt_path"].startswith("/api/billing/receipts/")
        assert wait_for(lambda: ok(stack, "GET", "/api/health")["services"]["billing"]["state"] == "up",
                        what="billing heartbeat")
    finally:
        consumer.should_stop = True
        fake.stop()
