"""The billing service: thin nameko entrypoints over services.billing.store, rules and online.

Run: nameko run --config deploy/nameko.yaml services.billing.service

Consumes `parking.session_closed` (once per session). Publishes through its outbox:
`billing.invoice_issued`, `billing.payment_received`, `billing.dunning_due`,
`billing.parking_fee_paid`. Timers: the outbox relay, the heartbeat, the reconciler of online
payments whose result is unknown, and the daily late-fee and dunning jobs.
Billing never touches access: arrears never lock anyone out of their home.
"""
from __future__ import annotations

import base64
import logging
from datetime import datetime

import eventlet
from eventlet.semaphore import Semaphore
from nameko.events import EventDispatcher, event_handler
from nameko.rpc import rpc
from nameko.timer import timer
from sqlalchemy import select

from gatehouse import nameko_deps, outbox
from gatehouse.nameko_deps import Database, Heartbeat
from services.billing import documents, online, store, tables

log = logging.getLogger("billing")
_relay_lock = Semaphore()
_jobs_lock = Semaphore()
RECONCILE_INTERVAL_S = 30.0
RECONCILE_AFTER_S = 60.0        # an intent this old without a webhook is asked about
JOBS_INTERVAL_S = 3600.0
INGEST_RETRY_PAUSE_S = 1.0        # late fees and dunning: idempotent per day, so hourly is harmless


class InvalidSignature(Exception):
    """Raised to RPC callers (the console answers 401)."""


class BillingService(nameko_deps.StoreService):
    name = "billing"

    db = Database("billing")
    dispatch = EventDispatcher()
    heartbeat_info = Heartbeat()

    # -- set-up ------------------------------------------------------------------------------

    @rpc
    def set_site(self, site_id, name, **settings):
        return self._write(store.set_site, site_id, name, **settings)

    @rpc
    def site(self, site_id):
        return self._read(store.site, site_id)

    @rpc
    def set_account(self, site_id, unit_id, building, floor, area_m2, payer, unit_type="residential", contacts=None):
        return self._write(store.set_account, site_id, unit_id, building, floor, area_m2, payer, unit_type, contacts)

    @rpc
    def upsert_accounts(self, site_id, rows):
        return self._write(store.upsert_accounts, site_id, rows)

    @rpc
    def account(self, account_id):
        return self._read(store.account, account_id)

    @rpc
    def account_by_unit(self, site_id, unit_id):
        return self._read(store.account_by_unit, site_id, unit_id)

    @rpc
    def list_accounts(self, site_id, limit=200, after=0):
        return self._read(store.list_accounts, site_id, limit, after)

    @rpc
    def set_fee_item(self, site_id, code, name, kind):
        return self._write(store.set_fee_item, site_id, code, name, kind)

    @rpc
    def set_rate(self, site_id, code, rate, scope="default", scope_value=""):
        return self._write(store.set_rate, site_id, code, rate, scope, scope_value)

    @rpc
    def set_pass(self, account_id, code, monthly_amount, quantity=1, start_month=None, end_month=None):
        return self._write(store.set_pass, account_id, code, monthly_amount, quantity, start_month, end_month)

    # -- runs and invoices -------------------------------------------------------------------

    @rpc
    def start_run(self, site_id, period, cycle="monthly", again=False, issue=True):
        return self._write(store.start_run, site_id, period, cycle, again, issue)

    @rpc
    def issue_drafts(self, site_id, period, limit=500):
        return self._write(store.issue_drafts, site_id, period, limit)

    @rpc
    def run_step(self, run_id, chunks=1, chunk=store.CHUNK):
        """Bill up to `chunks` chunks of a run (each its own transaction); returns the run."""
        state = None
        for _ in range(max(1, min(int(chunks), 50))):
            with self.db.begin() as conn:
                state = store.run_chunk(conn, run_id, chunk)
            if state["status"] == "done":
                break
        return state        # the invoice_issued events go out with the relay timer, not in this call

    @rpc
    def run(self, run_id):
        return self._read(store.run, run_id)

    @rpc
    def list_runs(self, site_id):
        return self._read(store.list_runs, site_id)

    @rpc
    def invoice(self, invoice_id):
        return self._read(store.invoice, invoice_id)

    @rpc
    def list_invoices(self, site_id=None, account_id=None, status=None, period=None, limit=200):
        return self._read(store.list_invoices, site_id, account_id, status, period, limit)

    @rpc
    def charge(self, account_id, code, amount=None, description=None, idempotency_key=None, due_date=None,
               amount_fen=None, issue=True):
        return self._once(store.charge, account_id, code, amount, description, idempotency_key, due_date, amount_fen,
                          issue=issue)

    @rpc
    def issue_invoice(self, invoice_id):
        return self._write(store.issue_invoice, invoice_id)

    @rpc
    def void_invoice(self, invoice_id, reason, operator="staff"):
        return self._write(store.void_invoice, invoice_id, reason, operator)

    # -- money -------------------------------------------------------------------------------

    @rpc
    def pay(self, account_id, idempotency_key, method, amount=None, currency="CNY", payer=None, operator="staff",
            reference="", amount_fen=None):
        return self._once(store.pay, account_id, idempotency_key, method, amount, currency, payer, operator,
                          reference, amount_fen)

    @rpc
    def reverse_payment(self, payment_id, reason, operator="staff"):
        return self._write(store.reverse_payment, payment_id, reason, operator)

    @rpc
    def pay_batch(self, items):
        """A bank statement's transfers: [{account_id, idempotency_key, method, amount|amount_fen, ...}]."""
        if not isinstance(items, list) or len(items) > 20000:
            raise store.InvalidInput("items must be a list of at most 20,000 payments")
        result = store.pay_batch(self.db, items)
        self._relay_soon()
        return result

    @rpc
    def payment(self, payment_id):
        return self._read(store.payment, payment_id)

    @rpc
    def list_payments(self, site_id, account_id=None, limit=200):
        return self._read(store.list_payments, site_id, account_id, limit)

    @rpc
    def credit_note(self, invoice_id, idempotency_key, reason, amount=None, amount_fen=None, operator="staff"):
        return self._once(store.credit_note, invoice_id, idempotency_key, reason, amount, amount_fen, operator)

    @rpc
    def refund(self, account_id, idempotency_key, method, reason, amount=None, amount_fen=None, currency="CNY",
               operator="staff"):
        return self._once(store.refund, account_id, idempotency_key, method, reason, amount, amount_fen, currency,
                          operator)

    @rpc
    def start_online_payment(self, site_id, idempotency_key, target, amount=None, amount_fen=None, currency="CNY",
                             payer=""):
        try:
            return online.start_payment(self.db, online.FakeProvider(), site_id, idempotency_key, target, amount,
                                        amount_fen, currency, payer)
        finally:
            self._relay_soon()

    @rpc
    def online_payment(self, intent_id):
        return self._read(store.intent, intent_id)

    @rpc
    def webhook(self, provider, body_b64, headers):
        if provider != "fake":
            raise store.NotFound(f"unknown payment provider {provider!r}")
        try:
            result = online.handle_webhook(self.db, online.FakeProvider(), base64.b64decode(body_b64), headers)
        except online.InvalidSignature as exc:
            raise InvalidSignature(str(exc)) from None
        self._relay_soon()
        return result

    @timer(interval=RECONCILE_INTERVAL_S)
    def reconcile(self):
        """Online payments without a result: ask the provider (never charge again)."""
        try:
            if online.reconcile(self.db, online.FakeProvider(), RECONCILE_AFTER_S):
                self._relay_soon()
        except Exception:
            log.exception("reconcile failed; will try again")

    @rpc
    def reconcile_now(self, older_than_s=0):
        done = online.reconcile(self.db, online.FakeProvider(), older_than_s)
        self._relay_soon()
        return done

    # -- jobs and reports --------------------------------------------------------------------

    @rpc
    def accrue_late_fees(self, site_id, as_of):
        return self._write(store.accrue_late_fees, site_id, as_of)

    @rpc
    def run_dunning(self, site_id, as_of):
        return self._write(store.run_dunning, site_id, as_of)

    @timer(interval=JOBS_INTERVAL_S)
    def daily_jobs(self):
        """Late fees and reminders for today (site time zone) at every site; repeats are no-ops."""
        from zoneinfo import ZoneInfo
        with _jobs_lock:
            with self.db.connect() as conn:
                site_rows = conn.execute(select(tables.sites.c.site_id, tables.sites.c.timezone)).all()
            for site_id, tz in site_rows:
                today = datetime.now(ZoneInfo(tz)).date()
                try:
                    with self.db.begin() as conn:
                        store.accrue_late_fees(conn, site_id, today)
                    with self.db.begin() as conn:
                        store.run_dunning(conn, site_id, today)
                except Exception:
                    log.exception("daily billing jobs failed", extra={"site_id": site_id})
        self._relay_soon()

    @rpc
    def arrears(self, site_id, as_of, limit=500):
        return self._read(store.arrears, site_id, as_of, limit)

    @rpc
    def verify_ledger(self, site_id=None):
        return self._read(store.verify_ledger, site_id)

    @rpc
    def statement(self, account_id):
        return self._read(store.ledger, account_id)

    @rpc
    def receipt_html(self, receipt_number):
        with self.db.connect() as conn:
            r = store.receipt(conn, receipt_number)
            tz = store.site(conn, r["site_id"])["timezone"]
        return documents.receipt_html(r, tz)

    @rpc
    def receipt_pdf_b64(self, receipt_number):
        with self.db.connect() as conn:
            r = store.receipt(conn, receipt_number)
            tz = store.site(conn, r["site_id"])["timezone"]
        return base64.b64encode(documents.receipt_pdf(r, tz)).decode()

    @rpc
    def export_xlsx_b64(self, site_id, kind, as_of=None):
        with self.db.connect() as conn:
            head, rows = store.export_rows(conn, site_id, kind, as_of)
        return base64.b64encode(documents.xlsx(kind, head, rows)).decode()

    @rpc
    def parking_fees(self, site_id, outcome=None, limit=200):
        return self._read(store.parking_fees_for, site_id, outcome, limit)

    # -- events ------------------------------------------------------------------------------

    @event_handler("parking", "session_closed", requeue_on_error=True)
    def on_session_closed(self, payload):
        """Record a closed parking session once (unique by session_id), whatever the redelivery.
        A malformed event is logged and dropped; a database failure requeues it (after a pause)."""
        try:
            result = self._once(store.record_parking_session, payload)
        except store.InvalidInput as exc:
            log.error("session_closed not usable: %s", exc, extra={"event_id": payload.get("event_id")})
            return
        except Exception:
            log.exception("could not record session_closed; will retry", extra={"event_id": payload.get("event_id")})
            eventlet.sleep(INGEST_RETRY_PAUSE_S)
            raise
        log.info("parking session recorded", extra={"event_id": payload.get("event_id"),
                                                     "session_id": result["session_id"], "outcome": result["outcome"],
                                                     "duplicate": result["duplicate"]})

    @timer(interval=1.0)
    def relay(self):
        """Publish committed events that are not on the bus yet (after a crash too)."""
        outbox.relay(self.db, tables.outbox, self.dispatch, _relay_lock)

    def _relay_soon(self):
        # after a write: publish now, unless a relay is already running (after a 100k-invoice run it
        # may take a while); it, or the next tick, takes our events, and the caller is not kept waiting
        if not _relay_lock.locked():
            self.relay()

    def _after_write(self) -> None:
        self._relay_soon()

    def _once(self, fn, *args, **kwargs):
        """A write keyed by an idempotency key: a concurrent twin that committed first answers."""
        result = store.pay_once(self.db, fn, *args, **kwargs)
        self._relay_soon()
        return result
