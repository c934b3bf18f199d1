"""The parking service: thin nameko entrypoints over services.parking.store and rules.

Run: nameko run --config deploy/nameko.yaml services.parking.service

It reads lane events from the edge (`edgelink.edge_events_reported`, its own queue beside
access's): `vehicle_entered`, `vehicle_exited`, `exit_waiting` (a fee due at an exit) and
`plate_unconfirmed` (a read below the lane's confidence, with its crop), and online payments
of a stay from billing (`billing.parking_fee_paid`); keeps sessions and payments, and publishes
`parking.session_closed` (for billing), `parking.payment_awaited` (for the cashiers'
notifications), `parking.exit_cleared` and `parking.read_confirmed` through a transactional
outbox.
"""
from __future__ import annotations

import base64
import binascii
import logging
from datetime import datetime

import eventlet
from eventlet.semaphore import Semaphore
from nameko.events import EventDispatcher, event_handler
from nameko.rpc import rpc
from nameko.timer import timer

from gatehouse import nameko_deps, outbox
from gatehouse.nameko_deps import Database, Heartbeat
from services.parking import store, tables

log = logging.getLogger("parking")
LANE_EVENTS = ("vehicle_entered", "vehicle_exited", "exit_waiting", "plate_unconfirmed")
INGEST_RETRY_PAUSE_S = 1.0
_ingest_lock = Semaphore()
_relay_lock = Semaphore()


def ingest(conn, batch: dict) -> int:
    """The lane events of one reported batch, in order; returns how many were lane events."""
    count = 0
    for event in batch["events"]:
        if event["kind"] not in LANE_EVENTS:
            continue
        a = event.get("attributes") or {}
        at = datetime.fromisoformat(event["device_time"])
        lot_id, lane_id, plate = a.get("lot_id", ""), a.get("lane_id", event.get("gate_id", "")), a.get("plate", "")
        try:
            if event["kind"] == "vehicle_entered":
                store.record_entry(conn, lot_id, lane_id, plate, event["event_id"], at, bool(event.get("offline")))
            elif event["kind"] == "vehicle_exited":
                store.record_exit(conn, lot_id, lane_id, plate, event["event_id"], at, bool(event.get("offline")))
            elif event["kind"] == "exit_waiting":
                if int(a.get("fee_fen") or 0) > 0:
                    store.record_exit_waiting(conn, lot_id, lane_id, plate, event["event_id"], at, int(a["fee_fen"]))
            else:
                crop = base64.b64decode(a["crop_jpeg_b64"]) if a.get("crop_jpeg_b64") else None
                store.queue_read(conn, lot_id, lane_id, event["event_id"], plate, float(a.get("confidence", 0)),
                                 crop, at)
        except (store.InvalidInput, ValueError, binascii.Error) as exc:
            # a malformed lane event is kept in the access event log; it must not block the rest
            log.error("lane event not usable", extra={"event_id": event["event_id"], "error": str(exc)})
        count += 1
    return count


def _with_revision(outbox_id: int, event_type: str, payload: dict) -> dict:
    # a site's parking items carry the outbox id as their revision: later changes are higher
    return {**payload, "revision": outbox_id} if event_type == "site_data_changed" else payload


class ParkingService(nameko_deps.StoreService):
    name = "parking"

    db = Database("parking")
    dispatch = EventDispatcher()
    heartbeat_info = Heartbeat()

    @rpc
    def set_lot(self, site_id, lot_id, name, timezone="Asia/Shanghai", shared_capacity=0, tariff=None,
                tolerate_province=True, exit_window_minutes=15):
        return self._write(store.set_lot, site_id, lot_id, name, timezone, shared_capacity, tariff,
                           tolerate_province, exit_window_minutes)

    @rpc
    def lot(self, lot_id):
        return self._read(store.lot, lot_id)

    @rpc
    def add_lane(self, lot_id, lane_id, name, direction, policy=None):
        return self._write(store.add_lane, lot_id, lane_id, name, direction, policy)

    @rpc
    def register_vehicle(self, lot_id, plate, kind, holder, valid_from=None, valid_until=None, grace_days=0,
                         free_minutes=0, fixed_space=False, note=None):
        return self._write(store.register_vehicle, lot_id, plate, kind, holder, valid_from, valid_until,
                           grace_days, free_minutes, fixed_space, note)

    @rpc
    def list_vehicles(self, lot_id, kind=None):
        return self._read(store.list_vehicles, lot_id, kind)

    @rpc
    def list_sessions(self, lot_id, status=None, plate=None, limit=100):
        return self._read(store.list_sessions, lot_id, status, plate, limit)

    @rpc
    def session(self, session_id):
        return self._read(store.session, session_id)

    @rpc
    def quote(self, session_id):
        return self._read(store.quote, session_id)

    @rpc
    def record_payment(self, session_id, payment_id, amount_fen, method, recorded_by):
        return self._write(store.record_payment, session_id, payment_id, amount_fen, method, recorded_by)

    @rpc
    def pending_reads(self, lot_id):
        return self._read(store.pending_reads, lot_id)

    @rpc
    def read_crop_b64(self, read_id):
        return base64.b64encode(self._read(store.read_crop, read_id)).decode()

    @rpc
    def decide_read(self, read_id, operator, plate=None):
        return self._write(store.decide_read, read_id, operator, plate)

    @event_handler("billing", "parking_fee_paid")
    def on_parking_fee_paid(self, payload):
        """A stay paid online through billing: recorded once (the payment id is the key), and the
        lot's exit window opens."""
        try:
            self._write(store.record_payment, payload["session_id"], payload["payment_id"], int(payload["amount_fen"]),
                        "online", "billing")
        except store.InvalidInput as exc:
            log.error("online parking payment not recorded", extra={"event_id": payload.get("event_id"),
                                                                     "error": str(exc)})

    @event_handler("edgelink", "snapshot_requested")
    def on_snapshot_requested(self, payload):
        self._write(store.record_snapshot, payload["site_id"])

    @event_handler("edgelink", "edge_events_reported", requeue_on_error=True)
    def on_edge_events(self, batch):
        try:
            with _ingest_lock, self.db.begin() as conn:
                count = ingest(conn, batch)
        except Exception:
            log.exception("could not store lane events; will retry", extra={"event_id": batch.get("event_id")})
            eventlet.sleep(INGEST_RETRY_PAUSE_S)
            raise
        if count:
            self.relay()

    @timer(interval=1.0)
    def relay(self):
        """Publish committed events that are not on the bus yet (after a crash too)."""
        outbox.relay(self.db, tables.outbox, self.dispatch, _relay_lock, _with_revision)

    def _after_write(self) -> None:
        self.relay()
