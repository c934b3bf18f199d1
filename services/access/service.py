"""The access service: thin nameko entrypoints over services.access.store and rules.

Run: nameko run --config deploy/nameko.yaml services.access.service
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

from gatehouse import nameko_deps
from gatehouse.bus import event_payload
from gatehouse.nameko_deps import Database, Heartbeat
from services.access import bulk, monitoring, passes, store
from services.access.store import InvalidInput

log = logging.getLogger("access")
INGEST_RETRY_PAUSE_S = 1.0
_relay_lock = Semaphore()
# Batches are stored one at a time in delivery order (eventlet's semaphore wakes waiters
# first-come first-served), so an agent's events are stored in the order it sent them
# even though nameko runs several workers at once.
_ingest_lock = Semaphore()


class AccessService(nameko_deps.StoreService):
    name = "access"

    db = Database("access")
    dispatch = EventDispatcher()
    heartbeat_info = Heartbeat()

    # -- administration (RPC) -----------------------------------------------------------------

    @rpc
    def create_site(self, site_id, name, timezone="Asia/Shanghai"):
        return self._write(store.create_site, site_id, name, timezone)

    @rpc
    def site(self, site_id):
        return self._read(store.site, site_id)

    @rpc
    def set_zone(self, site_id, zone_id, name, anti_passback="none", timed_minutes=0, reset_time="00:00"):
        return self._write(store.set_zone, site_id, zone_id, name, anti_passback, timed_minutes, reset_time)

    @rpc
    def add_gate(self, site_id, gate_id, name, zone_id=None, direction=None):
        return self._write(store.add_gate, site_id, gate_id, name, zone_id, direction)

    @rpc
    def list_gates(self, site_id):
        return self._read(store.list_gates, site_id)

    @rpc
    def add_unit(self, site_id, unit_id, building, unit, room, floor_area_m2=None):
        return self._write(store.add_unit, site_id, unit_id, building, unit, room, floor_area_m2)

    @rpc
    def list_units(self, site_id):
        return self._read(store.list_units, site_id)

    @rpc
    def add_person(self, site_id, person_id, name, kind="resident", unit_id=None, role=None, phone=None):
        return self._write(store.add_person, site_id, person_id, name, kind, unit_id, role, phone)

    @rpc
    def person(self, person_id):
        return self._read(store.person, person_id)

    @rpc
    def list_people(self, site_id, unit_id=None, limit=200, after=None):
        return self._read(store.list_people, site_id, unit_id, limit, after)

    @rpc
    def set_person_status(self, person_id, status):
        return self._write(store.set_person_status, person_id, status)

    @rpc
    def move_out(self, person_id, actor):
        return self._write(store.move_out, person_id, actor)

    @rpc
    def set_time_profile(self, site_id, profile_id, name, periods):
        return self._write(store.set_time_profile, site_id, profile_id, name, periods)

    @rpc
    def list_time_profiles(self, site_id):
        return self._read(store.list_time_profiles, site_id)

    @rpc
    def set_holiday(self, site_id, day, name=None, remove=False):
        return self._write(store.set_holiday, site_id, day, name, remove)

    @rpc
    def create_group(self, site_id, group_id, name, gate_ids, time_profile_id=None):
        return self._write(store.create_group, site_id, group_id, name, list(gate_ids or []), time_profile_id)

    @rpc
    def list_groups(self, site_id):
        return self._read(store.list_groups, site_id)

    @rpc
    def add_to_group(self, group_id, person_id, remove=False):
        return self._write(store.add_to_group, group_id, person_id, remove)

    @rpc
    def issue_card(self, person_id, card_number, valid_from=None, valid_until=None, kind="card"):
        return self._write(store.issue_card, person_id, card_number, valid_from, valid_until, kind)

    @rpc
    def revoke_card(self, site_id, card_number):
        return self._write(store.revoke_card, site_id, card_number)

    @rpc
    def replace_card(self, site_id, old_card, new_card, actor):
        return self._write(store.replace_card, site_id, old_card, new_card, actor)

    @rpc
    def person_qr(self, person_id, minutes=5):
        return self._read(passes.person_qr, person_id, minutes)

    @rpc
    def register_visitor(self, site_id, name, purpose, registered_by, host_unit_id, expected_from, expected_until,
                         phone=None, host_person_id=None, id_number=None, walk_in=False, gate_ids=None, max_uses=4):
        return self._write(passes.register_visitor, site_id, name, purpose, registered_by, host_unit_id,
                           expected_from, expected_until, phone, host_person_id, id_number, walk_in, gate_ids, max_uses)

    @rpc
    def revoke_pass(self, pass_id, actor):
        return self._write(passes.revoke_pass, pass_id, actor)

    @rpc
    def list_visitors(self, site_id, limit=100):
        return self._read(passes.list_visitors, site_id, limit)

    @rpc
    def rotate_signing_key(self, site_id, actor, retire_old=False):
        return self._write(store.rotate_signing_key, site_id, actor, retire_old)

    @rpc
    def set_emergency(self, site_id, active, actor, reason=""):
        return self._write(store.set_emergency, site_id, bool(active), actor, reason)

    @rpc
    def list_alarms(self, site_id, state=None, limit=100):
        return self._read(monitoring.list_alarms, site_id, state, limit)

    @rpc
    def acknowledge_alarm(self, alarm_id, operator, clear=False):
        return self._write(monitoring.acknowledge_alarm, alarm_id, operator, clear)

    @rpc
    def presence(self, site_id, zone_id=None):
        return self._read(monitoring.who_is_inside, site_id, zone_id)

    @rpc
    def audit_log(self, site_id, limit=100):
        return self._read(store.list_audit, site_id, limit)

    @rpc
    def import_file(self, site_id, filename, data_b64, kind=None, actor="import", valid_only=False, dry_run=False):
        """Check and import a CSV/XLSX file of units or people (base64 body); see services.access.bulk."""
        try:
            data = base64.b64decode(data_b64, validate=True)
        except (ValueError, TypeError):
            raise InvalidInput("data_b64 must be the file's bytes in base64") from None
        return self._write(bulk.run_import, site_id, filename, data, kind, actor, valid_only, dry_run)

    @rpc
    def import_context(self, site_id):
        """What an import is checked against, so that a client can check a file before sending it."""
        with self.db.connect() as conn:
            existing = bulk.existing(conn, site_id)
        return {"timezone": existing.timezone, **{k: sorted(getattr(existing, k)) for k in (
            "person_ids", "unit_ids", "card_numbers", "group_ids")}, "pin_keys": sorted(existing.pins)}

    @rpc
    def publish_snapshot(self, site_id):
        """Send everything of a site to the gates again (edgelink asks when its projection is new)."""
        return self._write(store.record_snapshot, site_id)

    @rpc
    def request_gate_open(self, site_id, gate_id, requested_by, reason):
        """Ask the gate's agent to open it now (pushed down edgelink's command stream); audited.

        Whether the agent is connected is checked by the caller (the console knows from
        edgelink's heartbeats); a command that finds no agent comes back as undelivered."""
        if not requested_by or not reason:
            raise InvalidInput("requested_by and reason are required")
        payload = event_payload(site_id, gate_id=gate_id, requested_by=requested_by, reason=reason)
        with self.db.begin() as conn:
            gate = store.gate(conn, gate_id)
            if gate is None or gate["site_id"] != site_id:
                raise store.NotFound(f"unknown gate {gate_id!r} at site {site_id!r}")
            monitoring.record_remote_open(conn, payload["event_id"], site_id, gate_id, requested_by, reason)
        self.dispatch("gate_open_requested", payload)
        return {"command_id": payload["event_id"], "status": "sent"}

    @rpc
    def remote_open(self, command_id):
        return self._read(monitoring.remote_open, command_id)

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
            return store.credential_items(conn, site_id, card_numbers=card_numbers)

    # -- from the edge (events) -----------------------------------------------------------------

    @event_handler("edgelink", "edge_events_reported", requeue_on_error=True)
    def on_edge_events(self, batch):
        """A batch of edge events, stored in one transaction; redelivery stores nothing twice."""
        try:
            with _ingest_lock, self.db.begin() as conn:
                new = store.store_edge_events(conn, batch)
                follow_ups = monitoring.follow_up(conn, new)
                for event_type, payload in follow_ups:    # sent by the relay, after commit
                    store.queue_event(conn, batch["site_id"], event_type, payload)
        except Exception:
            # The message goes back to the queue (requeue_on_error); pause first, so a
            # database that is down is not hammered by instant redeliveries.
            log.exception("could not store edge events; will retry", extra={"event_id": batch.get("event_id")})
            eventlet.sleep(INGEST_RETRY_PAUSE_S)
            raise
        if follow_ups:
            self.relay_changes()
        if new:
            self.dispatch("events_recorded", event_payload(batch["site_id"], events=[
                {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()} for row in new]))
        log.info("stored edge events", extra={"event_id": batch.get("event_id"), "received": len(batch["events"]),
                                              "new": len(new), "site_id": batch["site_id"]})

    @event_handler("edgelink", "command_undelivered")
    def on_command_undelivered(self, payload):
        with self.db.begin() as conn:
            monitoring.remote_open_undelivered(conn, payload["command_id"])

    @event_handler("edgelink", "snapshot_requested")
    def on_snapshot_requested(self, payload):
        try:
            self.publish_snapshot(payload["site_id"])
        except InvalidInput as exc:
            log.warning("snapshot not possible", extra={"site_id": payload.get("site_id"), "error": str(exc)})

    # -- relay of credential changes to the bus -------------------------------------------------

    @timer(interval=1.0)
    def relay_changes(self):
        """Publish committed changes and events that are not on the bus yet (after a crash too)."""
        with _relay_lock:
            while True:
                with self.db.connect() as conn:
                    pending = store.unpublished_changes(conn)
                if not pending:
                    return
                for revision, change in pending:
                    if "event" in change:
                        self.dispatch(change["event"], change["payload"])
                    else:
                        self.dispatch("site_data_changed", event_payload(
                            change["site_id"], revision=revision, items=change["items"]))
                with self.db.begin() as conn:
                    store.mark_published(conn, [rev for rev, _ in pending])

    def _after_write(self) -> None:
        self.relay_changes()
