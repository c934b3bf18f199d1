"""The console's parking endpoints: lots, lanes, vehicles, sessions, payments, and the queue
of plate reads an operator must confirm. Thin: the parking service decides."""
from __future__ import annotations

import base64
import json
from functools import partial

from nameko.rpc import RpcProxy
from nameko.web.handlers import http
from werkzeug.wrappers import Response

from services.console import web
from services.console.web import BadRequest, _int_arg, body

answer = partial(web.answer, service="parking")


class ParkingApi:
    parking = RpcProxy("parking")

    @http("POST", "/api/lots")
    def set_lot(self, request):
        return answer(lambda: self.parking.set_lot(**body(
            request, ("site_id", "lot_id", "name"),
            ("timezone", "shared_capacity", "tariff", "tolerate_province", "exit_window_minutes"))), 201)

    @http("GET", "/api/lots/<lot_id>")
    def get_lot(self, request, lot_id):
        return answer(lambda: self.parking.lot(lot_id))

    @http("POST", "/api/lots/<lot_id>/lanes")
    def add_lane(self, request, lot_id):
        return answer(lambda: self.parking.add_lane(lot_id, **body(
            request, ("lane_id", "name", "direction"), ("policy",))), 201)

    @http("GET", "/api/lots/<lot_id>/vehicles")
    def vehicles(self, request, lot_id):
        return answer(lambda: self.parking.list_vehicles(lot_id, request.args.get("kind") or None))

    @http("POST", "/api/lots/<lot_id>/vehicles")
    def register_vehicle(self, request, lot_id):
        return answer(lambda: self.parking.register_vehicle(lot_id, **body(
            request, ("plate", "kind", "holder"),
            ("valid_from", "valid_until", "grace_days", "free_minutes", "fixed_space", "note"))), 201)

    @http("GET", "/api/lots/<lot_id>/sessions")
    def sessions(self, request, lot_id):
        return answer(lambda: self.parking.list_sessions(lot_id, request.args.get("status") or None,
                                                         request.args.get("plate") or None,
                                                         _int_arg(request, "limit", 100, 1, 1000)))

    @http("GET", "/api/parking-sessions/<session_id>")
    def parking_session(self, request, session_id):
        return answer(lambda: self.parking.session(session_id))

    @http("GET", "/api/parking-sessions/<session_id>/quote")
    def quote(self, request, session_id):
        return answer(lambda: self.parking.quote(session_id))

    @http("POST", "/api/parking-sessions/<session_id>/payments")
    def pay(self, request, session_id):
        """The cashier's cash, or billing's online payment; `payment_id` makes retries harmless."""
        return answer(lambda: self.parking.record_payment(session_id, **body(
            request, ("payment_id", "amount_fen", "method", "recorded_by"))), 201)

    @http("GET", "/api/lots/<lot_id>/reads")
    def reads(self, request, lot_id):
        return answer(lambda: self.parking.pending_reads(lot_id))

    @http("GET", "/api/reads/<read_id>/crop.jpg")
    def read_crop(self, request, read_id):
        status = answer(lambda: {"b64": self.parking.read_crop_b64(read_id)})
        if status.status_code != 200:
            return status
        return Response(base64.b64decode(json.loads(status.get_data())["b64"]), mimetype="image/jpeg")

    @http("POST", "/api/reads/<read_id>/decision")
    def decide_read(self, request, read_id):
        def call():
            data = body(request, ("operator",), ("plate",))
            if "plate" in data and data["plate"] is not None and not isinstance(data["plate"], str):
                raise BadRequest("plate must be the plate's text, or null to reject the read")
            return self.parking.decide_read(read_id, data["operator"], data.get("plate"))
        return answer(call)

