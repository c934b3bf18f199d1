"""The patrol service: thin nameko entrypoints over services.patrol.store and rules.

Run: nameko run --config deploy/nameko.yaml services.patrol.service
(the handhelds' gRPC server is the same service's second process: python -m services.patrol.handheld)

Timers: plan rounds HORIZON_HOURS ahead (every minute), close rounds whose grace has run out
and raise `patrol.round_missed` (every CLOSE_INTERVAL_S, so it is on the bus seconds after the
grace ends), relay the outbox (also what the handheld server queued: incident_reported), and
the heartbeat.
"""
from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime

from eventlet.semaphore import Semaphore
from nameko.events import EventDispatcher
from nameko.rpc import rpc
from nameko.timer import timer

from gatehouse import nameko_deps, outbox
from gatehouse.nameko_deps import Database, Heartbeat
from services.patrol import reports, rules, store, tables

log = logging.getLogger("patrol")
CLOSE_INTERVAL_S = 2.0
PLAN_INTERVAL_S = 60.0
_relay_lock = Semaphore()
_close_lock = Semaphore()


class PatrolService(nameko_deps.StoreService):
    name = "patrol"

    db = Database("patrol")
    dispatch = EventDispatcher()
    heartbeat_info = Heartbeat()

    # -- guards, routes, schedules ----------------------------------------------------------------

    @rpc
    def set_guard(self, site_id, guard_id, name, pin=None, active=True):
        return self._write(store.set_guard, site_id, guard_id, name, pin, active)

    @rpc
    def guard(self, guard_id):
        return self._read(store.guard, guard_id)

    @rpc
    def list_guards(self, site_id):
        return self._read(store.list_guards, site_id)

    @rpc
    def set_shift(self, site_id, shift_id, name, guard_ids):
        return self._write(store.set_shift, site_id, shift_id, name, guard_ids)

    @rpc
    def set_route(self, site_id, route_id, name, checkpoints, ordered=True, risk_level="normal",
                  timezone="Asia/Shanghai"):
        return self._write(store.set_route, site_id, route_id, name, checkpoints, ordered, risk_level, timezone)

    @rpc
    def route(self, route_id):
        return self._read(store.route, route_id)

    @rpc
    def list_routes(self, site_id):
        return self._read(store.list_routes, site_id)

    @rpc
    def checkpoint_code(self, checkpoint_id):
        return self._write(store.checkpoint_code, checkpoint_id)

    @rpc
    def reissue_code(self, checkpoint_id):
        return self._write(store.reissue_code, checkpoint_id)

    @rpc
    def rotate_key(self, site_id):
        return self._write(store.rotate_key, site_id)

    @rpc
    def set_schedule(self, schedule_id, route_id, spec, guard_id=None, shift_id=None, active=True):
        return self._write(store.set_schedule, schedule_id, route_id, spec, guard_id, shift_id, active)

    @rpc
    def list_schedules(self, site_id):
        return self._read(store.list_schedules, site_id)

    # -- rounds and scans -----------------------------------------------------------------------------

    @rpc
    def plan_round(self, route_id, planned_start, expected_minutes, grace_minutes, guard_id=None, shift_id=None,
                   round_id=None):
        return self._write(store.plan_round, route_id, planned_start, expected_minutes, grace_minutes, guard_id,
                           shift_id, round_id)

    @rpc
    def list_rounds(self, site_id, status=None, route_id=None, guard_id=None, since=None, until=None, limit=200):
        return self._read(store.list_rounds, site_id, status, route_id, guard_id, since, until, limit)

    @rpc
    def round(self, round_id):
        return self._read(store.round_detail, round_id)

    @rpc
    def review(self, site_id, limit=200):
        return self._read(store.review_scans, site_id, limit)

    @rpc
    def review_scan(self, scan_id, reviewer, verdict, note=""):
        return self._write(store.review_scan, scan_id, reviewer, verdict, note)

    @rpc
    def scan_photo_b64(self, scan_id):
        data = self._read(store.scan_photo, scan_id)
        return {"b64": base64.b64encode(data).decode(), "type": rules.photo_kind(data)}

    # -- incidents ----------------------------------------------------------------------------------

    @rpc
    def list_incidents(self, site_id, status=None, limit=200):
        return self._read(store.list_incidents, site_id, status, limit)

    @rpc
    def incident(self, incident_id):
        return self._read(store.incident, incident_id)

    @rpc
    def incident_photo_b64(self, incident_id):
        data, kind = self._read(store.incident_photo, incident_id)
        return {"b64": base64.b64encode(data).decode(), "type": kind}

    @rpc
    def incident_step(self, incident_id, action, actor, assignee=None, note=""):
        return self._write(store.incident_step, incident_id, action, actor, assignee, note)

    # -- reports ------------------------------------------------------------------------------------

    @rpc
    def report(self, site_id, since, until, by="guard"):
        return self._read(store.report, site_id, since, until, by)

    @rpc
    def report_file_b64(self, site_id, since, until, by="guard", fmt="csv"):
        data = self._read(store.report, site_id, since, until, by)
        return base64.b64encode(reports.export(data, fmt)).decode()

    # -- timers -------------------------------------------------------------------------------------

    @timer(interval=PLAN_INTERVAL_S, eager=True)
    def plan(self):
        with self.db.begin() as conn:
            added = store.generate_rounds(conn, datetime.now(UTC))
        if added:
            log.info("rounds planned", extra={"rounds": added})

    @timer(interval=CLOSE_INTERVAL_S, eager=True)
    def close_due(self):
        """Rounds whose grace ran out: missed or incomplete, and `patrol.round_missed` queued."""
        with _close_lock:
            with self.db.begin() as conn:
                events = store.close_due_rounds(conn, datetime.now(UTC))
        for e in events:
            log.info("round missed", extra={"event_id": e["event_id"], "round_id": e["round_id"], "kind": e["kind"]})
        self.relay()

    @timer(interval=1.0)
    def relay(self):
        """Publish committed events that are not on the bus yet (after a crash too)."""
        outbox.relay(self.db, tables.outbox, self.dispatch, _relay_lock)

    def _after_write(self) -> None:
        self.relay()
