"""The notify service: thin nameko entrypoints over services.notify.store and rules.

Run: nameko run --config deploy/nameko.yaml services.notify.service
(and the delivery worker beside it: python -m services.notify.deliver)

It takes other services' events, decides who must hear of them on which channels and writes
one message per (event, recipient, channel) in the same transaction as the event's dedupe
record, so an event delivered three times produces its messages once. Inbox messages are
delivered there and then; email, SMS and webhooks wait in the outbox for the delivery worker.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime

import eventlet
from nameko.events import EventDispatcher, event_handler
from nameko.extensions import DependencyProvider
from nameko.rpc import rpc

from gatehouse import nameko_deps
from gatehouse.nameko_deps import Database, Heartbeat
from services.notify import store
from services.notify.config import load

log = logging.getLogger("notify")
INGEST_RETRY_PAUSE_S = 1.0


class Settings(DependencyProvider):
    def setup(self):
        self.cfg = load()

    def get_dependency(self, worker_ctx):
        return self.cfg


def _now() -> datetime:
    return datetime.now(UTC)


class NotifyService(nameko_deps.StoreService):
    name = "notify"

    db = Database("notify")
    cfg = Settings()
    dispatch = EventDispatcher()
    heartbeat_info = Heartbeat()

    # -- events in -------------------------------------------------------------------------------

    def _take(self, event_type: str, payload: dict) -> dict | None:
        try:
            with self.db.begin() as conn:
                result = store.take_event(conn, event_type, payload, self.cfg, _now())
        except store.InvalidInput as exc:     # not an event we can use: say so, do not loop on it
            log.error("event not usable", extra={"event_type": event_type, "error": str(exc)})
            return None
        except Exception:
            log.exception("could not take event; will retry", extra={"event_type": event_type,
                                                                      "event_id": payload.get("event_id")})
            eventlet.sleep(INGEST_RETRY_PAUSE_S)
            raise
        log.info("event taken", extra={"event_type": event_type, "event_id": result["event_id"],
                                       "duplicate": result["duplicate"], "messages": result["messages"]})
        for problem in result.get("errors", []):
            log.warning("message not deliverable", extra={"event_id": result["event_id"], "error": problem})
        return result

    @event_handler("access", "people_changed", requeue_on_error=True)
    def on_people_changed(self, payload):
        """Access's people become recipients (inbox at least); see store.sync_people."""
        try:
            with self.db.begin() as conn:
                store.sync_people(conn, payload["site_id"], payload.get("people") or [], _now(), self.cfg)
        except store.InvalidInput as exc:
            log.error("people from access not usable", extra={"event_id": payload.get("event_id"), "error": str(exc)})

    @event_handler("access", "visitor_arrived", requeue_on_error=True)
    def on_visitor_arrived(self, payload):
        self._take("access.visitor_arrived", payload)

    @event_handler("access", "alarm_raised", requeue_on_error=True)
    def on_alarm_raised(self, payload):
        self._take("access.alarm_raised", payload)

    @event_handler("access", "alarm_cleared", requeue_on_error=True)
    def on_alarm_cleared(self, payload):
        self._take("access.alarm_cleared", payload)

    @event_handler("patrol", "round_missed", requeue_on_error=True)
    def on_round_missed(self, payload):
        self._take("patrol.round_missed", payload)

    @event_handler("billing", "invoice_issued", requeue_on_error=True)
    def on_invoice_issued(self, payload):
        self._take("billing.invoice_issued", payload)

    @event_handler("billing", "payment_received", requeue_on_error=True)
    def on_payment_received(self, payload):
        self._take("billing.payment_received", payload)

    @event_handler("billing", "dunning_due", requeue_on_error=True)
    def on_dunning_due(self, payload):
        self._take("billing.dunning_due", payload)

    @event_handler("parking", "payment_awaited", requeue_on_error=True)
    def on_payment_awaited(self, payload):
        self._take("parking.payment_awaited", payload)

    # -- directory and preferences ------------------------------------------------------------------

    @rpc
    def upsert_recipients(self, recipients):
        return self._write(store.upsert_recipients, recipients, _now(), self.cfg)

    @rpc
    def recipient(self, recipient_id):
        return self._read(store.recipient, recipient_id)

    @rpc
    def list_recipients(self, site_id=None, unit_id=None, role=None, limit=500):
        return self._read(store.list_recipients, site_id, unit_id, role, limit)

    @rpc
    def set_preferences(self, recipient_id, preferences):
        return self._write(store.set_preferences, recipient_id, preferences)

    @rpc
    def preferences(self, recipient_id):
        return self._read(store.get_preferences, recipient_id)

    @rpc
    def set_quiet_hours(self, recipient_id, start=None, end=None):
        return self._write(store.set_quiet_hours, recipient_id, start, end)

    # -- inbox and messages ---------------------------------------------------------------------------

    @rpc
    def inbox(self, recipient_id, unread_only=False, limit=50):
        return self._read(store.inbox, recipient_id, unread_only, limit)

    @rpc
    def mark_read(self, recipient_id, message_id):
        return self._write(store.mark_read, recipient_id, message_id, _now())

    @rpc
    def mark_all_read(self, recipient_id):
        return self._write(store.mark_all_read, recipient_id, _now())

    @rpc
    def list_messages(self, status=None, channel=None, recipient_id=None, event_id=None, limit=100):
        return self._read(store.list_messages, status, channel, recipient_id, event_id, limit)

    @rpc
    def message(self, message_id):
        return self._read(store.message, message_id)

    @rpc
    def retry(self, message_id):
        return self._write(store.retry, message_id, _now())

    @rpc
    def delivery_report(self, message_id, status, answer=None):
        return self._write(store.delivery_report, message_id, status, answer, _now())

    @rpc
    def status(self):
        """Messages per channel and status, and what the delivery worker last saw of each channel."""
        with self.db.connect() as conn:
            return {"messages": store.counts(conn), "channels": store.channel_states(conn),
                    "events": store.events_taken(conn),
                    "due_now": store.due_soon(conn, _now())}

    @rpc
    def release_digests(self):
        """Send the digests that are due now (the delivery worker also does this every 30 s)."""
        return self._write(store.release_digests, _now(), self.cfg)

    @rpc
    def take_event(self, event_type, payload):
        """The same as receiving the event on the bus (for tools and replays); idempotent."""
        with self.db.begin() as conn:
            return store.take_event(conn, event_type, payload, self.cfg, _now())

