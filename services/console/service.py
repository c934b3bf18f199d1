"""Console HTTP API (nameko @http). Thin: it checks the shape of a request and asks the owning
service over RPC; the rules live there. Every answer is JSON; errors are {"error": "..."} with
400 (bad input), 404 (unknown thing), 409 (cannot be done now), 504 (a service did not answer).

Endpoints: docs/access.md (gate access) and docs/parking.md (parking).
"""
from __future__ import annotations

import base64

from nameko.events import BROADCAST, event_handler
from nameko.rpc import RpcProxy
from nameko.web.handlers import http

from services.access import qr

# modules, not classes, so `nameko run` does not take a mixin for a service of its own
from services.console import billing_api, notify_api, parking_api, patrol_api
from services.console.health import HealthBoard
from services.console.web import BadRequest, Conflict, _bool_arg, _int_arg, answer, body, json_response

IMPORT_TIMEOUT_S = 120
MAX_IMPORT_BYTES = 20 << 20
BOARD = HealthBoard()   # one per console process, fed by broadcast heartbeats


class ConsoleService(parking_api.ParkingApi, billing_api.BillingApi, patrol_api.PatrolApi, notify_api.NotifyApi):
    name = "console"
    access = RpcProxy("access")

    @event_handler("access", "heartbeat", handler_type=BROADCAST, reliable_delivery=False)
    def on_access_heartbeat(self, payload):
        BOARD.beat("access", payload)

    @event_handler("parking", "heartbeat", handler_type=BROADCAST, reliable_delivery=False)
    def on_parking_heartbeat(self, payload):
        BOARD.beat("parking", payload)

    @event_handler("edgelink", "heartbeat", handler_type=BROADCAST, reliable_delivery=False)
    def on_edgelink_heartbeat(self, payload):
        BOARD.beat("edgelink", payload)

    @http("GET", "/api/health")
    def health(self, request):
        return json_response(BOARD.report())

    @http("GET", "/api/events")
    def events(self, request):
        return answer(lambda: self.access.list_events(
            site_id=request.args.get("site_id") or None, limit=_int_arg(request, "limit", 50, 1, 500),
            before=_int_arg(request, "before", None, 1), kind=request.args.get("kind") or None))

    # -- sites, gates, zones, units -------------------------------------------------------------

    @http("POST", "/api/sites")
    def create_site(self, request):
        return answer(lambda: self.access.create_site(**body(request, ("site_id", "name"), ("timezone",))), 201)

    @http("GET", "/api/sites/<site_id>")
    def site(self, request, site_id):
        return answer(lambda: self.access.site(site_id))

    @http("GET", "/api/sites/<site_id>/gates")
    def gates(self, request, site_id):
        return answer(lambda: self.access.list_gates(site_id))

    @http("POST", "/api/sites/<site_id>/gates")
    def add_gate(self, request, site_id):
        return answer(lambda: self.access.add_gate(site_id, **body(request, ("gate_id", "name"),
                                                                   ("zone_id", "direction"))), 201)

    @http("POST", "/api/sites/<site_id>/zones")
    def set_zone(self, request, site_id):
        return answer(lambda: self.access.set_zone(site_id, **body(
            request, ("zone_id", "name"), ("anti_passback", "timed_minutes", "reset_time"))), 201)

    @http("GET", "/api/sites/<site_id>/units")
    def units(self, request, site_id):
        return answer(lambda: self.access.list_units(site_id))

    @http("POST", "/api/sites/<site_id>/units")
    def add_unit(self, request, site_id):
        return answer(lambda: self.access.add_unit(site_id, **body(
            request, ("unit_id", "building", "unit", "room"), ("floor_area_m2",))), 201)

    # -- people and credentials -----------------------------------------------------------------

    @http("GET", "/api/sites/<site_id>/people")
    def people(self, request, site_id):
        return answer(lambda: self.access.list_people(site_id, request.args.get("unit_id") or None,
                                                      _int_arg(request, "limit", 200, 1, 1000),
                                                      request.args.get("after") or None))

    @http("POST", "/api/sites/<site_id>/people")
    def add_person(self, request, site_id):
        return answer(lambda: self.access.add_person(site_id, **body(
            request, ("person_id", "name"), ("kind", "unit_id", "role", "phone"))), 201)

    @http("GET", "/api/people/<person_id>")
    def person(self, request, person_id):
        return answer(lambda: self.access.person(person_id))

    @http("POST", "/api/people/<person_id>/status")
    def person_status(self, request, person_id):
        return answer(lambda: self.access.set_person_status(person_id, **body(request, ("status",))))

    @http("POST", "/api/people/<person_id>/move-out")
    def move_out(self, request, person_id):
        return answer(lambda: self.access.move_out(person_id, **body(request, ("actor",))))

    @http("POST", "/api/people/<person_id>/cards")
    def issue_card(self, request, person_id):
        return answer(lambda: self.access.issue_card(person_id, **body(
            request, ("card_number",), ("valid_from", "valid_until"))), 201)

    @http("POST", "/api/people/<person_id>/pin")
    def issue_pin(self, request, person_id):
        def call():
            data = body(request, ("pin",), ("valid_from", "valid_until"))
            return self.access.issue_card(person_id, data["pin"], data.get("valid_from"), data.get("valid_until"),
                                          kind="pin")
        return answer(call, 201)

    @http("POST", "/api/people/<person_id>/qr")
    def person_qr(self, request, person_id):
        def call():
            result = self.access.person_qr(person_id, **body(request, (), ("minutes",)))
            return {**result, "qr_svg": qr.render_svg(result["code"])}
        return answer(call, 201)

    @http("POST", "/api/groups/<group_id>/members")
    def group_member(self, request, group_id):
        return answer(lambda: self.access.add_to_group(group_id, **body(request, ("person_id",), ("remove",))))

    @http("POST", "/api/sites/<site_id>/cards/<card_number>/revoke")
    def revoke_card(self, request, site_id, card_number):
        return answer(lambda: self.access.revoke_card(site_id, card_number))

    @http("POST", "/api/sites/<site_id>/cards/<card_number>/replace")
    def replace_card(self, request, site_id, card_number):
        return answer(lambda: self.access.replace_card(site_id, card_number, **body(
            request, ("new_card", "actor"))), 201)

    # -- groups, schedules, holidays --------------------------------------------------------------

    @http("GET", "/api/sites/<site_id>/groups")
    def groups(self, request, site_id):
        return answer(lambda: self.access.list_groups(site_id))

    @http("POST", "/api/sites/<site_id>/groups")
    def create_group(self, request, site_id):
        return answer(lambda: self.access.create_group(site_id, **body(
            request, ("group_id", "name"), ("gate_ids", "time_profile_id"))), 201)

    @http("GET", "/api/sites/<site_id>/time-profiles")
    def time_profiles(self, request, site_id):
        return answer(lambda: self.access.list_time_profiles(site_id))

    @http("POST", "/api/sites/<site_id>/time-profiles")
    def set_time_profile(self, request, site_id):
        return answer(lambda: self.access.set_time_profile(site_id, **body(
            request, ("profile_id", "name", "periods"))), 201)

    @http("POST", "/api/sites/<site_id>/holidays")
    def set_holiday(self, request, site_id):
        return answer(lambda: self.access.set_holiday(site_id, **body(request, ("day",), ("name", "remove"))))

    # -- visitors ---------------------------------------------------------------------------------

    @http("GET", "/api/sites/<site_id>/visitors")
    def visitors(self, request, site_id):
        return answer(lambda: self.access.list_visitors(site_id, _int_arg(request, "limit", 100, 1, 500)))

    @http("POST", "/api/sites/<site_id>/visitors")
    def register_visitor(self, request, site_id):
        def call():
            result = self.access.register_visitor(site_id, **body(
                request, ("name", "purpose", "registered_by", "host_unit_id", "expected_from", "expected_until"),
                ("phone", "host_person_id", "id_number", "walk_in", "gate_ids", "max_uses")))
            return {**result, "qr_svg": qr.render_svg(result["code"])}
        return answer(call, 201)

    @http("POST", "/api/visitor-passes/<pass_id>/revoke")
    def revoke_pass(self, request, pass_id):
        return answer(lambda: self.access.revoke_pass(pass_id, **body(request, ("actor",))))

    # -- operations: alarms, presence, emergency, remote open ----------------------------------------

    @http("GET", "/api/sites/<site_id>/alarms")
    def alarms(self, request, site_id):
        return answer(lambda: self.access.list_alarms(site_id, request.args.get("state") or None,
                                                      _int_arg(request, "limit", 100, 1, 500)))

    @http("POST", "/api/alarms/<int:alarm_id>/acknowledge")
    def acknowledge_alarm(self, request, alarm_id):
        return answer(lambda: self.access.acknowledge_alarm(alarm_id, **body(request, ("operator",))))

    @http("POST", "/api/alarms/<int:alarm_id>/clear")
    def clear_alarm(self, request, alarm_id):
        return answer(lambda: self.access.acknowledge_alarm(alarm_id, clear=True, **body(request, ("operator",))))

    @http("GET", "/api/sites/<site_id>/presence")
    def presence(self, request, site_id):
        return answer(lambda: self.access.presence(site_id, request.args.get("zone_id") or None))

    @http("POST", "/api/sites/<site_id>/emergency")
    def emergency(self, request, site_id):
        def call():
            data = body(request, ("active", "actor"), ("reason",))
            if not isinstance(data["active"], bool):
                raise BadRequest("active must be true or false")
            return self.access.set_emergency(site_id, **data)
        return answer(call)

    @http("POST", "/api/sites/<site_id>/gates/<gate_id>/open")
    def open_gate(self, request, site_id, gate_id):
        def call():
            data = body(request, ("requested_by", "reason"))
            reachable, why = BOARD.gate_reachable(site_id, gate_id)
            if not reachable:
                raise Conflict(why)
            return self.access.request_gate_open(site_id, gate_id, data["requested_by"], data["reason"])
        return answer(call, 202)

    @http("GET", "/api/remote-opens/<command_id>")
    def remote_open(self, request, command_id):
        return answer(lambda: self.access.remote_open(command_id))

    @http("GET", "/api/sites/<site_id>/audit")
    def audit(self, request, site_id):
        return answer(lambda: self.access.audit_log(site_id, _int_arg(request, "limit", 100, 1, 1000)))

    @http("POST", "/api/sites/<site_id>/signing-keys/rotate")
    def rotate_key(self, request, site_id):
        return answer(lambda: self.access.rotate_signing_key(site_id, **body(request, ("actor",), ("retire_old",))))

    # -- bulk import --------------------------------------------------------------------------------

    @http("POST", "/api/sites/<site_id>/imports")
    def import_file(self, request, site_id):
        """The file is the request body; ?filename=people.xlsx&kind=people|units&valid_only=1&dry_run=1&actor=."""
        def call():
            filename = request.args.get("filename", "")
            if not filename.lower().endswith((".csv", ".xlsx")):
                raise BadRequest("filename must end in .csv or .xlsx")
            data = request.get_data()
            if not data:
                raise BadRequest("the body must be the file")
            if len(data) > MAX_IMPORT_BYTES:
                raise BadRequest(f"the file is larger than {MAX_IMPORT_BYTES >> 20} MiB; split it")
            return self.access.import_file(site_id, filename, base64.b64encode(data).decode(),
                                           request.args.get("kind") or None, request.args.get("actor") or "console",
                                           _bool_arg(request, "valid_only"), _bool_arg(request, "dry_run"))
        return answer(call, timeout=IMPORT_TIMEOUT_S)
