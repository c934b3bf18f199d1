"""The access service: thin nameko entrypoints over services.access.store and rules.

Run: nameko run --config deploy/nameko.yaml services.access.service
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime

import eventlet
from eventlet.semaphore import Semaphore
from nameko.events import EventDispatcher, event_handler
from nameko.rpc import rpc
from nameko.timer import timer

from gatehouse.bus import event_payload
from gatehouse.nameko_deps import HEARTBEAT_INTERVAL_S, Database, Heartbeat
from services.access import store
from services.access.store import InvalidInput

log = logging.getLogger("access")
INGEST_RETRY_PAUSE_S = 1.0
_relay_lock = Semaphore()
# Batches are stored one at a time in delivery order (eventlet's semaphore wakes waiters
# first-come first-served), so an agent's events are stored in the order it sent them
# even though nameko runs several workers at once.
_ingest_lock = Semaphore()


class AccessService:
    name = "access"

    db = Database("access")
    dispatch = EventDispatcher()
    heartbeat_info = Heartbeat()

    # -- administration (RPC) -----------------------------------------------------------------

    @rpc
    def create_site(self, site_id, name, timezone="Asia/Shanghai"):
        return self._write(store.create_site, site_id, name, timezone)

    @rpc
    def add_gate(self, site_id, gate_id, name):
        return self._write(store.add_gate, site_id, gate_id, name)

    @rpc
    def add_person(self, site_id, person_id, name, kind="resident"):
        return self._write(store.add_person, site_id, person_id, name, kind)

    @rpc
    def set_person_status(self, person_id, status):
        return self._write(store.set_person_status, person_id, status)

    @rpc
    def create_group(self, site_id, group_id, name, gate_ids):
        return self._write(store.create_group, site_id, group_id, name, list(gate_ids or []))

    @rpc
    def add_to_group(self, group_id, person_id):
        return self._write(store.add_to_group, group_id, person_id)

    @rpc
    def issue_card(self, person_id, card_number, valid_from=None, valid_until=None):
        return self._write(store.issue_card, person_id, card_number, valid_from, valid_until)

    @rpc
    def revoke_card(self, site_id, card_number):
        return self._write(store.revoke_card, site_id, card_number)

    @rpc
    def publish_snapshot(self, site_id):
        """Send every card of a site to the gates again (edgelink asks when its projection is new)."""
        return self._write(store.record_snapshot, site_id)

    @rpc
    def request_gate_open(self, site_id, gate_id, requested_by, reason):
        """Ask the gate's agent to open it now (pushed down edgelink's command stream)."""
        with self.db.connect() as conn:
            gate = store.gate(conn, gate_id)
        if gate is None or gate["site_id"] != site_id:
            raise store.NotFound(f"unknown gate {gate_id!r} at site {site_id!r}")
        if not requested_by or not reason:
            raise InvalidInput("requested_by and reason are required")
        payload = event_payload(site_id, gate_id=gate_id, requested_by=requested_by, reason=reason)
        self.dispatch("gate_open_requested", payload)
        return {"command_id": payload["event_id"]}

    @rpc
    def list_events(self, site_id=None, limit=50, before=None, kind=None):
        if not isinstance(limit, int) or not 1 <= limit <= 500:
            raise InvalidInput("limit must be a whole number from 1 to 500")
        with self.db.connect() as conn:
            return store.list_events(conn, site_id, limit, before, kind)

    @rpc
    def count_events(self, site_id=None):
        with self.db.connect() as conn:
            return store.count_events(conn, site_id)

    @rpc
    def credentials(self, site_id, card_numbers=None):
        with self.db.connect() as conn:
            return store.credential_views(conn, site_id, card_numbers=card_numbers)

    # -- from the edge (events) -----------------------------------------------------------------

    @event_handler("edgelink", "edge_events_reported", requeue_on_error=True)
    def on_edge_events(self, batch):
        """A batch of edge events, stored in one transaction; redelivery stores nothing twice."""
        try:
            with _ingest_lock, self.db.begin() as conn:
                new = store.store_edge_events(conn, batch)
        except Exception:
            # The message goes back to the queue (requeue_on_error); pause first, so a
            # database that is down is not hammered by instant redeliveries.
            log.exception("could not store edge events; will retry", extra={"event_id": batch.get("event_id")})
            eventlet.sleep(INGEST_RETRY_PAUSE_S)
            raise
        if new:
            self.dispatch("events_recorded", event_payload(batch["site_id"], events=[
                {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()} for row in new]))
        log.info("stored edge events", extra={"event_id": batch.get("event_id"), "received": len(batch["events"]),
                                              "new": len(new), "site_id": batch["site_id"]})

    @event_handler("edgelink", "snapshot_requested")
    def on_snapshot_requested(self, payload):
        try:
            self.publish_snapshot(payload["site_id"])
        except InvalidInput as exc:
            log.warning("snapshot not possible", extra={"site_id": payload.get("site_id"), "error": str(exc)})

    # -- relay of credential changes to the bus -------------------------------------------------

    @timer(interval=1.0)
    def relay_changes(self):
        """Publish committed credential changes that are not on the bus yet (after a crash too)."""
        with _relay_lock:
            while True:
                with self.db.connect() as conn:
                    pending = store.unpublished_changes(conn)
                if not pending:
                    return
                for revision, change in pending:
                    self.dispatch("credentials_changed", event_payload(
                        change["site_id"], revision=revision, credentials=change["credentials"]))
                with self.db.begin() as conn:
                    store.mark_published(conn, [rev for rev, _ in pending])

    @timer(interval=HEARTBEAT_INTERVAL_S)
    def heartbeat(self):
        self.dispatch("heartbeat", {"service": self.name, "at": datetime.now(UTC).isoformat(), **self.heartbeat_info})

    def _write(self, fn, *args):
        with self.db.begin() as conn:
            result = fn(conn, *args)
        self.relay_changes()
        return result
