"""Online payments: the provider interface, the adapter for the local fake provider, and the
flows that keep the provider out of database transactions.

A real provider (WeChat Pay, Alipay, UnionPay) fits the same interface: create a payment for
our reference (its out_trade_no), query by that reference, verify a signed notification.
A payment whose result is unknown is reconciled by `query`, never created again: the intent
row is written (and committed) before the provider is called, and the provider is asked with
the intent's id, so a retry finds the first attempt.
"""
from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Protocol

from gatehouse import settings
from services.billing import rules, store

log = logging.getLogger("billing.online")


class InvalidSignature(Exception):
    """A webhook whose signature does not verify: refused, logged, nothing written."""


class ProviderUnavailable(Exception):
    """The provider could not be reached or answered with an error; the result is unknown."""


class PaymentProvider(Protocol):
    name: str

    def create_payment(self, intent: dict, notify_url: str) -> tuple[str, str]:
        """Ask the provider to take `intent["amount_fen"]`; returns (provider_ref, pay_url)."""

    def query(self, reference: str) -> dict:
        """{"status": pending|succeeded|failed|unknown, "amount_fen", "currency", "provider_ref"}."""

    def verify_webhook(self, body: bytes, headers: dict) -> dict:
        """The notification's fields if its signature verifies; raises InvalidSignature otherwise."""


def webhook_secret() -> str:
    return os.environ.get("BILLING_WEBHOOK_SECRET", "gatehouse-dev-webhook-secret")


def provider_url() -> str:
    return os.environ.get("BILLING_PROVIDER_URL", "http://127.0.0.1:8030")


def notify_url() -> str:
    return os.environ.get("BILLING_NOTIFY_URL", f"http://{settings.console_address()}/api/billing/webhooks/fake")


SIGNATURE_HEADER = "X-Fake-Signature"


class FakeProvider:
    """The adapter for services/billing/fakeprovider.py (a real HTTP server), HMAC-SHA256 webhooks."""

    name = "fake"

    def __init__(self, base_url: str | None = None, secret: str | None = None, timeout: float = 5.0):
        self.base_url = (base_url or provider_url()).rstrip("/")
        self.secret = secret or webhook_secret()
        self.timeout = timeout

    def _call(self, method, path, body=None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return {"status": "unknown"}
            raise ProviderUnavailable(f"provider answered {exc.code}: {exc.read()[:200]!r}") from None
        except (OSError, ValueError) as exc:
            raise ProviderUnavailable(f"provider not reachable at {self.base_url}: {exc}") from None

    def create_payment(self, intent: dict, notify_url: str) -> tuple[str, str]:
        r = self._call("POST", "/payments", {"reference": intent["intent_id"], "amount_fen": intent["amount_fen"],
                                             "currency": intent["currency"], "notify_url": notify_url,
                                             "description": intent.get("payer", "")})
        return r["provider_ref"], r["pay_url"]

    def query(self, reference: str) -> dict:
        return self._call("GET", f"/payments/by-reference/{reference}")

    def verify_webhook(self, body: bytes, headers: dict) -> dict:
        signature = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), None)
        if not rules.signature_ok(self.secret, body, signature):
            raise InvalidSignature("webhook signature does not verify")
        try:
            data = json.loads(body)
        except ValueError:
            raise InvalidSignature("webhook body is not JSON") from None
        return data


def start_payment(engine, provider: PaymentProvider, site_id, idempotency_key, target, amount=None,
                  amount_fen=None, currency="CNY", payer="") -> dict:
    """Create (or find) the intent, then ask the provider once. If the provider cannot be reached
    the intent stays 'created' and the reconciler asks the provider about it later by reference."""
    with engine.begin() as conn:
        it, _created = store.create_intent(conn, site_id, idempotency_key, provider.name, target, amount, amount_fen,
                                           currency, payer)
    if it["status"] != "created":
        return it
    try:
        existing = provider.query(it["intent_id"])
        if existing.get("provider_ref"):
            ref, url = existing["provider_ref"], existing.get("pay_url")
        else:
            ref, url = provider.create_payment(it, notify_url())
    except ProviderUnavailable as exc:
        log.warning("online payment not started; will be reconciled", extra={"intent_id": it["intent_id"],
                                                                            "error": str(exc)})
        return {**it, "error": str(exc)}
    with engine.begin() as conn:
        return store.intent_started(conn, it["intent_id"], ref, url)


def handle_webhook(engine, provider: PaymentProvider, body: bytes, headers: dict) -> dict:
    """A provider notification: verified, then settled once (a retry of the same webhook is a no-op)."""
    try:
        data = provider.verify_webhook(body, headers)
    except InvalidSignature as exc:
        log.warning("webhook refused: %s", exc, extra={"provider": provider.name, "bytes": len(body)})
        raise
    reference = data.get("reference")
    if not reference or data.get("status") not in ("succeeded", "failed"):
        raise store.InvalidInput("webhook without a reference or a final status")
    with engine.begin() as conn:
        return store.settle_intent(conn, reference, data["status"], data.get("amount_fen"), data.get("currency"),
                                   data.get("provider_ref"))


def reconcile(engine, provider: PaymentProvider, older_than_s: float = 60) -> list[dict]:
    """Ask the provider about every intent without a final result (its webhook never came, or the
    provider was not reachable when it started). Settles what the provider knows; never charges."""
    with engine.connect() as conn:
        pending = [i for i in store.unsettled_intents(conn, older_than_s) if i["provider"] == provider.name]
    done = []
    for it in pending:
        try:
            answer = provider.query(it["intent_id"])
        except ProviderUnavailable as exc:
            log.warning("reconcile: provider not reachable", extra={"intent_id": it["intent_id"], "error": str(exc)})
            break
        if answer.get("status") in ("succeeded", "failed"):
            with engine.begin() as conn:
                done.append(store.settle_intent(conn, it["intent_id"], answer["status"], answer.get("amount_fen"),
                                                answer.get("currency"), answer.get("provider_ref")))
        elif answer.get("status") == "unknown" and it["status"] == "created":
            # the provider never heard of it: nobody can have paid it; start it now
            try:
                ref, url = provider.create_payment(it, notify_url())
            except ProviderUnavailable:
                break
            with engine.begin() as conn:
                done.append(store.intent_started(conn, it["intent_id"], ref, url))
    return done
