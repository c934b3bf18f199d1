"""The console's patrol endpoints: guards, shifts, routes and checkpoint QR codes, schedules,
rounds, scans to review, hazards (隐患整改) and reports. Thin: the patrol service decides."""
from __future__ import annotations

import base64
import json
from functools import partial

from nameko.events import BROADCAST, event_handler
from nameko.rpc import RpcProxy
from nameko.web.handlers import http
from werkzeug.wrappers import Response

from services.console import web
from services.console.web import BadRequest, _int_arg, body

answer = partial(web.answer, service="patrol")
HAZARD_ACTIONS = ("assign", "fix", "verify", "reject")
REPORT_TYPES = {"csv": "text/csv; charset=utf-8",
                "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"}


def _file(status: Response, key: str, mimetype: str, filename: str | None = None) -> Response:
    """The bytes an RPC returned as base64 under `key`, or the JSON error it answered."""
    if status.status_code != 200:
        return status
    data = json.loads(status.get_data())
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'} if filename else {}
    return Response(base64.b64decode(data[key]), mimetype=data.get("type_mime", mimetype), headers=headers)


class PatrolApi:
    patrol = RpcProxy("patrol")

    @event_handler("patrol", "heartbeat", handler_type=BROADCAST, reliable_delivery=False)
    def on_patrol_heartbeat(self, payload):
        from services.console.service import BOARD
        BOARD.beat("patrol", payload)

    # -- guards, shifts, routes, schedules --------------------------------------------------------

    @http("POST", "/api/patrol/guards")
    def patrol_set_guard(self, request):
        return answer(lambda: self.patrol.set_guard(**body(request, ("site_id", "guard_id", "name"),
                                                           ("pin", "active"))), 201)

    @http("GET", "/api/sites/<site_id>/patrol/guards")
    def patrol_guards(self, request, site_id):
        return answer(lambda: self.patrol.list_guards(site_id))

    @http("POST", "/api/patrol/shifts")
    def patrol_set_shift(self, request):
        return answer(lambda: self.patrol.set_shift(**body(request, ("site_id", "shift_id", "name", "guard_ids"))),
                      201)

    @http("POST", "/api/patrol/routes")
    def patrol_set_route(self, request):
        return answer(lambda: self.patrol.set_route(**body(
            request, ("site_id", "route_id", "name", "checkpoints"), ("ordered", "risk_level", "timezone"))), 201)

    @http("GET", "/api/sites/<site_id>/patrol/routes")
    def patrol_routes(self, request, site_id):
        return answer(lambda: self.patrol.list_routes(site_id))

    @http("GET", "/api/patrol/routes/<route_id>")
    def patrol_route(self, request, route_id):
        """The route, each checkpoint, and the signed code to print at each QR checkpoint."""
        return answer(lambda: self.patrol.route(route_id))

    @http("GET", "/api/patrol/checkpoints/<checkpoint_id>/qr.svg")
    def patrol_checkpoint_qr(self, request, checkpoint_id):
        from services.access.qr import render_svg
        status = answer(lambda: {"code": self.patrol.checkpoint_code(checkpoint_id)})
        if status.status_code != 200:
            return status
        return Response(render_svg(json.loads(status.get_data())["code"]), mimetype="image/svg+xml")

    @http("POST", "/api/patrol/checkpoints/<checkpoint_id>/reissue")
    def patrol_reissue(self, request, checkpoint_id):
        """A new code for a copied or damaged one: the old printed code is refused from now on."""
        return answer(lambda: {"checkpoint_id": checkpoint_id, "code": self.patrol.reissue_code(checkpoint_id)})

    @http("POST", "/api/patrol/schedules")
    def patrol_set_schedule(self, request):
        return answer(lambda: self.patrol.set_schedule(**body(
            request, ("schedule_id", "route_id", "spec"), ("guard_id", "shift_id", "active"))), 201)

    @http("GET", "/api/sites/<site_id>/patrol/schedules")
    def patrol_schedules(self, request, site_id):
        return answer(lambda: self.patrol.list_schedules(site_id))

    # -- rounds and scans -----------------------------------------------------------------------

    @http("POST", "/api/patrol/rounds")
    def patrol_plan_round(self, request):
        return answer(lambda: self.patrol.plan_round(**body(
            request, ("route_id", "planned_start", "expected_minutes", "grace_minutes"),
            ("guard_id", "shift_id", "round_id"))), 201)

    @http("GET", "/api/sites/<site_id>/patrol/rounds")
    def patrol_rounds(self, request, site_id):
        a = request.args
        return answer(lambda: self.patrol.list_rounds(site_id, a.get("status") or None, a.get("route_id") or None,
                                                      a.get("guard_id") or None, a.get("since") or None,
                                                      a.get("until") or None, _int_arg(request, "limit", 200, 1, 1000)))

    @http("GET", "/api/patrol/rounds/<round_id>")
    def patrol_round(self, request, round_id):
        return answer(lambda: self.patrol.round(round_id))

    @http("GET", "/api/sites/<site_id>/patrol/review")
    def patrol_review(self, request, site_id):
        return answer(lambda: self.patrol.review(site_id, _int_arg(request, "limit", 200, 1, 1000)))

    @http("POST", "/api/patrol/scans/<scan_id>/review")
    def patrol_review_scan(self, request, scan_id):
        """{reviewer, verdict: accepted|rejected, note?}: a rejected scan no longer counts for its round."""
        return answer(lambda: self.patrol.review_scan(scan_id, **body(request, ("reviewer", "verdict"), ("note",))))

    @http("GET", "/api/patrol/scans/<scan_id>/photo")
    def patrol_scan_photo(self, request, scan_id):
        def call():
            photo = self.patrol.scan_photo_b64(scan_id)
            return {"b64": photo["b64"], "type_mime": f"image/{photo['type']}"}
        return _file(answer(call), "b64", "image/jpeg")

    # -- hazards ------------------------------------------------------------------------------------

    @http("GET", "/api/sites/<site_id>/patrol/incidents")
    def patrol_incidents(self, request, site_id):
        return answer(lambda: self.patrol.list_incidents(site_id, request.args.get("status") or None,
                                                         _int_arg(request, "limit", 200, 1, 1000)))

    @http("GET", "/api/patrol/incidents/<incident_id>")
    def patrol_incident(self, request, incident_id):
        return answer(lambda: self.patrol.incident(incident_id))

    @http("GET", "/api/patrol/incidents/<incident_id>/photo")
    def patrol_incident_photo(self, request, incident_id):
        def call():
            photo = self.patrol.incident_photo_b64(incident_id)
            return {"b64": photo["b64"], "type_mime": f"image/{photo['type']}"}
        return _file(answer(call), "b64", "image/jpeg")

    @http("POST", "/api/patrol/incidents/<incident_id>/<action>")
    def patrol_incident_step(self, request, incident_id, action):
        """assign {actor, assignee}, fix {actor, note}, verify {actor}, reject {actor, note}."""
        def call():
            if action not in HAZARD_ACTIONS:
                raise BadRequest(f"action must be one of {', '.join(HAZARD_ACTIONS)}")
            data = body(request, ("actor",), ("assignee", "note"))
            return self.patrol.incident_step(incident_id, action, data["actor"], data.get("assignee"),
                                             data.get("note") or "")
        return answer(call)

    # -- reports ------------------------------------------------------------------------------------

    @http("GET", "/api/sites/<site_id>/patrol/report")
    def patrol_report(self, request, site_id):
        """?since=&until= (ISO times with zone) &by=guard|route &format=json|csv|xlsx"""
        a = request.args
        fmt = a.get("format") or "json"
        if fmt != "json" and fmt not in REPORT_TYPES:
            return web.error(400, "format must be json, csv or xlsx")

        def call():
            if not a.get("since") or not a.get("until"):
                raise BadRequest("since and until are required")
            if fmt == "json":
                return self.patrol.report(site_id, a["since"], a["until"], a.get("by") or "guard")
            return {"b64": self.patrol.report_file_b64(site_id, a["since"], a["until"], a.get("by") or "guard", fmt)}
        status = answer(call)
        if fmt == "json":
            return status
        return _file(status, "b64", REPORT_TYPES[fmt], f"patrol-{site_id}-by-{a.get('by') or 'guard'}.{fmt}")
