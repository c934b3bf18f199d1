"""The console's billing endpoints. Thin: the billing service decides.

Amounts are given as `amount` (yuan, a string like "123.45") or `amount_fen` (integer fen).
Receipts come back as HTML or PDF, exports as XLSX, with their content types.
"""
from __future__ import annotations

import base64
import logging
from datetime import date
from functools import partial

from nameko.events import BROADCAST, event_handler
from nameko.exceptions import RemoteError
from nameko.rpc import RpcProxy
from nameko.web.handlers import http
from werkzeug.wrappers import Response

from services.console import web
from services.console.web import BadRequest, _int_arg, body

answer = partial(web.answer, service="billing")
log = logging.getLogger("console.billing")
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
RUN_STEP_TIMEOUT_S = 60
MONEY = ("amount", "amount_fen")


def _file(call, mimetype, filename=None, decode=True):
    """Answer a document from the billing service, or its JSON error."""
    holder = {}

    def fetch():
        holder["data"] = call()
        return {}
    status = answer(fetch)
    if status.status_code != 200:
        return status
    data = base64.b64decode(holder["data"]) if decode else holder["data"]
    resp = Response(data, mimetype=mimetype)
    if filename:
        resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return resp


class BillingApi:
    billing = RpcProxy("billing")

    @event_handler("billing", "heartbeat", handler_type=BROADCAST, reliable_delivery=False)
    def on_billing_heartbeat(self, payload):
        from services.console.service import BOARD
        BOARD.beat("billing", payload)

    # -- set-up ------------------------------------------------------------------------------

    @http("POST", "/api/billing/sites")
    def billing_site(self, request):
        def call():
            data = body(request, ("site_id", "name"), ("currency", "timezone", "rounding", "late_fees",
                                                       "late_fee_rate", "late_fee_grace_days", "late_fee_cap",
                                                       "due_days", "dunning_days"))
            return self.billing.set_site(data.pop("site_id"), data.pop("name"), **data)
        return answer(call, 201)

    @http("GET", "/api/billing/sites/<site_id>")
    def billing_site_get(self, request, site_id):
        return answer(lambda: self.billing.site(site_id))

    @http("POST", "/api/billing/accounts")
    def billing_set_account(self, request):
        return answer(lambda: self.billing.set_account(**body(
            request, ("site_id", "unit_id", "building", "floor", "area_m2", "payer"), ("unit_type", "contacts"))), 201)

    @http("POST", "/api/billing/sites/<site_id>/accounts/bulk")
    def billing_bulk_accounts(self, request, site_id):
        def call():
            rows = body(request, ("accounts",))["accounts"]
            if not isinstance(rows, list):
                raise BadRequest("accounts must be a list")
            return self.billing.upsert_accounts(site_id, rows)
        return answer(call, 201, timeout=60)

    @http("GET", "/api/billing/sites/<site_id>/accounts")
    def billing_accounts(self, request, site_id):
        unit = request.args.get("unit_id")
        if unit:
            return answer(lambda: [self.billing.account_by_unit(site_id, unit)])
        return answer(lambda: self.billing.list_accounts(site_id, _int_arg(request, "limit", 200, 1, 1000),
                                                         _int_arg(request, "after", 0, 0)))

    @http("GET", "/api/billing/accounts/<int:account_id>")
    def billing_account(self, request, account_id):
        return answer(lambda: self.billing.account(account_id))

    @http("GET", "/api/billing/accounts/<int:account_id>/statement")
    def billing_statement(self, request, account_id):
        return answer(lambda: self.billing.statement(account_id))

    @http("POST", "/api/billing/fee-items")
    def billing_fee_item(self, request):
        return answer(lambda: self.billing.set_fee_item(**body(request, ("site_id", "code", "name", "kind"))), 201)

    @http("POST", "/api/billing/rates")
    def billing_rate(self, request):
        return answer(lambda: self.billing.set_rate(**body(request, ("site_id", "code", "rate"),
                                                           ("scope", "scope_value"))), 201)

    @http("POST", "/api/billing/accounts/<int:account_id>/passes")
    def billing_pass(self, request, account_id):
        return answer(lambda: self.billing.set_pass(account_id, **body(
            request, ("code", "monthly_amount"), ("quantity", "start_month", "end_month"))), 201)

    # -- runs and invoices -------------------------------------------------------------------

    @http("POST", "/api/billing/runs")
    def billing_start_run(self, request):
        return answer(lambda: self.billing.start_run(**body(request, ("site_id", "period"),
                                                            ("cycle", "again", "issue"))), 201)

    @http("POST", "/api/billing/sites/<site_id>/periods/<period>/issue")
    def billing_issue_drafts(self, request, site_id, period):
        """Issue the next drafts of a period (after review); call again until `left` is 0."""
        return answer(lambda: self.billing.issue_drafts(site_id, period, **body(request, (), ("limit",))),
                      timeout=RUN_STEP_TIMEOUT_S)

    @http("POST", "/api/billing/runs/<int:run_id>/step")
    def billing_run_step(self, request, run_id):
        """Bill the next chunks (resumable: call again until status is done)."""
        return answer(lambda: self.billing.run_step(run_id, **body(request, (), ("chunks", "chunk"))),
                      timeout=RUN_STEP_TIMEOUT_S)

    @http("GET", "/api/billing/runs/<int:run_id>")
    def billing_run(self, request, run_id):
        return answer(lambda: self.billing.run(run_id))

    @http("GET", "/api/billing/sites/<site_id>/runs")
    def billing_runs(self, request, site_id):
        return answer(lambda: self.billing.list_runs(site_id))

    @http("GET", "/api/billing/invoices")
    def billing_invoices(self, request):
        return answer(lambda: self.billing.list_invoices(
            request.args.get("site_id") or None, _int_arg(request, "account_id", None, 1),
            request.args.get("status") or None, request.args.get("period") or None,
            _int_arg(request, "limit", 200, 1, 1000)))

    @http("GET", "/api/billing/invoices/<int:invoice_id>")
    def billing_invoice(self, request, invoice_id):
        return answer(lambda: self.billing.invoice(invoice_id))

    @http("POST", "/api/billing/invoices/<int:invoice_id>/issue")
    def billing_issue(self, request, invoice_id):
        return answer(lambda: self.billing.issue_invoice(invoice_id))

    @http("POST", "/api/billing/invoices/<int:invoice_id>/void")
    def billing_void(self, request, invoice_id):
        return answer(lambda: self.billing.void_invoice(invoice_id, **body(request, ("reason",), ("operator",))))

    @http("POST", "/api/billing/invoices/<int:invoice_id>/credit-notes")
    def billing_credit_note(self, request, invoice_id):
        return answer(lambda: self.billing.credit_note(invoice_id, **body(
            request, ("idempotency_key", "reason"), (*MONEY, "operator"))), 201)

    @http("POST", "/api/billing/accounts/<int:account_id>/charges")
    def billing_charge(self, request, account_id):
        return answer(lambda: self.billing.charge(account_id, **body(
            request, ("code", "idempotency_key"), (*MONEY, "description", "due_date", "issue"))), 201)

    # -- money -------------------------------------------------------------------------------

    @http("POST", "/api/billing/accounts/<int:account_id>/payments")
    def billing_pay(self, request, account_id):
        """Cash or card at the counter, or a bank transfer; `idempotency_key` makes a double click harmless."""
        return answer(lambda: self.billing.pay(account_id, **body(
            request, ("idempotency_key", "method"), (*MONEY, "currency", "payer", "operator", "reference"))), 201)

    @http("POST", "/api/billing/bank-transfers")
    def billing_bank_transfers(self, request):
        """A bank statement: {"transfers": [{account_id, idempotency_key, amount, reference}, ...]};
        each applied once, each bad line answered with its error and not written."""
        def call():
            rows = body(request, ("transfers",))["transfers"]
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise BadRequest("transfers must be a list of objects")
            allowed = {"account_id", "idempotency_key", "amount", "amount_fen", "currency", "payer", "reference"}
            for r in rows:
                if set(r) - allowed:
                    raise BadRequest(f"unknown field(s) {sorted(set(r) - allowed)}; allowed: {sorted(allowed)}")
            return self.billing.pay_batch([{**r, "method": "bank", "operator": "bank-import"} for r in rows])
        return answer(call, 201, timeout=120)

    @http("POST", "/api/billing/payments/<payment_id>/reverse")
    def billing_reverse(self, request, payment_id):
        """Put a counter mistake right (冲正): allocations undone, journal reversed, payment kept, marked."""
        return answer(lambda: self.billing.reverse_payment(payment_id, **body(request, ("reason",), ("operator",))))

    @http("GET", "/api/billing/payments/<payment_id>")
    def billing_payment(self, request, payment_id):
        return answer(lambda: self.billing.payment(payment_id))

    @http("GET", "/api/billing/sites/<site_id>/payments")
    def billing_payments(self, request, site_id):
        return answer(lambda: self.billing.list_payments(site_id, _int_arg(request, "account_id", None, 1),
                                                         _int_arg(request, "limit", 200, 1, 1000)))

    @http("POST", "/api/billing/accounts/<int:account_id>/refunds")
    def billing_refund(self, request, account_id):
        return answer(lambda: self.billing.refund(account_id, **body(
            request, ("idempotency_key", "method", "reason"), (*MONEY, "currency", "operator"))), 201)

    @http("POST", "/api/billing/online-payments")
    def billing_online(self, request):
        """Start an online payment; the answer carries the provider's pay_url."""
        return answer(lambda: self.billing.start_online_payment(**body(
            request, ("site_id", "idempotency_key", "target"), (*MONEY, "currency", "payer"))), 201, timeout=15)

    @http("GET", "/api/billing/online-payments/<intent_id>")
    def billing_online_get(self, request, intent_id):
        return answer(lambda: self.billing.online_payment(intent_id))

    @http("POST", "/api/billing/webhooks/<provider>")
    def billing_webhook(self, request, provider):
        """A provider's signed notification. A bad signature: 401, logged, nothing written."""
        raw = request.get_data()
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith(("x-", "content-type"))}
        try:
            result = self.billing.webhook(provider, base64.b64encode(raw).decode(), headers)
        except RemoteError as exc:
            if exc.exc_type == "InvalidSignature":
                log.warning("webhook refused: bad signature", extra={"provider": provider, "bytes": len(raw),
                                                                     "remote": request.remote_addr})
                return web.error(401, "webhook signature does not verify")
            return web.remote_error_response(exc)
        return web.json_response({"ok": True, "status": result["status"], "intent_id": result["intent_id"]})

    # -- reports and documents ---------------------------------------------------------------

    @http("GET", "/api/billing/sites/<site_id>/arrears")
    def billing_arrears(self, request, site_id):
        return answer(lambda: self.billing.arrears(site_id, request.args.get("as_of") or date.today().isoformat(),
                                                   _int_arg(request, "limit", 500, 1, 100000)))

    @http("POST", "/api/billing/sites/<site_id>/late-fees")
    def billing_late_fees(self, request, site_id):
        return answer(lambda: self.billing.accrue_late_fees(site_id, body(request, ("as_of",))["as_of"]))

    @http("POST", "/api/billing/sites/<site_id>/dunning")
    def billing_dunning(self, request, site_id):
        return answer(lambda: self.billing.run_dunning(site_id, body(request, ("as_of",))["as_of"]))

    @http("GET", "/api/billing/ledger/verify")
    def billing_verify(self, request):
        return answer(lambda: self.billing.verify_ledger(request.args.get("site_id") or None), timeout=60)

    @http("GET", "/api/billing/sites/<site_id>/parking-fees")
    def billing_parking_fees(self, request, site_id):
        return answer(lambda: self.billing.parking_fees(site_id, request.args.get("outcome") or None))

    @http("GET", "/api/billing/receipts/<number>.html")
    def billing_receipt_html(self, request, number):
        return _file(lambda: self.billing.receipt_html(number), "text/html", decode=False)

    @http("GET", "/api/billing/receipts/<number>.pdf")
    def billing_receipt_pdf(self, request, number):
        return _file(lambda: self.billing.receipt_pdf_b64(number), "application/pdf", f"{number}.pdf")

    @http("GET", "/api/billing/sites/<site_id>/exports/<kind>.xlsx")
    def billing_export(self, request, site_id, kind):
        return _file(lambda: self.billing.export_xlsx_b64(site_id, kind, request.args.get("as_of") or None), XLSX,
                     f"{site_id}-{kind}.xlsx")

