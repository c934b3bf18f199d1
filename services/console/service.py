"""Console HTTP API (nameko @http). Thin: it asks the owning services over RPC.

GET /api/health   each service's state, from heartbeats, and the edge agents edgelink knows
GET /api/events   recent access events, newest first: ?site_id=&kind=&limit=1..500&before=<next_before>
"""
from __future__ import annotations

import json

import eventlet
from nameko.events import BROADCAST, event_handler
from nameko.exceptions import RemoteError
from nameko.rpc import RpcProxy
from nameko.web.handlers import http
from werkzeug.wrappers import Response

from services.console.health import HealthBoard

RPC_TIMEOUT_S = 5
BOARD = HealthBoard()   # one per console process, fed by broadcast heartbeats


def json_response(body, status: int = 200) -> Response:
    return Response(json.dumps(body, ensure_ascii=False), status=status, mimetype="application/json")


def error(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _int_arg(request, name, default=None, low=None, high=None):
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must be from {low} to {high}, got {value}")
    return value


def remote_error_response(exc: RemoteError) -> Response:
    if exc.exc_type == "NotFound":
        return error(404, exc.value)
    if exc.exc_type == "InvalidInput":
        return error(400, exc.value)
    return error(502, f"{exc.exc_type}: {exc.value}")


class ConsoleService:
    name = "console"
    access = RpcProxy("access")

    @event_handler("access", "heartbeat", handler_type=BROADCAST, reliable_delivery=False)
    def on_access_heartbeat(self, payload):
        BOARD.beat("access", payload)

    @event_handler("edgelink", "heartbeat", handler_type=BROADCAST, reliable_delivery=False)
    def on_edgelink_heartbeat(self, payload):
        BOARD.beat("edgelink", payload)

    @http("GET", "/api/health")
    def health(self, request):
        return json_response(BOARD.report())

    @http("GET", "/api/events")
    def events(self, request):
        try:
            limit = _int_arg(request, "limit", 50, 1, 500)
            before = _int_arg(request, "before", None, 1)
        except ValueError as exc:
            return error(400, str(exc))
        try:
            with eventlet.Timeout(RPC_TIMEOUT_S):
                page = self.access.list_events(site_id=request.args.get("site_id") or None, limit=limit,
                                               before=before, kind=request.args.get("kind") or None)
        except RemoteError as exc:
            return remote_error_response(exc)
        except eventlet.Timeout:
            return error(504, f"the access service did not answer within {RPC_TIMEOUT_S} s")
        return json_response(page)
